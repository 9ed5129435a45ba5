"""The script API's settings, derived from the parameter table of the wire format.

:class:`TextureSettings` and :class:`AnimationSettings` have one field per parameter the
table offers for their kind (``protocol.PARAMETERS``: sampling parameters and capture
settings), with the table's default; ``request()`` turns the sampling ones into a
validated wire request and ``check()`` checks the capture settings too. No bpy: plain
dataclasses.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .wire import Request, protocol


class _Settings:
    """What both settings classes do; ``kind`` is the job kind."""

    kind = ""

    def request(self) -> Request:
        """The validated wire request of this kind (ProtocolError names a bad field)."""
        return Request(kind=self.kind, **{parameter.name: getattr(self, parameter.name)
                                          for parameter in protocol.offered(self.kind, wire=True)}).validate()

    def check(self) -> Request:
        """Check the capture settings too -> the validated request."""
        for parameter in protocol.offered(self.kind, wire=False):
            setattr(self, parameter.name, parameter.check(getattr(self, parameter.name), self.kind))
        return self.request()

    @classmethod
    def from_values(cls, values: dict[str, Any]):
        """Keyword values -> checked settings; None keeps a default, an unknown name is an
        error listing the known ones."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise protocol.ProtocolError(unknown[0], f"not a {cls.kind} setting (expected one of "
                                                     f"{', '.join(sorted(known))})")
        settings = cls(**{name: value for name, value in values.items() if value is not None})
        settings.check()
        return settings


def _settings_class(name: str, kind: str, doc: str):
    fields = [(parameter.name, parameter.type, dataclasses.field(default=parameter.default_for(kind)))
              for parameter in protocol.offered(kind)]
    return dataclasses.make_dataclass(name, fields, bases=(_Settings,),
                                      namespace={"kind": kind, "__module__": __name__, "__doc__": doc})


TextureSettings = _settings_class("TextureSettings", protocol.TEXTURE, (
    "What to generate for a texture and how to capture it: one field per parameter of the "
    "table offered for textures (``protocol.PARAMETERS``), e.g. prompt, seed, steps, "
    "attention, sync_strength, texture_size, view_size, views (orbit rig cameras; 0: the auto rig within "
    "view_budget), complete (completion views), uv_map."))
AnimationSettings = _settings_class("AnimationSettings", protocol.ANIMATION, (
    "What to generate for an animation and how to capture it: one field per parameter of "
    "the table offered for animations (``protocol.PARAMETERS``), e.g. prompt, noise, "
    "attention, momentum, sync_strength, background_sync, pixel_sync, width / height "
    "(None: the scene's output size)."))

__all__ = ["TextureSettings", "AnimationSettings"]
