"""Cancel the running job (the panel's Cancel button; Esc does the same in the viewport)."""

from __future__ import annotations

import bpy

from .. import jobs
from .base import available_when, cancelled, finished


def _cancellable() -> bool:
    job = jobs.active()
    return job is not None and job.alive and not job.cancel_requested


class ZS_OT_cancel(available_when(_cancellable), bpy.types.Operator):
    """Cancel the running ZS job on the server"""

    bl_idname = "zs.cancel"
    bl_label = "Cancel"

    def execute(self, context):
        if not jobs.cancel_active():
            return cancelled(self, "no ZS job is running", "WARNING")
        return finished(self, "cancelling the ZS job")


classes = (ZS_OT_cancel,)
