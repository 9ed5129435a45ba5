"""Put a generated texture on objects without overwriting anything the user made.

:func:`apply_texture` creates a NEW image datablock and, per object, NEW materials: a
copy of each material the object shows (or a new Principled material where a slot is
empty) with an Image Texture node, read through a UV Map node of the chosen UV map,
wired into Base Color. The new materials go into the object's slots; the original
materials and images are left exactly as they were (an original that would be left
without users gets a fake user, so saving the file keeps it).

No ``bpy.ops`` inside, so the whole apply falls into one undo step: the one an operator
with ``{'REGISTER', 'UNDO'}`` pushes when run from the interface, or the one Generate
pushes after it. Imports: bpy, the standard library and numpy only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import bpy
import numpy as np

from . import compat
from .datablocks import unique_name
from .errors import CaptureError
from .image_pixels import array_to_pixels, image_to_numpy
from .uv_layers import active_render_uv_name

TEXTURE_FOLDER = "zs_textures"  # next to the .blend: //zs_textures/<name>.png
NODE_LABEL = "ZS Texture"


# ----------------------------------------------------------------------------- numpy core


def texture_pixels(texture: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(H, W, 3|4) values in [0, 1], rows top to bottom -> (flat RGBA float32 rows bottom
    first, as Blender stores them, width, height). Values are clipped to [0, 1]."""
    texture = np.asarray(texture)
    if texture.ndim != 3 or texture.shape[2] not in (3, 4) or min(texture.shape[:2]) < 1:
        raise CaptureError(f"texture: expected shape (H, W, 3) or (H, W, 4), got {texture.shape}")
    if texture.dtype == np.uint8:
        texture = texture.astype(np.float32) / 255.0
    texture = np.asarray(texture, dtype=np.float32)
    if not np.isfinite(texture).all():
        raise CaptureError("texture: contains NaN or inf")
    height, width = texture.shape[:2]
    return array_to_pixels(np.clip(texture, 0.0, 1.0)), width, height


def file_stem(name: str) -> str:
    """A datablock name -> a safe file name stem (letters, digits, ``-``, ``_``, ``.``)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return stem or "texture"


def free_path(folder: Path, stem: str, suffix: str = ".png") -> Path:
    """``folder/stem.png``, or ``stem_001.png`` ... : the first path that does not exist."""
    candidate = folder / f"{stem}{suffix}"
    index = 1
    while candidate.exists():
        candidate = folder / f"{stem}_{index:03d}{suffix}"
        index += 1
    return candidate


# ------------------------------------------------------------------------------ images


def load_texture(texture) -> np.ndarray:
    """``texture`` as an array: an (H, W, 3|4) array is returned as is; a PNG path is read
    through Blender (the temporary image is removed) -> (H, W, 4) float32, rows top first."""
    if isinstance(texture, (str, os.PathLike)):
        path = Path(texture)
        if not path.is_file():
            raise CaptureError(f"texture: {path} does not exist")
        image = bpy.data.images.load(str(path), check_existing=False)
        try:
            image.colorspace_settings.is_data = True  # the stored values, no colour conversion
            return image_to_numpy(image)
        finally:
            bpy.data.images.remove(image)
    return np.asarray(texture)


def new_texture_image(name: str, texture, folder=None) -> bpy.types.Image:
    """A NEW 8-bit sRGB image datablock holding ``texture`` ((H, W, 3|4) in [0, 1], rows
    top to bottom, or a PNG path). Its name gets a numeric suffix when taken.

    Stored as a PNG in ``folder`` when given, else in ``//zs_textures/`` next to the saved
    .blend (the path is kept relative); an unsaved file packs it. An existing file is
    never overwritten: the file name gets a numeric suffix instead.
    """
    flat, width, height = texture_pixels(load_texture(texture))
    image = bpy.data.images.new(unique_name(bpy.data.images, name), width, height,
                                alpha=True, float_buffer=False)
    image.colorspace_settings.name = "sRGB"
    image.pixels.foreach_set(flat)
    image.update()
    blend = bpy.data.filepath
    if folder is None and not blend:
        image.pack()
        return image
    target = Path(folder) if folder is not None else Path(blend).parent / TEXTURE_FOLDER
    try:
        target.mkdir(parents=True, exist_ok=True)
        path = free_path(target, file_stem(image.name))
        image.filepath_raw = str(path)
        image.file_format = "PNG"
        image.save()
    except (OSError, RuntimeError) as exc:
        bpy.data.images.remove(image)
        raise CaptureError(f"cannot write the texture to {target} ({exc}); choose a writable folder") from None
    if blend:
        try:
            image.filepath = bpy.path.relpath(str(path))
        except ValueError:  # another drive (Windows): keep the absolute path
            pass
    return image


# --------------------------------------------------------------------------- materials


def _output_node(tree: bpy.types.NodeTree):
    outputs = [node for node in tree.nodes if node.bl_idname == "ShaderNodeOutputMaterial"]
    active = [node for node in outputs if node.is_active_output]
    return (active or outputs or [None])[0]


def _principled(tree: bpy.types.NodeTree):
    """The Principled BSDF that feeds the active output's Surface (first one found
    upstream), else any Principled BSDF of the tree, else None."""
    output = _output_node(tree)
    if output is not None:
        stack, seen = [output], set()
        while stack:
            node = stack.pop()
            if node.as_pointer() in seen:
                continue
            seen.add(node.as_pointer())
            if node.bl_idname == "ShaderNodeBsdfPrincipled":
                return node
            stack.extend(link.from_node for socket in node.inputs for link in socket.links)
    return next((node for node in tree.nodes if node.bl_idname == "ShaderNodeBsdfPrincipled"), None)


def wire_texture(material: bpy.types.Material, image: bpy.types.Image, uv_map: str) -> bpy.types.Node:
    """Add Image Texture (``image``) <- UV Map (``uv_map``) nodes to ``material`` and wire
    the colour into the Base Color of its Principled BSDF (one is added and connected to
    the output when the material has none) -> the image node."""
    tree = compat.node_tree(material)
    shader = _principled(tree)
    if shader is None:
        output = _output_node(tree) or tree.nodes.new("ShaderNodeOutputMaterial")
        shader = tree.nodes.new("ShaderNodeBsdfPrincipled")
        shader.location = (output.location.x - 300, output.location.y)
        tree.links.new(shader.outputs["BSDF"], output.inputs["Surface"])
    base = shader.inputs["Base Color"]
    for link in list(base.links):
        tree.links.remove(link)
    texture = tree.nodes.new("ShaderNodeTexImage")
    texture.image = image
    texture.label = NODE_LABEL
    texture.name = NODE_LABEL
    texture.interpolation = "Linear"
    texture.location = (shader.location.x - 340, shader.location.y)
    uv = tree.nodes.new("ShaderNodeUVMap")
    uv.uv_map = uv_map
    uv.location = (texture.location.x - 220, texture.location.y - 120)
    tree.links.new(uv.outputs["UV"], texture.inputs["Vector"])
    tree.links.new(texture.outputs["Color"], base)
    tree.nodes.active = texture
    return texture


# On every material this module makes: the name of the artist's material it copies ("" for
# none), so a texture generated again names its material after that one, not after the copy.
SOURCE_PROPERTY = "zs_source_material"


def new_material(name: str, source: bpy.types.Material | None, image, uv_map: str) -> bpy.types.Material:
    """A NEW material: a copy of ``source`` (or a fresh Principled one) reading ``image``
    through ``uv_map``, named "<the artist's material> <name>" (for a source made here, its
    own source's name: "Clay ZS Texture", never "Clay ZS Texture ZS Texture"). ``source``
    itself is not modified."""
    origin = "" if source is None else str(source.get(SOURCE_PROPERTY, source.name))
    wanted = unique_name(bpy.data.materials, f"{origin} {name}".strip())  # before the copy takes a name
    material = source.copy() if source is not None else bpy.data.materials.new(wanted)
    material.name = wanted
    material[SOURCE_PROPERTY] = origin
    wire_texture(material, image, uv_map)
    return material


def _assign(obj: bpy.types.Object, index: int, material, targets: set[int]) -> None:
    """Put ``material`` in slot ``index``; a slot stored on a mesh that objects outside
    ``targets`` also use is switched to the object, so those objects keep their look."""
    slot = obj.material_slots[index]
    if slot.link == "DATA" and obj.data.users > 1:
        others = [o for o in bpy.data.objects if o.data == obj.data and o.as_pointer() not in targets]
        if others:
            slot.link = "OBJECT"
    slot.material = material


def _keep(material) -> None:
    """An original material that lost its last user keeps a fake user (saved with the file)."""
    if material is not None and material.users == 0:
        material.use_fake_user = True


# ------------------------------------------------------------------------ public entry


def apply_texture(objects: Sequence[bpy.types.Object], texture, uv_map: str | Mapping | None,
                  name: str = "ZS Texture", folder=None) -> tuple[list[bpy.types.Material], bpy.types.Image]:
    """Show ``texture`` on ``objects`` through new datablocks -> (new materials, new image).

    ``texture``: (T, T, 3|4) float32 in [0, 1], rows top to bottom (texel row 0 is v = 1),
    or a PNG path. ``uv_map``: one UV map name for all objects, a mapping object (or
    object name) -> UV map name, or None for each object's active render UV map.
    ``folder``: where the PNG goes (default ``//zs_textures`` of a saved file; an unsaved
    file packs the image). Every material slot of each object gets a new material (a copy
    of the slot's material, or a new Principled one where the slot is empty; an object
    without slots gets one slot); the originals stay as they were.
    """
    objects = list(objects)
    if not objects:
        raise CaptureError("no object to apply the texture to")
    uv_maps = {}
    for obj in objects:
        if obj.type != "MESH":
            raise CaptureError(f"object {obj.name!r} is a {obj.type.lower()}, not a mesh")
        wanted = uv_map.get(obj, uv_map.get(obj.name)) if isinstance(uv_map, Mapping) else uv_map
        if wanted is not None and wanted not in obj.data.uv_layers:
            raise CaptureError(f"object {obj.name!r} has no UV map named {wanted!r}")
        wanted = wanted or active_render_uv_name(obj)
        if wanted is None:
            raise CaptureError(f"object {obj.name!r} has no UV map; the texture cannot be applied")
        uv_maps[obj] = wanted

    image = new_texture_image(name, texture, folder)
    targets = {obj.as_pointer() for obj in objects}
    materials = []
    for obj in objects:
        if len(obj.material_slots) == 0:
            obj.data.materials.append(None)  # a new empty slot: the mesh had no materials at all
        copies: dict[int, bpy.types.Material] = {}
        replaced = []
        for index, slot in enumerate(obj.material_slots):
            source = slot.material
            key = source.as_pointer() if source is not None else 0
            if key not in copies:
                copies[key] = new_material(name, source, image, uv_maps[obj])
                materials.append(copies[key])
            _assign(obj, index, copies[key], targets)
            replaced.append(source)
        for source in replaced:
            _keep(source)
    return materials, image
