"""Naming new datablocks: a free name (:func:`unique_name`), so nothing existing is ever
overwritten. Imports: the standard library only.
"""

from __future__ import annotations


def unique_name(collection, base: str) -> str:
    """``base`` if unused in the bpy.data ``collection``, else ``base.001``, ``base.002`` ..."""
    if base not in collection:
        return base
    index = 1
    while f"{base}.{index:03d}" in collection:
        index += 1
    return f"{base}.{index:03d}"


__all__ = ["unique_name"]
