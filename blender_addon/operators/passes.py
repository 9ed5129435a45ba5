"""Turn the ZS passes view-layer setting on and off (see :mod:`blender_addon.zs_passes`)."""

from __future__ import annotations

import bpy

from .. import zs_passes
from ..errors import CaptureError
from .base import cancelled, finished


class ZS_OT_enable_passes(bpy.types.Operator):
    """Make renders of this view layer also write the ZS passes (multilayer EXR + camera sidecar per frame)"""

    bl_idname = "zs.enable_passes"
    bl_label = "Enable ZS Passes"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        try:
            node = zs_passes.enable(context.scene, context.view_layer)
        except CaptureError as exc:
            return cancelled(self, str(exc))
        found = zs_passes.problems(context.scene, context.view_layer)
        if found:
            self.report({"WARNING"}, "ZS passes on, but: " + "; ".join(found))
        return finished(self, f"ZS passes on: renders write {zs_passes.sequence_pattern(context.scene, context.view_layer)}"
                              f" (File Output node {node.name!r})")


class ZS_OT_disable_passes(bpy.types.Operator):
    """Stop writing the ZS passes for this view layer (removes the setting's compositor nodes)"""

    bl_idname = "zs.disable_passes"
    bl_label = "Disable ZS Passes"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        zs_passes.disable(context.scene, context.view_layer)
        return finished(self, "ZS passes off")


classes = (ZS_OT_enable_passes, ZS_OT_disable_passes)
