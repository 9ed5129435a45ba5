"""Pass capture for 8 cameras at 512x512 vs a plain 1-sample Cycles render of the same cameras.

Timed: ``blender_addon.pass_render.render_passes`` (five data passes written as three EXRs, read
back into numpy, camera matrices; no texel maps) against ``bpy.ops.render.render`` of the same
8 cameras at the same size with Cycles at 1 sample and no extra passes, measured in the
same run, interleaved. Target: ratio < 1.5. Also reported, without a target: the texel maps
at 1024^2 (the default texture size), rasterised from the evaluated mesh. Needs the ``bpy``
module (the test extra).
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="zs-bench-blender-"))

import bpy  # noqa: E402
from _common import best_of, interleaved, report  # noqa: E402

from blender_addon import pass_render, rig, uv_layers  # noqa: E402

CAMERAS, SIZE, TEXTURE = 8, 512, 1024


def build_scene() -> tuple[bpy.types.Scene, list, list]:
    """Suzanne (subdivided once, so the mesh is not trivial) and an 8-camera orbit rig."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    bpy.ops.mesh.primitive_monkey_add()
    monkey = bpy.context.active_object
    monkey.modifiers.new("Subdivision", "SUBSURF").levels = 1
    cameras = rig.build_orbit_rig(scene, [monkey], count=CAMERAS, width=SIZE, height=SIZE)
    return scene, [monkey], cameras


def plain_render(scene: bpy.types.Scene, cameras: list) -> None:
    """The baseline: what rendering each camera once costs with Cycles at 1 sample."""
    render = scene.render
    render.engine = "CYCLES"
    scene.cycles.samples = 1
    scene.cycles.use_denoising = False
    render.resolution_x = render.resolution_y = SIZE
    render.resolution_percentage = 100
    for camera in cameras:
        scene.camera = camera
        bpy.ops.render.render()


def main() -> None:
    scene, objects, cameras = build_scene()
    capture_passes = lambda: pass_render.render_passes(scene, cameras, objects, SIZE, SIZE)  # noqa: E731
    capture_passes()  # warm-up: kernels, first EXR writer
    plain_render(scene, cameras)
    times = interleaved({"passes": capture_passes, "plain": lambda: plain_render(scene, cameras)}, repeats=3)
    uv_maps = {obj: uv_layers.ensure_uv_map(obj, None) for obj in objects}
    texel_seconds = best_of(lambda: pass_render.bake_texel_maps(scene, objects, uv_maps, TEXTURE), repeats=3)
    print(f"texel maps at {TEXTURE}^2: {texel_seconds:.2f} s")
    per_view = times["passes"] / CAMERAS
    print(f"passes: {times['passes']:.2f} s for {CAMERAS} cameras at {SIZE}^2 ({per_view:.3f} s per view); "
          f"plain 1-sample Cycles render: {times['plain']:.2f} s")
    report("passes", times["passes"], times["plain"], target=1.5, target_applies_to="ratio",
           seconds_per_view=round(per_view, 4),
           cameras=CAMERAS, size=SIZE, texel_maps_seconds=round(texel_seconds, 3), texture_size=TEXTURE)


if __name__ == "__main__":
    main()
