"""Scene builders shared by the add-on tests (real bpy), and two stand-ins for what background
mode lacks: a UI layout that records what a panel draws, and timers driven by hand."""

from __future__ import annotations

import time

import bpy
import numpy as np
import pytest

from blender_addon import compat

from blender_scenes import add_camera, moving_cube_shot  # noqa: F401  (shared with the e2e tests)


# Animation captures need the whole vector pass, which only Blender 5's compositor writes out.
needs_motion_vectors = pytest.mark.skipif(not compat.writes_motion_to_next_frame(),
                                          reason="animation capture needs Blender 5.0+: " + compat.NO_MOTION_TO_NEXT_FRAME)


def add_monkey(location=(0.0, 0.0, 0.0)):
    """Suzanne (she has a UV map), the active object."""
    bpy.ops.mesh.primitive_monkey_add(location=location)
    return bpy.context.active_object


def add_plane(size: float = 2.0, location=(0.0, 0.0, 0.0), rotation=(0.0, 0.0, 0.0)):
    """A plane in its local XY (normal +Z) with UV (x, y) -> ((x + s/2)/s, (y + s/2)/s)."""
    bpy.ops.mesh.primitive_plane_add(size=size, location=location, rotation=rotation)
    return bpy.context.active_object


def world_matrix(obj) -> np.ndarray:
    return np.array(obj.matrix_world, dtype=np.float64)


def data_counts() -> dict[str, int]:
    """How many datablocks of each kind capture could leave behind."""
    kinds = ("images", "materials", "node_groups", "meshes", "objects", "cameras", "collections", "textures")
    return {kind: len(getattr(bpy.data, kind)) for kind in kinds}


def add_user_compositor(scene) -> None:
    """The artist's own compositing: a node group of their own (Blender 5) or a File Output
    node in the scene's tree (4.x), which a pass capture must neither run nor change."""
    if hasattr(scene, "compositing_node_group"):
        scene.compositing_node_group = bpy.data.node_groups.new("User Tree", "CompositorNodeTree")
        return
    scene.use_nodes = True
    scene.node_tree.nodes.new("CompositorNodeOutputFile").name = "User Output"


def compositor_state(scene):
    """What :func:`add_user_compositor` set, to compare before and after a capture."""
    if hasattr(scene, "compositing_node_group"):
        return scene.compositing_node_group
    tree = scene.node_tree  # no tree and an empty one are the same compositing
    return scene.use_nodes, [] if tree is None else sorted((node.name, node.mute) for node in tree.nodes)


class RecordingLayout:
    """Stands in for UILayout: every container is itself; checks every prop and operator."""

    def __init__(self):
        self.props, self.operators, self.labels = [], [], []

    def __getattr__(self, name):  # row(), column(), box(), grid_flow(), separator() ...
        return lambda *args, **kwargs: self

    def __setattr__(self, name, value):  # enabled, scale_y, use_property_split ...
        object.__setattr__(self, name, value)

    def prop(self, data, name, **kwargs):
        assert name in data.bl_rna.properties, f"no property {name!r} on {data}"
        self.props.append(name)

    def operator(self, idname, **kwargs):
        category, _, name = idname.partition(".")
        assert hasattr(getattr(bpy.ops, category), name), idname
        self.operators.append(idname)
        return self

    def label(self, text="", **kwargs):
        self.labels.append(text)

    def progress(self, factor=0.0, text="", **kwargs):
        assert 0.0 <= factor <= 1.0
        self.labels.append(text)


class Timers:
    """bpy.app.timers never fire without an event loop: keep the registered callbacks
    and run them by hand, honouring the interval each one asks for."""

    def __init__(self, monkeypatch):
        self.callbacks = []
        monkeypatch.setattr(bpy.app.timers, "register",
                            lambda function, first_interval=0.0, **_: self.callbacks.append(function))

    def run(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.callbacks:
            again = self.callbacks[0]()
            if again is None:
                self.callbacks.pop(0)
            else:
                time.sleep(again)
            assert time.monotonic() < deadline, "a timer kept running"
