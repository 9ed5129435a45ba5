"""Where Blender versions differ (4.2 LTS, 4.5 LTS, 5.x): the one place the add-on asks.

Every function here answers by what the running Blender has (``hasattr``), not by its
version number, so a later release that keeps an API keeps working:

- the compositor: 5.0 renders through a node group set as ``scene.compositing_node_group``;
  4.x has one tree per scene (``scene.node_tree`` with ``scene.use_nodes``), so the pass
  capture adds its nodes there and mutes the artist's own meanwhile (their File Output
  nodes must not write during a pass render);
- the File Output node: 5.0 has ``directory`` and typed ``file_output_items``; 4.x has
  ``base_path`` and ``file_slots``;
- Set Alpha: a "Type" input in 5.0, a ``mode`` property in 4.x;
- the Render Layers node's object index output: "Object Index" in 5.0, "IndexOB" in 4.x;
- the Video Sequencer: ``strips`` from 4.4 on, ``sequences`` before;
- materials: 5.0 makes their node tree at once, 4.x only with ``use_nodes``;
- F-curves: layered actions (slots, channel bags) from 5.0 on, ``action.fcurves`` before;
- path properties: 4.5 asks a property to declare that it takes ``//`` paths
  (:data:`BLEND_RELATIVE_PATH`); 4.2 knows no such option;
- the vector pass: 5.0's compositor hands all four of its values to a file; 4.x's vector
  sockets carry three, so the next frame's vertical motion never reaches the file and an
  animation capture (which needs it) is refused there with :data:`NO_MOTION_TO_NEXT_FRAME`.

Imports: bpy and the standard library only.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import bpy

NO_MOTION_TO_NEXT_FRAME = (
    "an animation needs each pixel's motion to the next frame (the vector pass), which the compositor of "
    f"Blender {bpy.app.version_string} cannot write out (its vector sockets drop the pass's fourth value); "
    "re-style animations in Blender 5.0 or newer (texturing works in this version)")

# The options of a path property that takes ``//`` (blend-relative) paths.
BLEND_RELATIVE_PATH = ({"PATH_SUPPORTS_BLEND_RELATIVE"}
                       if "is_path_supports_blend_relative" in bpy.types.Property.bl_rna.properties else set())

# Render Layers outputs that are named differently in 4.x (5.0 name -> 4.x name).
_RENDER_LAYER_NAMES_4 = {"Object Index": "IndexOB"}


@contextlib.contextmanager
def compositor(scene: bpy.types.Scene, name: str) -> Iterator[bpy.types.NodeTree]:
    """A compositor node tree that ``scene`` renders through meanwhile, holding only the
    nodes added to it; the scene's own compositing is as it was afterwards."""
    if hasattr(scene, "compositing_node_group"):
        tree = bpy.data.node_groups.new(name, "CompositorNodeTree")
        previous = scene.compositing_node_group
        try:
            scene.compositing_node_group = tree
            yield tree
        finally:
            scene.compositing_node_group = previous
            bpy.data.node_groups.remove(tree)
        return
    used, had_tree = scene.use_nodes, scene.node_tree is not None
    viewers = {image.as_pointer() for image in bpy.data.images if image.type == "COMPOSITING"}
    scene.use_nodes = True  # makes the scene's tree (with default nodes) when it has none
    tree = scene.node_tree
    theirs = {node.as_pointer(): node.mute for node in tree.nodes} if had_tree else {}
    # A tree made here stays (4.x cannot delete it) but empty, and unused with use_nodes off.
    try:
        for node in tree.nodes:
            node.mute = True
        yield tree
    finally:
        for node in list(tree.nodes):
            if node.as_pointer() not in theirs:
                tree.nodes.remove(node)
        for node in tree.nodes:
            node.mute = theirs.get(node.as_pointer(), node.mute)
        scene.use_nodes = used
        for image in list(bpy.data.images):  # 4.5's default tree has a Viewer: its image goes too
            if image.type == "COMPOSITING" and image.as_pointer() not in viewers:
                bpy.data.images.remove(image)


def writes_motion_to_next_frame() -> bool:
    """Whether the pass capture gets the vector pass whole (Blender 5's compositor)."""
    return "compositing_node_group" in bpy.types.Scene.bl_rna.properties


def render_layer_output(node: bpy.types.Node, name: str) -> bpy.types.NodeSocket:
    """The Render Layers node's output for pass ``name`` (5.0 names)."""
    if name not in node.outputs and name in _RENDER_LAYER_NAMES_4:
        name = _RENDER_LAYER_NAMES_4[name]
    return node.outputs[name]


def set_file_output_folder(node: bpy.types.Node, folder: str) -> None:
    """Where a File Output node writes (a folder path ending in the separator)."""
    if hasattr(node, "directory"):
        node.directory = folder
    else:
        node.base_path = folder


def add_file_output_input(node: bpy.types.Node, socket_type: str, name: str) -> bpy.types.NodeSocket:
    """A new input of a File Output node, written as file ``name`` (+ frame number) with
    the node's format and no view transform (data, not colour)."""
    if hasattr(node, "file_output_items"):
        node.file_output_items.new(socket_type, name)
    else:
        node.file_slots.new(name)  # gives the input socket; the slot is the last one
        slot = node.file_slots[len(node.file_slots) - 1]
        slot.use_node_format = True
        if hasattr(slot, "save_as_render"):
            slot.save_as_render = False
    return node.inputs[name]


def prepare_file_output(node: bpy.types.Node) -> None:
    """A File Output node ready for raw data: single-layer 32-bit uncompressed RGBA
    OpenEXR files named by their inputs only."""
    if hasattr(node.format, "media_type"):
        node.format.media_type = "IMAGE"  # before file_format: multilayer is the default
    node.format.file_format = "OPEN_EXR"
    node.format.color_depth = "32"
    node.format.exr_codec = "NONE"  # temporary files: speed over size
    node.format.color_mode = "RGBA"
    if hasattr(node, "save_as_render"):
        node.save_as_render = False  # data, not colour: no view transform
    if hasattr(node, "file_name"):
        node.file_name = ""
    if hasattr(node, "file_slots"):
        node.file_slots.clear()  # 4.x starts with an "Image" slot


def replace_alpha_node(tree: bpy.types.NodeTree) -> bpy.types.Node:
    """A Set Alpha node that replaces the image's alpha with its Alpha input."""
    node = tree.nodes.new("CompositorNodeSetAlpha")
    if "Type" in node.inputs:
        node.inputs["Type"].default_value = "Replace Alpha"
    else:
        node.mode = "REPLACE_ALPHA"
    return node


def strips(editor) -> bpy.types.bpy_prop_collection:
    """A Video Sequencer's top-level strips (``new_image`` adds one)."""
    return editor.strips if hasattr(editor, "strips") else editor.sequences


def new_material(name: str) -> bpy.types.Material:
    """A new material with its node tree (a Principled BSDF into the output)."""
    material = bpy.data.materials.new(name)
    if material.node_tree is None:  # 4.x makes the tree on demand
        material.use_nodes = True
    return material


def node_tree(material: bpy.types.Material) -> bpy.types.NodeTree:
    """``material``'s node tree, made when it has none (4.x)."""
    if material.node_tree is None:
        material.use_nodes = True
    return material.node_tree


def object_fcurves(obj: bpy.types.Object) -> list:
    """An object's F-curves: ``action.fcurves`` before Blender 5.0, the layered action's
    channel bags from 5.0 on (empty without animation)."""
    action = obj.animation_data.action if obj.animation_data else None
    if action is None:
        return []
    if hasattr(action, "fcurves"):
        return list(action.fcurves)
    return [curve for layer in action.layers for strip in layer.strips for bag in strip.channelbags
            for curve in bag.fcurves]


__all__ = ["NO_MOTION_TO_NEXT_FRAME", "BLEND_RELATIVE_PATH", "writes_motion_to_next_frame", "compositor", "render_layer_output", "set_file_output_folder", "add_file_output_input",
           "prepare_file_output", "replace_alpha_node", "strips", "new_material", "node_tree", "object_fcurves"]
