"""Load generated frames into the scene as an image sequence: one undo step.

Run from the interface (F3) it is one undo step, "Load ZS Frames". Generate calls it at
the end of an animation job from Python, where an operator pushes no undo step of its
own: Generate pushes the one "ZS Generate" step after it
(``operators.generate.push_undo_step``). Artists or scripts can call it on any folder of
frames ``0000.png``, ``0001.png`` ...:

    bpy.ops.zs.load_animation(directory="//zs_frames/ZS_Animation/frames/", frame_start=1)

adds a new image sequence, shown as a new background image of the camera (empty: the
scene's camera) and as a new Video Sequencer strip from ``frame_start`` on
(:func:`blender_addon.animation.load_frames`).
"""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import IntProperty, StringProperty

from .. import animation
from ..errors import CaptureError
from .base import cancelled, finished


class ZS_OT_load_animation(bpy.types.Operator):
    """Load generated frames as an image sequence: the camera's background image and a Video Sequencer strip"""

    bl_idname = "zs.load_animation"
    bl_label = "Load ZS Frames"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(name="Frames", subtype="DIR_PATH",
                              description="Folder of the frames 0000.png, 0001.png ...")
    frame_start: IntProperty(name="Start Frame", default=1, description="Scene frame that shows the first file")
    frame_count: IntProperty(name="Frames", default=0, min=0,
                             description="How many frames to load (0: every consecutive file from 0000.png)")
    camera: StringProperty(name="Camera", default="", description="Camera to show them (empty: the scene's camera)")
    scene: StringProperty(name="Scene", default="", description="Scene to load them into (empty: the current one)")
    name: StringProperty(name="Name", default="ZS Animation", description="Name of the new image and strip")

    def invoke(self, context, event):
        if self.directory:
            return self.execute(context)
        context.window_manager.fileselect_add(self)  # pick the frames folder first
        return {"RUNNING_MODAL"}

    def execute(self, context):
        try:
            scene = bpy.data.scenes.get(self.scene) if self.scene else context.scene
            if scene is None:
                raise CaptureError(f"scene {self.scene!r} no longer exists")
            folder = Path(bpy.path.abspath(self.directory))
            count = self.frame_count or animation.count_frames(folder)
            if not count:
                raise CaptureError(f"no frames (0000.png, 0001.png ...) in {folder}")
            files = animation.frame_files(folder, count)
            camera = animation.scene_camera(scene, self.camera or None)
            loaded = animation.load_frames(scene, camera, files, self.frame_start, name=self.name)
        except CaptureError as exc:
            return cancelled(self, f"cannot load the frames: {exc}")
        return finished(self, f"{loaded.image.name}: {count} frames from frame {loaded.frame_start}, as the "
                              f"background of {camera.name} and Video Sequencer channel {loaded.strip.channel}")


classes = (ZS_OT_load_animation,)
