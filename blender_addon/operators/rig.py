"""Build the orbit rig from the scene settings, so the artist can see (and tweak) the views.

Generate with Views = Orbit Rig builds the same cameras temporarily by itself; this
operator makes them lasting, in the "ZS Rig" collection, replacing the previous rig.
"""

from __future__ import annotations

import bpy

from .. import capture, rig
from ..capture import CaptureError


class ZS_OT_build_rig(bpy.types.Operator):
    """Add cameras on a ring around the selected meshes (replaces the previous ZS rig)"""

    bl_idname = "zs.build_rig"
    bl_label = "Build Orbit Rig"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return context.scene is not None and hasattr(context.scene, "zs_texturing")

    def execute(self, context):
        settings = context.scene.zs_texturing
        size = int(settings.view_resolution)
        try:
            objects = capture.target_objects(context)
            cameras = rig.build_orbit_rig(context.scene, objects, count=int(settings.rig_count),
                                          elevation_deg=float(settings.rig_elevation),
                                          top_views=int(settings.rig_top_view), width=size, height=size)
        except CaptureError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"{len(cameras)} cameras in {rig.RIG_COLLECTION!r}")
        return {"FINISHED"}


classes = (ZS_OT_build_rig,)
