"""The UV maps a capture reads: whether a mesh has one, which one renders use, the one to
capture (a missing map is an error unless a NEW Smart UV Project layer is explicitly
asked for; existing layers are never touched), and a scope that makes the chosen maps the
render UV maps and restores the previous ones. Imports: bpy, the standard library and
numpy only.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import bpy
import numpy as np

from .errors import CaptureError
from .scene_state import object_mode, preserved_selection


def has_uv(obj: bpy.types.Object) -> bool:
    """True if ``obj`` is a mesh with at least one UV map."""
    return obj.type == "MESH" and len(obj.data.uv_layers) > 0


def active_render_uv_name(obj: bpy.types.Object) -> str | None:
    """Name of the UV map renders use (the camera icon in the UI), or None."""
    for layer in obj.data.uv_layers:
        if layer.active_render:
            return layer.name
    return obj.data.uv_layers[0].name if len(obj.data.uv_layers) else None


def ensure_uv_map(obj: bpy.types.Object, uv_map: str | None = None, smart_project: bool = False,
                  new_name: str = "ZS UV") -> str:
    """The name of the UV map to capture on ``obj``.

    ``uv_map`` None: the active render UV map. A missing map is an error naming the
    object, unless ``smart_project`` is set: then a NEW layer (``uv_map`` or ``new_name``)
    is added and unwrapped with Smart UV Project; existing layers are never touched.
    """
    if obj.type != "MESH":
        raise CaptureError(f"object {obj.name!r} is not a mesh")
    layers = obj.data.uv_layers
    if uv_map is not None and uv_map in layers:
        return uv_map
    if uv_map is None and len(layers):
        return active_render_uv_name(obj)
    if not smart_project:
        what = f"has no UV map named {uv_map!r}" if uv_map else "has no UV map"
        raise CaptureError(f"object {obj.name!r} {what}; unwrap it or enable Smart UV Project")
    return add_smart_uv_map(obj, uv_map or new_name)


def add_smart_uv_map(obj: bpy.types.Object, name: str = "ZS UV", angle_limit_deg: float = 66.0,
                     island_margin: float = 0.02) -> str:
    """Add a NEW UV layer to ``obj`` and unwrap it with Smart UV Project -> its name.

    Existing UV layers keep their data and the active one stays active; the selection,
    the active object, the mode and the mesh's element selection / hide flags are restored.
    """
    view_layer = bpy.context.view_layer
    if obj.name not in view_layer.objects:
        raise CaptureError(f"object {obj.name!r} is not in the active view layer; cannot unwrap it")
    mesh = obj.data
    previous_active = mesh.uv_layers.active.name if mesh.uv_layers.active else None
    layer = mesh.uv_layers.new(name=name, do_init=False)
    if layer is None:
        raise CaptureError(f"object {obj.name!r}: cannot add another UV map (limit reached)")
    new_name = layer.name
    mesh.uv_layers.active = layer  # Smart UV Project writes the active layer
    with object_mode(), preserved_selection(view_layer), _preserved_element_flags(mesh):
        for other in view_layer.objects:
            other.select_set(False)
        obj.select_set(True)
        view_layer.objects.active = obj
        try:
            bpy.ops.object.mode_set(mode="EDIT")
        except RuntimeError as exc:
            raise CaptureError(f"object {obj.name!r}: cannot enter Edit Mode to unwrap ({exc})") from None
        try:
            bpy.ops.mesh.reveal(select=True)
            bpy.ops.mesh.select_all(action="SELECT")
            bpy.ops.uv.smart_project(angle_limit=math.radians(angle_limit_deg), island_margin=island_margin)
        finally:
            bpy.ops.object.mode_set(mode="OBJECT")
    # Edit Mode rebuilt the layers: look them up again by name, never reuse old references.
    layers = obj.data.uv_layers
    if previous_active is not None and previous_active in layers:
        layers.active = layers[previous_active]
    return new_name


@contextlib.contextmanager
def _preserved_element_flags(mesh: bpy.types.Mesh) -> Iterator[None]:
    """Record and restore the select / hide flags of a mesh's vertices, edges and faces."""
    saved = []
    for elements in (mesh.vertices, mesh.edges, mesh.polygons):
        for flag in ("select", "hide"):
            values = np.empty(len(elements), bool)
            elements.foreach_get(flag, values)
            saved.append((elements, flag, values))
    try:
        yield
    finally:
        for elements, flag, values in saved:
            elements.foreach_set(flag, values)
        mesh.update()


@contextlib.contextmanager
def temporary_render_uv(uv_maps: dict) -> Iterator[None]:
    """Make ``uv_maps[obj]`` the active render UV map of each object's mesh (the UV pass
    reads it); restore each mesh's previous render UV map on exit."""
    saved = {}
    for obj, name in uv_maps.items():
        mesh = obj.data
        if mesh.as_pointer() in saved:
            if saved[mesh.as_pointer()][2] != name:
                raise CaptureError(f"object {obj.name!r} shares its mesh with another target but asks "
                                   f"for a different UV map ({name!r})")
            continue
        saved[mesh.as_pointer()] = (mesh, active_render_uv_name(obj), name)
    try:
        for mesh, _previous, name in saved.values():
            mesh.uv_layers[name].active_render = True
        yield
    finally:
        for mesh, previous, _name in saved.values():
            try:
                if previous is not None and previous in mesh.uv_layers:
                    mesh.uv_layers[previous].active_render = True
            except ReferenceError:
                pass


__all__ = ["has_uv", "active_render_uv_name", "ensure_uv_map", "add_smart_uv_map", "temporary_render_uv"]
