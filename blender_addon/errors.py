"""The add-on's error type: :class:`CaptureError`, raised when the scene cannot be
captured, textured or animated as asked, with a message that names the object or setting
at fault (operators report it, the scripting API lets it through). Imports: the standard
library only.
"""

from __future__ import annotations


class CaptureError(ValueError):
    """The scene cannot be captured as asked (the message names the object or setting)."""


__all__ = ["CaptureError"]
