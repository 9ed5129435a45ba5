"""Which of the scene's objects a capture is about: the target meshes (named, or the
selection with the active object first), the background surfaces an animation tells
apart, and pass indices no other object renders with, so the object index pass singles
them out. Imports: bpy, the standard library and numpy only.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import bpy

from .errors import CaptureError
from .uv_layers import has_uv

MAX_PASS_INDEX = 32767  # Blender's limit for Object.pass_index


def target_objects(context=None, names: Iterable[str] | None = None) -> list[bpy.types.Object]:
    """The mesh objects to texture: the named ones, or else the context's selected meshes
    (the active object first). Raises :class:`CaptureError` naming what is wrong."""
    if names is not None:
        objects = []
        for name in names:
            obj = bpy.data.objects.get(name)
            if obj is None:
                raise CaptureError(f"object {name!r} does not exist")
            if obj.type != "MESH":
                raise CaptureError(f"object {name!r} is a {obj.type.lower()}, not a mesh")
            objects.append(obj)
    else:
        context = context or bpy.context
        objects = [obj for obj in context.selected_objects if obj.type == "MESH"]
        active = context.active_object
        if active is not None and active in objects:
            objects.remove(active)
            objects.insert(0, active)
    unique = list({obj.as_pointer(): obj for obj in objects}.values())
    if not unique:
        raise CaptureError("no mesh object to texture: select at least one mesh")
    return unique


def resolve_objects(objects, verb: str = "texture") -> list[bpy.types.Object]:
    """Mesh objects or their names (one or several) -> the objects, each once, in order.
    Raises :class:`CaptureError` naming a missing or non-mesh object, or an empty list."""
    if isinstance(objects, (str, bpy.types.Object)):
        objects = [objects]
    objects = list(objects or [])
    if not objects:
        raise CaptureError(f"no mesh object to {verb}: pass at least one")
    names = [obj for obj in objects if isinstance(obj, str)]
    found = {obj.name: obj for obj in target_objects(names=names)} if names else {}
    resolved = [found[obj] if isinstance(obj, str) else obj for obj in objects]
    for obj in resolved:
        if obj.type != "MESH":
            raise CaptureError(f"object {obj.name!r} is a {obj.type.lower()}, not a mesh")
    return list({obj.as_pointer(): obj for obj in resolved}.values())


def background_surfaces(scene: bpy.types.Scene, targets: Sequence[bpy.types.Object]) -> list[bpy.types.Object]:
    """The scene's other mesh objects that render and have a UV map, by name: the surfaces
    an animation capture tells apart (``background_id``) so their UV can tie frames together."""
    skip = {obj.as_pointer() for obj in targets}
    surfaces = [obj for obj in scene.objects if obj.type == "MESH" and not obj.hide_render
                and obj.library is None and obj.as_pointer() not in skip and has_uv(obj)]
    return sorted(surfaces, key=lambda obj: obj.name)[:MAX_PASS_INDEX // 2]


def unused_pass_indices(scene: bpy.types.Scene, objects: Sequence[bpy.types.Object], count: int,
                        depsgraph=None) -> list[int]:
    """``count`` distinct pass indices >= 1 no object outside ``objects`` renders with (so
    the object index pass singles out ``objects`` without touching anyone else's index):
    the scene's objects, and with ``depsgraph`` also every instance it renders
    (collection, particle and geometry-node instances carry their source object's index,
    and the source need not be in the scene)."""
    mine = {obj.as_pointer() for obj in objects}
    taken = {obj.pass_index for obj in scene.objects if obj.as_pointer() not in mine}
    if depsgraph is not None:
        for instance in depsgraph.object_instances:
            if instance.object.original.as_pointer() not in mine:
                taken.add(instance.object.pass_index)
    indices, index = [], 1
    while len(indices) < count:
        if index not in taken:
            indices.append(index)
        index += 1
    if indices[-1] > MAX_PASS_INDEX:
        raise CaptureError(f"the scene's objects use too many pass indices to tell {count} objects apart")
    return indices


__all__ = ["MAX_PASS_INDEX", "target_objects", "background_surfaces", "unused_pass_indices"]
