"""The "ZS" tab of the 3D Viewport sidebar. Draw only: every action is an operator.

Main panel: server status (Connect / Start), the mode (Texture / Animation), prompt, seed
and sampling knobs, the views (texture: selected cameras, orbit rig or auto rig, and the
completion views) or the frame range, camera and frame size
(animation), Generate / Cancel and the job's progress. Sub-panels: Method (noise,
attention, scheduler, UV sync; for an animation also background noise, anchor frames,
momentum, chunk size, background and pixel sync), Model (the server's models as a
dropdown with the chosen one's family, the LoRA list with weights, the reference image with
its strength and IP-Adapter; names the server lacks or of another family are flagged),
Output (texture size, UV map and folder; for an animation the UV map and the frames
folder) and Advanced (every other parameter of the wire format's table for the mode).
"""

from __future__ import annotations

import bpy

from . import animation, properties, server_models
from .errors import CaptureError
from . import jobs
from .operators import server, server_setup

_STATUS_ICONS = {"online": "CHECKMARK", "offline": "CANCEL", "error": "ERROR", "checking": "SORTTIME",
                 "starting": "SORTTIME", "unknown": "QUESTION"}


class _SidebarPanel:
    """Where every ZS panel lives: the 3D View's sidebar, tab "ZS" (a panel's id is its
    class name)."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "ZS"


class _SubPanel(_SidebarPanel):
    bl_parent_id = "ZS_PT_main"


class ZS_PT_main(_SidebarPanel, bpy.types.Panel):
    bl_label = "ZS Texturing"

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
        if server_setup.STATE.running:  # Set Up Server of the add-on preferences
            setup = server_setup.STATE
            layout.progress(factor=setup.factor, text=f"Server set-up: step {setup.step}/{setup.count}")

        column = layout.column()
        column.enabled = not running
        column.row().prop(settings, "mode", expand=True)
        column.prop(settings, "prompt", text="", icon="TEXT")
        column.prop(settings, "negative_prompt", text="", icon="REMOVE")
        grid = column.grid_flow(columns=2, align=True)
        grid.prop(settings, "seed")
        grid.prop(settings, "steps")
        grid.prop(settings, "guidance_scale")
        grid.prop(settings, "controlnet_scale", text="ControlNet")

        animating = settings.mode == "ANIMATION"
        if animating:
            _draw_shot(column.box(), context.scene, settings)
        else:
            box = column.box()
            box.prop(settings, "views_source")
            if settings.views_source == "RIG":
                row = box.row(align=True)
                row.prop(settings, "views")
                row.prop(settings, "elevation")
                row = box.row(align=True)
                row.prop(settings, "top_view")
                row.operator("zs.build_rig", text="Preview Rig", icon="OUTLINER_OB_CAMERA")
            elif settings.views_source == "AUTO":
                row = box.row(align=True)
                row.prop(settings, "view_budget")
                row.operator("zs.build_rig", text="Preview Rig", icon="OUTLINER_OB_CAMERA")
            row = box.row(align=True)
            row.prop(settings, "view_size")
            row.prop(settings, "complete", text="Completion")

        if running:
            row = layout.row(align=True)
            row.scale_y = 1.4
            row.operator("zs.cancel", text="Cancel", icon="X")
            if job.state == "queued":  # what the queue waits on: too long for a progress bar
                _wrapped(layout, settings.status or "Queued")
            else:
                layout.progress(factor=settings.progress, text=settings.status or "Running")
        else:
            row = layout.row()
            row.scale_y = 1.4
            row.operator("zs.generate", text="Generate Animation" if animating else "Generate Texture",
                         icon="RENDER_ANIMATION" if animating else "SHADING_TEXTURE")
            if settings.status:
                layout.label(text=settings.status)
        if settings.job_id:
            layout.label(text=f"Job {settings.job_id}", icon="INFO")
        if bpy.data.images.get("ZS Preview") is not None:
            layout.label(text="Live preview: Image Editor > ZS Preview", icon="IMAGE_DATA")


class ZS_UL_loras(bpy.types.UIList):
    """The LoRA list: each entry's name (flagged when the server lacks it or it is for
    another family than the model) and weight."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_property, *_args):
        problem = lora_problem(data, item.name)
        row = layout.row(align=True)
        row.alert = bool(problem)
        row.prop(item, "name", text="", emboss=False, icon="ERROR" if problem else "MODIFIER")
        row.prop(item, "weight", text="")


def lora_problem(settings, name: str) -> str:
    """What is wrong with LoRA ``name`` on the settings' model ("" : nothing known)."""
    if not name.strip():
        return "an entry without a name (type one, or remove it) is left out"
    return server_models.CATALOG.lora_problem(name.strip(), settings.model)


class ZS_PT_model(_SubPanel, bpy.types.Panel):
    """The model, LoRAs and reference image: the dropdowns offer what the server listed at
    the last Connect."""

    bl_label = "Model"

    def draw(self, context):
        layout, settings = _settings_layout(self.layout, context)
        catalog = server_models.CATALOG
        row = layout.row(align=True)
        row.prop(settings, "model_choice")
        row.operator("zs.check_server", text="", icon="FILE_REFRESH")
        _draw_model_info(layout, catalog, settings.model)

        column = layout.column()
        column.use_property_split = False
        column.label(text="LoRAs")
        row = column.row()
        row.template_list("ZS_UL_loras", "", settings, "lora_list", settings, "lora_index", rows=2)
        buttons = row.column(align=True)
        buttons.operator("zs.lora_add", text="", icon="ADD")
        buttons.operator("zs.lora_remove", text="", icon="REMOVE")
        for entry in settings.lora_list:
            problem = lora_problem(settings, entry.name)
            if problem:
                _wrapped(column, problem, icon="ERROR")

        column.label(text="Reference Image")
        column.template_ID(settings, "reference_image", new="image.new", open="image.open")
        sub = layout.column()
        sub.active = settings.reference_image is not None
        sub.prop(settings, "reference_strength", text="Strength")
        sub.prop(settings, "ip_adapter_choice")
        problem = catalog.ip_adapter_problem(settings.ip_adapter, settings.model)
        if problem:
            _wrapped(sub, problem, icon="ERROR")


def _draw_model_info(layout, catalog: server_models.Catalog, model: str) -> None:
    """The chosen model's family and details, or why they are unknown."""
    if catalog.models is None:
        layout.label(text="Connect to list the server's models", icon="INFO")
        return
    problem = catalog.model_problem(model)
    if problem:
        _wrapped(layout, problem, icon="ERROR")
        return
    offer = catalog.model(model)
    if offer is None:
        return
    text = server_models.family_title(offer.family) if offer.family else "Family not given by the server"
    layout.label(text=f"{text}; {offer.detail}" if offer.detail else text, icon="INFO")


class ZS_PT_method(_SubPanel, bpy.types.Panel):
    bl_label = "Method"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout, settings = _settings_layout(self.layout, context)
        if settings.mode == "ANIMATION":
            layout.prop(settings, "noise")
            layout.prop(settings, "background_noise")
            layout.prop(settings, "anim_attention")
            if settings.anim_attention == "keyframes":
                layout.prop(settings, "keyframes")
            elif settings.anim_attention == "tma":
                layout.prop(settings, "momentum")
            layout.prop(settings, "chunk")
            layout.prop(settings, "scheduler")
            layout.prop(settings, "anim_sync_strength")
            layout.prop(settings, "background_sync")
            row = layout.row()
            row.active = settings.background_sync > 0
            row.prop(settings, "background_uv")
            layout.prop(settings, "pixel_sync")
            return
        layout.prop(settings, "noise")
        layout.prop(settings, "attention")
        layout.prop(settings, "scheduler")
        layout.prop(settings, "sync_strength")


class ZS_PT_output(_SubPanel, bpy.types.Panel):
    bl_label = "Output"

    def draw(self, context):
        layout, settings = _settings_layout(self.layout, context)
        if settings.mode == "ANIMATION":
            layout.prop(settings, "uv_map", icon="GROUP_UVS")
            layout.prop(settings, "frames_folder")
            return
        layout.prop(settings, "texture_size")
        layout.prop(settings, "uv_map", icon="GROUP_UVS")
        layout.prop(settings, "smart_uv")
        layout.prop(settings, "output_folder")


# The parameters the panels above draw by hand, per mode; Advanced draws the table's others.
MODEL_PARAMETERS = {"model", "loras", "reference_strength", "ip_adapter"}  # the Model panel's
DRAWN = {
    "TEXTURE": {"prompt", "negative_prompt", "seed", "steps", "guidance_scale", "controlnet_scale", "views",
                "view_budget", "elevation", "top_view", "view_size", "complete", "noise", "attention", "scheduler",
                "sync_strength", "texture_size", "uv_map", "smart_uv", *MODEL_PARAMETERS},
    "ANIMATION": {"prompt", "negative_prompt", "seed", "steps", "guidance_scale", "controlnet_scale", "noise",
                  "background_noise", "attention", "keyframes", "momentum", "chunk", "scheduler", "sync_strength",
                  "background_sync", "background_uv", "pixel_sync", "uv_map", *MODEL_PARAMETERS},
}


class ZS_PT_advanced(_SubPanel, bpy.types.Panel):
    """Every other parameter of the mode, as the parameter table lists them: a parameter
    the table gains shows up here without a change to the panels."""

    bl_label = "Advanced"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout, settings = _settings_layout(self.layout, context)
        for name in advanced_properties(settings.mode):
            layout.prop(settings, name)


def advanced_properties(mode: str) -> list[str]:
    """The property names the Advanced panel draws in ``mode`` ("TEXTURE" / "ANIMATION")."""
    kind = properties.KIND_OF_MODE[mode]
    return [properties.property_name(parameter, kind) for parameter in properties.panel_parameters(kind)
            if parameter.name not in DRAWN[mode]]


def _settings_layout(layout, context):
    """A settings sub-panel's layout, set up: property-split rows, greyed out while a job
    runs -> (layout, the scene's ZS settings)."""
    layout.use_property_split = True
    layout.enabled = not _running()
    return layout, context.scene.zs_texturing


def _draw_shot(box, scene, settings) -> None:
    """Animation mode: frame range, camera, frame size (the scene's output size)."""
    box.prop(settings, "use_scene_range")
    row = box.row(align=True)
    if settings.use_scene_range:  # the scene's own range, edited in place
        row.prop(scene, "frame_start", text="Start")
        row.prop(scene, "frame_end", text="End")
    else:
        row.prop(settings, "anim_frame_start")
        row.prop(settings, "anim_frame_end")
    box.prop(settings, "anim_camera", icon="OUTLINER_OB_CAMERA")
    if settings.anim_camera is None:
        camera = scene.camera
        box.label(text=f"Scene camera: {camera.name}" if camera else "No scene camera: add one or pick one",
                  icon="INFO" if camera else "ERROR")
    try:
        width, height = animation.frame_size(scene)
        first, last = properties.animation_frames(settings, scene)
        box.label(text=f"{last - first + 1} frames of {width}x{height} (the scene's output size)")
    except CaptureError as exc:
        box.label(text=str(exc), icon="ERROR")


def _running() -> bool:
    job = jobs.active()
    return job is not None and job.alive


def _wrapped(layout, text: str, columns: int = 48, icon: str = "NONE") -> None:
    """Long messages (errors) as several labels: a panel does not wrap text. ``icon``
    marks the first line."""
    import textwrap

    for index, line in enumerate(textwrap.wrap(text, columns) or [""]):
        layout.label(text=line, icon=icon if index == 0 else "NONE")


lists = (ZS_UL_loras,)
classes = (ZS_PT_main, ZS_PT_model, ZS_PT_method, ZS_PT_output, ZS_PT_advanced)
