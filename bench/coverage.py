"""Camera planning at capture vs the pass render it plans, on the demo object.

Timed: ``blender_addon.auto_rig.plan_cameras`` (surface samples, the BVH of everything that
renders, the candidates' visibility, the greedy choice or the orbit ring, the completion
cameras) for the demo's Suzanne (subdivided once) at the default view size, against
``pass_render.render_passes`` of the cameras it plans with the default texel maps (what the
capture renders anyway), interleaved. Target: ratio < 0.5 for the orbit rig of 6 with
completion (the default). Also reported: the auto rig's planning time and what each plan's
cameras see (coverage of the surface seen from outside, at a usable angle). Needs ``bpy``.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="zs-bench-blender-"))

import bpy  # noqa: E402
from _common import best_of, interleaved, report  # noqa: E402

from blender_addon import api, auto_rig, batch, pass_render  # noqa: E402


def main() -> None:
    batch.build_demo_scene(os.path.join(tempfile.mkdtemp(prefix="zs-bench-coverage-"), "scene.blend"))
    scene = bpy.context.scene
    objects = [bpy.data.objects[batch.DEMO_OBJECT]]
    ring = api.TextureSettings()  # the defaults: 6 cameras, completion on, 512^2 views, 1024^2 texels
    auto = api.TextureSettings(views=0)
    plan = auto_rig.plan_cameras(scene, objects, ring)  # warm-up
    main_cameras, fill = auto_rig.build_plan(scene, plan, "ZS Bench")
    cameras = main_cameras + fill

    def capture():
        pass_render.render_passes(scene, cameras, objects, ring.view_size, ring.view_size,
                                  texture_size=ring.texture_size)

    capture()
    times = interleaved({"plan": lambda: auto_rig.plan_cameras(scene, objects, ring), "capture": capture}, repeats=3)
    auto_seconds = best_of(lambda: auto_rig.plan_cameras(scene, objects, auto), repeats=3)
    ring_report = plan.report()
    auto_report = auto_rig.plan_cameras(scene, objects, auto).report()
    print(f"plan (orbit 6 + {ring_report['views_completion']} completion): {times['plan']:.2f} s; capture of those "
          f"{len(cameras)} views: {times['capture']:.2f} s; auto plan ({auto_report['views_main']} + "
          f"{auto_report['views_completion']}): {auto_seconds:.2f} s")
    report("coverage", times["plan"], times["capture"], target=0.5, target_applies_to="ratio",
           auto_seconds=round(auto_seconds, 3), views=len(cameras), view_size=ring.view_size,
           orbit_coverage_main=ring_report["coverage_main"], orbit_coverage=ring_report["coverage"],
           orbit_completion_views=ring_report["views_completion"], auto_views=auto_report["views_main"],
           auto_coverage_main=auto_report["coverage_main"], auto_coverage=auto_report["coverage"],
           seeable=ring_report["seeable"])


if __name__ == "__main__":
    main()
