"""Build the orbit or auto rig from the scene settings, with its completion cameras, so the
artist can see (and tweak) the views.

Generate with Views = Orbit Rig or Auto Rig builds the same cameras temporarily by itself;
this operator makes them lasting, in the "ZS Rig" collection, replacing the previous rig.
The completion cameras ("ZS Fill NN") are marked: rendered from as selected cameras, they
are completion views.
"""

from __future__ import annotations

import bpy

from .. import auto_rig, properties, rig
from ..errors import CaptureError
from ..wire import coverage, protocol
from ..scene_objects import target_objects
from .base import cancelled, finished


class ZS_OT_build_rig(bpy.types.Operator):
    """Add the rig's cameras around the selected meshes: the orbit ring, or the auto rig chosen from their geometry, and the completion cameras (replaces the previous ZS rig)"""

    bl_idname = "zs.build_rig"
    bl_label = "Build Rig"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return context.scene is not None and hasattr(context.scene, "zs_texturing")

    def execute(self, context):
        panel = context.scene.zs_texturing
        settings = properties.settings_for(panel, protocol.TEXTURE)
        if panel.views_source == "AUTO":
            settings.views = 0
        try:
            cameras, plan = auto_rig.rig_for(context.scene, target_objects(context), settings)
        except (CaptureError, protocol.ProtocolError) as exc:
            return cancelled(self, str(exc))
        report = plan.report()
        panel.status = coverage.describe(report, short=True)
        return finished(self, f"{len(cameras)} cameras in {rig.RIG_COLLECTION!r}: {coverage.describe(report)}")


classes = (ZS_OT_build_rig,)
