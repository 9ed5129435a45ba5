"""The "ZS" tab of the 3D Viewport sidebar. Draw only: every action is an operator.

Main panel: server status (Connect / Start), prompt, seed and sampling knobs, views,
texture output, Generate / Cancel and the job's progress. Sub-panels: Method (noise,
attention, scheduler, UV sync) and Output (texture size, UV map, folder).
"""

from __future__ import annotations

import bpy

from .operators import jobs, server

_STATUS_ICONS = {"online": "CHECKMARK", "offline": "CANCEL", "error": "ERROR", "checking": "SORTTIME",
                 "starting": "SORTTIME", "unknown": "QUESTION"}


class ZS_PT_main(bpy.types.Panel):
    bl_idname = "ZS_PT_main"
    bl_label = "ZS Texturing"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "ZS"

    @classmethod
    def poll(cls, context):
        return context.scene is not None and hasattr(context.scene, "zs_texturing")

    def draw(self, context):
        layout = self.layout
        settings = context.scene.zs_texturing
        job = jobs.active()
        running = job is not None and job.alive

        status = server.STATUS
        row = layout.row(align=True)
        row.label(text=f"Server: {status.state}", icon=_STATUS_ICONS.get(status.state, "QUESTION"))
        row.operator("zs.check_server", text="Connect", icon="FILE_REFRESH")
        if server.started_here():
            row.operator("zs.stop_server", text="Stop", icon="PAUSE")
        else:
            row.operator("zs.start_server", text="Start", icon="PLAY")
        if status.message and status.state != "online":
            _wrapped(layout.box(), status.message)
        elif status.message:
            layout.label(text=status.message)

        column = layout.column()
        column.enabled = not running
        column.prop(settings, "prompt", text="", icon="TEXT")
        column.prop(settings, "negative_prompt", text="", icon="REMOVE")
        grid = column.grid_flow(columns=2, align=True)
        grid.prop(settings, "seed")
        grid.prop(settings, "steps")
        grid.prop(settings, "guidance")
        grid.prop(settings, "controlnet_scale", text="ControlNet")

        box = column.box()
        box.prop(settings, "views_source")
        if settings.views_source == "RIG":
            row = box.row(align=True)
            row.prop(settings, "rig_count")
            row.prop(settings, "rig_elevation")
            row = box.row(align=True)
            row.prop(settings, "rig_top_view")
            row.operator("zs.build_rig", text="Preview Rig", icon="OUTLINER_OB_CAMERA")
        box.prop(settings, "view_resolution")

        if running:
            row = layout.row(align=True)
            row.scale_y = 1.4
            row.operator("zs.cancel", text="Cancel", icon="X")
            layout.progress(factor=settings.progress, text=settings.status or "Running")
        else:
            row = layout.row()
            row.scale_y = 1.4
            row.operator("zs.generate", icon="SHADING_TEXTURE")
            if settings.status:
                layout.label(text=settings.status)
        if settings.job_id:
            layout.label(text=f"Job {settings.job_id}", icon="INFO")
        if bpy.data.images.get("ZS Preview") is not None:
            layout.label(text="Live preview: Image Editor > ZS Preview", icon="IMAGE_DATA")


class ZS_PT_method(bpy.types.Panel):
    bl_idname = "ZS_PT_method"
    bl_label = "Method"
    bl_parent_id = "ZS_PT_main"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "ZS"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        settings = context.scene.zs_texturing
        layout.enabled = not _running()
        layout.prop(settings, "noise")
        layout.prop(settings, "attention")
        layout.prop(settings, "scheduler")
        layout.prop(settings, "use_sync")
        row = layout.row()
        row.enabled = settings.use_sync
        row.prop(settings, "sync_strength")


class ZS_PT_output(bpy.types.Panel):
    bl_idname = "ZS_PT_output"
    bl_label = "Output"
    bl_parent_id = "ZS_PT_main"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "ZS"

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        settings = context.scene.zs_texturing
        layout.enabled = not _running()
        layout.prop(settings, "texture_size")
        layout.prop(settings, "uv_map", icon="GROUP_UVS")
        layout.prop(settings, "smart_uv")
        layout.prop(settings, "output_folder")


def _running() -> bool:
    job = jobs.active()
    return job is not None and job.alive


def _wrapped(layout, text: str, width: int = 48) -> None:
    """Long messages (errors) as several labels: a panel does not wrap text."""
    import textwrap

    for line in textwrap.wrap(text, width) or [""]:
        layout.label(text=line)


classes = (ZS_PT_main, ZS_PT_method, ZS_PT_output)
