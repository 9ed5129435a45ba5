"""Naming and reading datablocks the same way on every supported Blender: a free name
for a new datablock (:func:`unique_name`, so nothing existing is ever overwritten) and an
object's F-curves (:func:`object_fcurves`, layered actions from Blender 5.0 on). Imports:
bpy, the standard library and numpy only.
"""

from __future__ import annotations

import bpy


def unique_name(collection, base: str) -> str:
    """``base`` if unused in the bpy.data ``collection``, else ``base.001``, ``base.002`` ..."""
    if base not in collection:
        return base
    index = 1
    while f"{base}.{index:03d}" in collection:
        index += 1
    return f"{base}.{index:03d}"


def object_fcurves(obj: bpy.types.Object) -> list:
    """An object's F-curves: ``action.fcurves`` before Blender 5.0, the layered action's
    channel bags from 5.0 on."""
    action = obj.animation_data.action if obj.animation_data else None
    if action is None:
        return []
    if hasattr(action, "fcurves"):
        return list(action.fcurves)
    return [curve for layer in action.layers for strip in layer.strips for bag in strip.channelbags
            for curve in bag.fcurves]


__all__ = ["unique_name", "object_fcurves"]
