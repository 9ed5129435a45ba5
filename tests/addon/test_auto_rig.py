"""blender_addon.auto_rig with real bpy: the auto rig chosen from Suzanne's own geometry, the
completion cameras a capture adds for what its cameras miss, and how they reach the passes,
the panel and the limits. (The numpy core: tests/core/test_coverage.py.)"""

from __future__ import annotations

import time

import numpy as np
import pytest

import bpy
from addon_helpers import RecordingLayout, add_camera, add_monkey, data_counts
from blender_addon import api, auto_rig, batch, flow, properties, rig
from blender_addon.camera_projection import camera_matrices
from blender_addon.wire import ProtocolError, coverage, protocol

SIZE = 64


def settings(**values) -> api.TextureSettings:
    chosen = api.TextureSettings(**{"steps": 1, "view_size": SIZE, "texture_size": 64, **values})
    chosen.check()
    return chosen


def recording():
    """A sampler that keeps the passes it gets and samples nothing."""

    def sample(request, passes, out_dir):
        sample.passes.append(passes)
        return {}

    sample.passes = []
    return sample


def test_the_auto_rig_sees_98_percent_of_suzanne_within_its_budget(scene):
    monkey = add_monkey()
    started = time.perf_counter()
    plan = auto_rig.plan_cameras(scene, [monkey], settings(views=0, view_budget=12, complete=False))
    elapsed = time.perf_counter() - started
    report = plan.report()
    assert report["cameras"] == "auto" and report["views_completion"] == 0
    assert report["coverage_main"] >= coverage.TARGET_COVERAGE and report["views_main"] <= 12
    assert 0.9 < report["seeable"] < 1.0  # the eyes' backs and what hides behind them are not
    assert report["surface_samples"] == coverage.SAMPLES and report["surface_area"] > 5.0
    ring = auto_rig.plan_cameras(scene, [monkey], settings(views=6, complete=False)).report()
    assert ring["coverage_main"] < 0.9 and ring["seeable"] == report["seeable"]  # the same candidates
    print(f"auto rig: {report['views_main']} cameras, coverage {report['coverage_main']} "
          f"(ring of 6: {ring['coverage_main']}), planned in {elapsed:.2f} s")


def test_built_cameras_are_the_planned_ones(scene):
    monkey = add_monkey(location=(0.5, -0.2, 0.3))
    cameras, plan = auto_rig.rig_for(scene, [monkey], settings(views=0, view_budget=6))
    fill = len(plan.plan.completion)
    names = [f"ZS Auto {i:02d}" for i in range(len(plan.plan.main))] + [f"ZS Fill {i:02d}" for i in range(fill)]
    assert [camera.name for camera in cameras] == names and rig.rig_cameras() == cameras
    assert [rig.is_fill(camera) for camera in cameras] == [False] * len(plan.plan.main) + [True] * fill
    planned = plan.plan.main + plan.plan.completion
    depsgraph = bpy.context.evaluated_depsgraph_get()
    for index, camera in enumerate(cameras):
        world_to_camera, projection = camera_matrices(scene, camera, SIZE, SIZE, depsgraph)
        np.testing.assert_allclose(world_to_camera, planned.world_to_camera[index], atol=1e-5)
        np.testing.assert_allclose(projection, planned.projection[index], rtol=1e-5, atol=1e-6)
    # The orbit plan is the orbit rig, camera for camera.
    ring = auto_rig.plan_cameras(scene, [monkey], settings(views=5, elevation=30.0, top_view=True, complete=False))
    built = rig.build_orbit_rig(scene, [monkey], count=5, elevation_deg=30.0, top_views=1, width=SIZE, height=SIZE)
    for index, camera in enumerate(built):
        world_to_camera, projection = camera_matrices(scene, camera, SIZE, SIZE, bpy.context.evaluated_depsgraph_get())
        np.testing.assert_allclose(world_to_camera, ring.plan.main.world_to_camera[index], atol=1e-5)
        np.testing.assert_allclose(projection, ring.plan.main.projection[index], rtol=1e-5, atol=1e-6)
    assert ring.names == [camera.name for camera in built]


def test_a_capture_marks_its_completion_views_and_leaves_no_camera(scene, tmp_path):
    monkey = add_monkey()
    counts = data_counts()
    sampler = recording()
    generation = flow.TextureGeneration(scene, settings(views=6), [monkey], temporary_rig=True, sampler=sampler,
                                        out_dir=tmp_path / "job")
    generation.check()
    assert data_counts() == counts  # planned, nothing built yet
    fill = generation.coverage["views_completion"]
    assert 1 <= fill <= coverage.COMPLETION_BUDGET and generation.views == 6 + fill
    assert generation.coverage["coverage"] > generation.coverage["coverage_main"]
    passes = generation.capture()
    generation.submit()
    assert passes.views == 6 + fill and passes.completion.tolist() == [False] * 6 + [True] * fill
    assert list(passes.main_views) == list(range(6))
    assert all(passes.mask[view].sum() > 50 for view in range(passes.views))  # every view sees Suzanne
    assert data_counts() == counts and scene.camera is None  # no camera left, not even the scene's
    assert "ZS Fill (temporary)" not in bpy.data.collections
    assert generation.metrics["camera_coverage"] == generation.coverage
    generation.close()

    plain = flow.TextureGeneration(scene, settings(views=6, complete=False), [monkey], temporary_rig=True,
                                   sampler=sampler)
    plain.check()
    assert plain.views == 6 and plain.capture().completion is None
    assert data_counts() == counts
    plain.close()


def test_completion_views_count_towards_the_servers_view_limit(scene):
    monkey = add_monkey()
    generation = flow.TextureGeneration(scene, settings(views=6), [monkey], sampler=recording())
    generation.check()
    views = generation.views
    assert views > 6
    flow.check_limits({"max_views": views}, generation.request, *generation._size(), unit="view")
    with pytest.raises(ProtocolError, match=f"views: {views} is over this server's limit of {views - 1}"):
        flow.check_limits({"max_views": views - 1}, generation.request, *generation._size(), unit="view")


def test_the_users_cameras_get_completion_cameras_and_marked_ones_are_kept(scene):
    monkey = add_monkey()
    front = add_camera(scene, "Front", (0.0, -6.0, 0.5))
    generation = flow.TextureGeneration(scene, settings(), [monkey], [front], sampler=recording())
    generation.check()
    fill = generation.coverage["views_completion"]
    assert generation.coverage["cameras"] == "cameras" and fill >= 1
    assert generation.coverage["coverage_main"] < 0.6  # one camera sees the front only
    passes = generation.capture()
    assert passes.completion.tolist() == [False] + [True] * fill
    assert [obj.name for obj in bpy.data.objects if obj.type == "CAMERA"] == ["Front"]
    generation.close()
    # Completion cameras of a previewed rig, given as cameras, are completion views as they are.
    cameras, plan = auto_rig.rig_for(scene, [monkey], settings(views=3))
    assert len(plan.plan.completion) >= 1
    given = flow.TextureGeneration(scene, settings(complete=False), [monkey], cameras, sampler=recording())
    given.check()
    assert given.views == len(cameras) and given.coverage["views_completion"] == len(plan.plan.completion)
    passes = given.capture()
    assert passes.completion.tolist() == [rig.is_fill(camera) for camera in cameras]
    assert rig.rig_cameras() == cameras  # nothing added, nothing removed
    given.close()


def test_the_panels_auto_rig(addon):
    from blender_addon import ui

    monkey = add_monkey()
    monkey.select_set(True)
    panel = bpy.context.scene.zs_texturing
    panel.views_source, panel.view_budget, panel.view_size = "AUTO", 8, SIZE
    options = properties.settings_for(panel)
    assert options.views == 0 and options.view_budget == 8 and options.complete
    layout = RecordingLayout()
    ui.ZS_PT_main.draw(type("Panel", (), {"layout": layout})(), bpy.context)
    assert {"views_source", "view_budget", "view_size", "complete"} <= set(layout.props)
    assert "views" not in layout.props and "zs.build_rig" in layout.operators
    assert bpy.ops.zs.build_rig() == {"FINISHED"}
    names = [camera.name for camera in rig.rig_cameras()]
    assert names and all(name.startswith(("ZS Auto", "ZS Fill")) for name in names)
    assert len([name for name in names if name.startswith("ZS Auto")]) <= 8
    assert "visible surface" in panel.status


def test_the_flags_take_auto_and_no_complete():
    parser = batch.build_parser()
    arguments = parser.parse_args(["--object", "A", "--out", "o", "--cameras", "auto", "--no-complete"])
    values = protocol.values_from_arguments(arguments, protocol.TEXTURE)
    assert values["views"] == 0 and values["complete"] is False and values["view_budget"] == 12
    assert protocol.values_from_arguments(parser.parse_args(["--object", "A", "--out", "o"]),
                                          protocol.TEXTURE)["complete"] is True
    assert "--views N|auto" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--object", "A", "--out", "o", "--cameras", "most"])

