"""Which view layer a capture renders and its evaluated depsgraph: the context's view
layer for the context scene (else the scene's first), and a depsgraph brought up to date
before anything reads evaluated objects from it. Imports: bpy, the standard library and
numpy only.
"""

from __future__ import annotations

import bpy


def capture_view_layer(scene: bpy.types.Scene) -> bpy.types.ViewLayer:
    """The view layer to render: the context's for the context scene, else the first."""
    context = bpy.context
    if context.scene == scene and context.view_layer is not None:
        return context.view_layer
    return scene.view_layers[0]


def evaluated_depsgraph(scene: bpy.types.Scene, view_layer=None) -> bpy.types.Depsgraph:
    """An up-to-date evaluated depsgraph of ``scene`` / ``view_layer``."""
    context = bpy.context
    view_layer = view_layer or capture_view_layer(scene)
    if context.scene == scene and context.view_layer == view_layer:
        return context.evaluated_depsgraph_get()
    depsgraph = view_layer.depsgraph
    depsgraph.update()
    return depsgraph


__all__ = ["capture_view_layer", "evaluated_depsgraph"]
