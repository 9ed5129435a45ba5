"""The ZS Passes panel in the Properties editor's View Layer tab (see :mod:`.zs_passes`)."""

from __future__ import annotations

import bpy

from . import render_hook, zs_passes


class ZS_PT_view_layer_passes(bpy.types.Panel):
    bl_label = "ZS Passes"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "view_layer"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        scene, view_layer = context.scene, context.view_layer
        settings = view_layer.zs_passes
        if not settings.enabled:
            layout.label(text="Renders can also write what ZS Texturing needs to restyle them")
            layout.operator("zs.enable_passes", icon="RENDERLAYERS")
            return
        layout.operator("zs.disable_passes", icon="X")
        layout.prop(settings, "folder")
        layout.prop(settings, "target_pass_index")
        layout.label(text=f"Writes {bpy.path.basename(zs_passes.sequence_pattern(scene, view_layer))} + .json")
        for problem in zs_passes.problems(scene, view_layer):
            _wrapped(layout, problem, "ERROR")
        if scene.render.engine == "CYCLES" and not zs_passes.exact_pixels(scene):
            _wrapped(layout, f"Pixel filter {scene.cycles.filter_width:.2f} px: edge pixels blend; "
                             f"{zs_passes.EXACT_FILTER_WIDTH} px matches the add-on's own capture", "INFO")
        layout.prop(settings, "restyle_after_render")
        if render_hook.STATUS["text"]:
            _wrapped(layout, render_hook.STATUS["text"], "INFO")


def _wrapped(layout, text: str, icon: str, columns: int = 60) -> None:
    import textwrap

    for index, line in enumerate(textwrap.wrap(text, columns) or [""]):
        layout.label(text=line, icon=icon if index == 0 else "BLANK1")


classes = (ZS_PT_view_layer_passes,)
