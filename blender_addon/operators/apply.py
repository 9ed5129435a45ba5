"""Apply a texture file to objects as new materials: one undo step.

Run from the interface (F3) it is one undo step, "Apply ZS Texture". Generate calls it at
the end of a job from Python, where an operator pushes no undo step of its own: Generate
pushes the one "ZS Generate" step after it (``operators.generate.push_undo_step``).
Artists or scripts can call it on any texture PNG:

    bpy.ops.zs.apply_result(filepath="texture.png", objects=[{"name": "Suzanne", "uv_map": "UVMap"}])

Without ``objects`` the selected meshes get the texture on their active render UV map.
"""

from __future__ import annotations

import bpy
from bpy.props import CollectionProperty, StringProperty

from .. import apply
from ..errors import CaptureError
from ..scene_objects import target_objects
from .base import cancelled, finished


class ZS_ObjectUV(bpy.types.PropertyGroup):
    """An object (``name``) and the UV map (``uv_map``, empty: active render map) to use."""

    uv_map: StringProperty(name="UV Map", default="")


class ZS_OT_apply_result(bpy.types.Operator):
    """Put a texture image on objects through new materials (the originals are kept)"""

    bl_idname = "zs.apply_result"
    bl_label = "Apply ZS Texture"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="Texture", subtype="FILE_PATH", description="The texture PNG to apply")
    objects: CollectionProperty(type=ZS_ObjectUV, options={"SKIP_SAVE"})
    folder: StringProperty(name="Folder", subtype="DIR_PATH", default="",
                           description="Where to store the texture PNG (empty: next to the .blend, "
                                       "or packed into an unsaved file)")
    name: StringProperty(name="Name", default="ZS Texture", description="Name of the new image and materials")

    def execute(self, context):
        try:
            if self.objects:
                targets = [_object(item.name) for item in self.objects]
                uv_maps = {obj.name: item.uv_map or None for obj, item in zip(targets, self.objects)}
            else:
                targets = target_objects(context)
                uv_maps = None
            materials, image = apply.apply_texture(targets, bpy.path.abspath(self.filepath), uv_maps,
                                                   name=self.name, folder=bpy.path.abspath(self.folder) or None)
        except CaptureError as exc:
            return cancelled(self, f"cannot apply the texture: {exc}")
        return finished(self, f"{image.name} applied to {len(targets)} object(s) "
                              f"through {len(materials)} new material(s)")


def _object(name: str) -> bpy.types.Object:
    obj = bpy.data.objects.get(name)
    if obj is None:
        raise CaptureError(f"object {name!r} no longer exists (renamed or deleted during the job?)")
    return obj


classes = (ZS_ObjectUV, ZS_OT_apply_result)
