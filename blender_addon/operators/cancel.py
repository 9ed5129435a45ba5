"""Cancel the running job (the panel's Cancel button; Esc does the same in the viewport)."""

from __future__ import annotations

import bpy

from . import jobs


class ZS_OT_cancel(bpy.types.Operator):
    """Cancel the running ZS job on the server"""

    bl_idname = "zs.cancel"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        job = jobs.active()
        return job is not None and job.alive and not job.cancel_requested

    def execute(self, context):
        if not jobs.cancel_active():
            self.report({"WARNING"}, "no ZS job is running")
            return {"CANCELLED"}
        self.report({"INFO"}, "cancelling the ZS job")
        return {"FINISHED"}


classes = (ZS_OT_cancel,)
