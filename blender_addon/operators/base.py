"""What the add-on's small operators share: when they can run (:func:`available_when`, a
mixin giving a logged, non-undoable operator a poll) and how an execute ends
(:func:`finished`, :func:`cancelled`: one report in the info log and the matching return
set). Imports: the standard library only.
"""

from __future__ import annotations

from typing import Callable


def available_when(condition: Callable[[], bool]) -> type:
    """A mixin for a ``{"REGISTER"}`` operator (logged, no undo step) that can run only
    while ``condition()`` holds: ``class ZS_OT_x(available_when(f), bpy.types.Operator)``."""

    class Available:
        bl_options = {"REGISTER"}

        @classmethod
        def poll(cls, context) -> bool:
            return condition()

    return Available


def finished(operator, message: str) -> set[str]:
    """Report ``message`` as info -> ``{"FINISHED"}``."""
    operator.report({"INFO"}, message)
    return {"FINISHED"}


def cancelled(operator, message: str, level: str = "ERROR") -> set[str]:
    """Report ``message`` at ``level`` ("ERROR", "WARNING") -> ``{"CANCELLED"}``."""
    operator.report({level}, message)
    return {"CANCELLED"}


__all__ = ["available_when", "finished", "cancelled"]
