"""blender_addon.apply with real bpy: new image and materials, the user's data untouched."""

from __future__ import annotations

import numpy as np
import pytest

import bpy
from addon_helpers import add_monkey, data_counts
from blender_addon import apply, compat, image_pixels
from blender_addon.errors import CaptureError


def painted_monkey(name="Paint"):
    """Suzanne with a user material whose Image Texture node shows a user image."""
    monkey = add_monkey()
    material = compat.new_material(name)
    tree = material.node_tree
    image = bpy.data.images.new("User Image", 8, 8)
    image.pixels.foreach_set(np.linspace(0, 1, 8 * 8 * 4, dtype=np.float32))
    node = tree.nodes.new("ShaderNodeTexImage")
    node.image = image
    tree.links.new(node.outputs["Color"], tree.nodes["Principled BSDF"].inputs["Base Color"])
    tree.nodes["Principled BSDF"].inputs["Roughness"].default_value = 0.25
    monkey.data.materials.append(material)
    return monkey, material, image


def snapshot(material) -> dict:
    """Everything that could change in a material: nodes, their values, links."""
    tree = material.node_tree
    nodes = {}
    for node in tree.nodes:
        values = []
        for socket in node.inputs:
            value = getattr(socket, "default_value", None)
            values.append((socket.identifier, tuple(value) if hasattr(value, "__len__") else value))
        nodes[node.name] = (node.bl_idname, tuple(node.location), getattr(getattr(node, "image", None), "name", None),
                            tuple(values))
    links = sorted((l.from_node.name, l.from_socket.identifier, l.to_node.name, l.to_socket.identifier)
                   for l in tree.links)
    return {"nodes": nodes, "links": links, "name": material.name}


def pixels(image) -> np.ndarray:
    return image_pixels.image_to_numpy(image)


def texture_array(size=32, seed=0) -> np.ndarray:
    """A texture whose top rows are bright and bottom rows dark (flips show)."""
    rng = np.random.default_rng(seed)
    texture = rng.random((size, size, 3)).astype(np.float32) * 0.5
    texture[: size // 4] += 0.5
    return texture


def wiring(material) -> tuple:
    """-> (image node, uv node) of the texture the material shows in Base Color."""
    tree = material.node_tree
    shader = apply._principled(tree)
    (link,) = shader.inputs["Base Color"].links
    image_node = link.from_node
    assert image_node.bl_idname == "ShaderNodeTexImage"
    (uv_link,) = image_node.inputs["Vector"].links
    assert uv_link.from_node.bl_idname == "ShaderNodeUVMap"
    return image_node, uv_link.from_node


def test_new_material_and_image_leave_the_old_ones_alone(scene):
    monkey, original, user_image = painted_monkey()
    before = snapshot(original)
    user_pixels = pixels(user_image).copy()
    texture = texture_array()

    materials, image = apply.apply_texture([monkey], texture, "UVMap")

    (material,) = materials
    assert material is not original and material.name != original.name
    assert monkey.material_slots[0].material == material
    image_node, uv_node = wiring(material)
    assert image_node.image == image and uv_node.uv_map == "UVMap"
    # The copy keeps the user's settings.
    assert apply._principled(material.node_tree).inputs["Roughness"].default_value == pytest.approx(0.25)
    # The original: same nodes, values and links; its image untouched; kept for saving.
    assert bpy.data.materials.get(original.name) == original
    assert snapshot(original) == before
    assert np.array_equal(pixels(user_image), user_pixels)
    assert original.use_fake_user
    # The image: new, 8-bit, rows top-to-bottom in the array = v from 1 to 0 in Blender.
    assert image != user_image and image.name.startswith("ZS Texture")
    assert tuple(image.size) == (32, 32) and not image.is_float
    stored = pixels(image)
    assert np.abs(stored[..., :3] - texture).max() <= 0.5 / 255 + 1e-6
    assert stored[:8, :, :3].mean() > 0.6 and stored[-8:, :, :3].mean() < 0.4
    flat = np.empty(32 * 32 * 4, np.float32)
    image.pixels.foreach_get(flat)  # Blender's row 0 is the bottom (v = 0)
    assert flat.reshape(32, 32, 4)[:8, :, :3].mean() < 0.4
    # Unsaved file: packed.
    assert image.packed_file is not None


def test_a_texture_generated_again_is_named_after_the_artists_material(scene):
    monkey, original, _user_image = painted_monkey()
    (first,), _ = apply.apply_texture([monkey], texture_array(), "UVMap")
    (second,), _ = apply.apply_texture([monkey], texture_array(), "UVMap")
    assert first.name == f"{original.name} ZS Texture"
    assert second.name == f"{original.name} ZS Texture.001" and monkey.material_slots[0].material == second
    assert first.name in bpy.data.materials and bpy.data.materials[original.name] == original


def test_saved_file_writes_png_next_to_the_blend_and_never_overwrites(scene, tmp_path):
    monkey, original, _ = painted_monkey()
    blend = tmp_path / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    monkey = bpy.data.objects[monkey.name]
    first = texture_array(seed=1)
    _, image = apply.apply_texture([monkey], first, "UVMap")
    path = tmp_path / "zs_textures" / "ZS_Texture.png"
    assert path.is_file() and image.packed_file is None
    assert image.filepath == "//zs_textures/ZS_Texture.png"
    loaded = apply.load_texture(path)
    assert np.abs(loaded[..., :3] - first).max() <= 0.5 / 255 + 1e-6

    # A second apply: new image, new file; the first file keeps its pixels.
    materials, second = apply.apply_texture([monkey], texture_array(seed=2), "UVMap")
    assert second != image and second.filepath == "//zs_textures/ZS_Texture.001.png"
    assert np.array_equal(apply.load_texture(path), loaded)
    # The second apply copied the first ZS material: the chain stays intact.
    assert wiring(materials[0])[0].image == second

    names = original.name, monkey.name, second.name
    bpy.ops.wm.save_mainfile()
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    assert names[0] in bpy.data.materials  # survived the save with its fake user
    reopened = bpy.data.objects[names[1]].material_slots[0].material
    assert wiring(reopened)[0].image.name == names[2]
    assert pixels(wiring(reopened)[0].image).shape == (32, 32, 4)


def test_png_path_and_folder(scene, tmp_path):
    monkey = add_monkey()  # no material at all: a new Principled one in a new slot
    source = tmp_path / "in" / "texture.png"
    _, made = apply.apply_texture([monkey], texture_array(16, seed=3), None, name="Source",
                                  folder=source.parent)
    written = tmp_path / "in" / "Source.png"
    assert written.is_file() and made.filepath == str(written)  # unsaved file + folder: absolute
    materials, image = apply.apply_texture([monkey], written, None, folder=tmp_path / "out")
    assert np.array_equal(pixels(image), pixels(made))
    assert len(monkey.material_slots) == 1 and monkey.material_slots[0].material == materials[0]
    assert wiring(materials[0])[1].uv_map == "UVMap"  # the active render UV map


def test_every_slot_and_shared_meshes(scene):
    monkey, red, _ = painted_monkey("Red")
    blue = compat.new_material("Blue")
    # An emission-only material: no Principled BSDF to wire into.
    tree = blue.node_tree
    tree.nodes.remove(tree.nodes["Principled BSDF"])
    emission = tree.nodes.new("ShaderNodeEmission")
    tree.links.new(emission.outputs["Emission"], tree.nodes["Material Output"].inputs["Surface"])
    monkey.data.materials.append(blue)
    twin = bpy.data.objects.new("Twin", monkey.data)  # shares the mesh, not a target
    scene.collection.objects.link(twin)
    blue_before = snapshot(blue)

    materials, _ = apply.apply_texture([monkey], texture_array(), "UVMap")

    assert len(materials) == 2
    assert [slot.material for slot in monkey.material_slots] == materials
    assert [slot.material for slot in twin.material_slots] == [red, blue]  # the twin is untouched
    assert [slot.link for slot in monkey.material_slots] == ["OBJECT", "OBJECT"]
    assert list(monkey.data.materials) == [red, blue]
    wiring(materials[1])  # a Principled BSDF was added for the emission copy
    assert snapshot(blue) == blue_before


def test_errors_come_before_any_change(scene):
    monkey, _, _ = painted_monkey()
    counts = data_counts()
    with pytest.raises(CaptureError, match="no UV map named 'Nope'"):
        apply.apply_texture([monkey], texture_array(), "Nope")
    with pytest.raises(CaptureError, match=r"texture: expected shape"):
        apply.apply_texture([monkey], np.zeros((4, 4)), "UVMap")
    with pytest.raises(CaptureError, match="no object"):
        apply.apply_texture([], texture_array(), "UVMap")
    bpy.ops.object.camera_add()
    with pytest.raises(CaptureError, match="not a mesh"):
        apply.apply_texture([bpy.context.active_object], texture_array(), None)
    counts["objects"] += 1
    counts["cameras"] += 1
    assert data_counts() == counts
