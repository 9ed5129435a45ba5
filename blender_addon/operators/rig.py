"""Build the orbit rig from the scene settings, so the artist can see (and tweak) the views.

Generate with Views = Orbit Rig builds the same cameras temporarily by itself; this
operator makes them lasting, in the "ZS Rig" collection, replacing the previous rig.
"""

from __future__ import annotations

import bpy

from .. import properties, rig
from ..errors import CaptureError
from ..wire import protocol
from ..scene_objects import target_objects
from .base import cancelled, finished


class ZS_OT_build_rig(bpy.types.Operator):
    """Add cameras on a ring around the selected meshes (replaces the previous ZS rig)"""

    bl_idname = "zs.build_rig"
    bl_label = "Build Orbit Rig"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return context.scene is not None and hasattr(context.scene, "zs_texturing")

    def execute(self, context):
        settings = properties.settings_for(context.scene.zs_texturing, protocol.TEXTURE)
        try:
            cameras = rig.rig_for(context.scene, target_objects(context), settings)
        except (CaptureError, protocol.ProtocolError) as exc:
            return cancelled(self, str(exc))
        return finished(self, f"{len(cameras)} cameras in {rig.RIG_COLLECTION!r}")


classes = (ZS_OT_build_rig,)
