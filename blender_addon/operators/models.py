"""The LoRA list of the Model panel: add a LoRA (a search over the server's list, or an
empty entry to type a name into when the server lists none) and remove the active one.
The list is ``scene.zs_texturing.lora_list``; the request's ``loras`` text is made from it
(:mod:`..properties`). Nothing here talks to the server: the names come from the last
Connect (:data:`..server_models.CATALOG`).
"""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty

from .. import server_models

TYPE_NAME = "<type>"  # the Add entry that adds an empty row to type a name into

# The search's current items: Blender keeps no copy of a dynamic enum's strings.
_ITEMS: list[tuple] = []


def _lora_items(_operator, context) -> list[tuple]:
    global _ITEMS
    settings = getattr(getattr(context, "scene", None), "zs_texturing", None)
    catalog = server_models.CATALOG
    items = []
    for offer in catalog.loras or ():
        problem = catalog.lora_problem(offer.name, settings.model) if settings is not None else ""
        family = f" ({server_models.family_title(offer.family)})" if offer.family else ""
        items.append((offer.name, offer.name + family, problem or offer.name, "ERROR" if problem else "NONE",
                      len(items)))
    items.append((TYPE_NAME, "Type a Name", "Add an empty entry and type the LoRA's name into it", "NONE",
                  len(items)))
    _ITEMS = items
    return _ITEMS


class ZS_OT_lora_add(bpy.types.Operator):
    """Add a LoRA from the server's list"""

    bl_idname = "zs.lora_add"
    bl_label = "Add LoRA"
    bl_options = {"REGISTER", "UNDO"}
    bl_property = "lora"

    lora: EnumProperty(name="LoRA", items=_lora_items)

    @classmethod
    def poll(cls, context):
        return getattr(context.scene, "zs_texturing", None) is not None

    def invoke(self, context, event):
        if server_models.CATALOG.loras:
            context.window_manager.invoke_search_popup(self)
            return {"RUNNING_MODAL"}
        return self.execute(context)  # nothing to search: an empty entry to type into

    def execute(self, context):
        settings = context.scene.zs_texturing
        entry = settings.lora_list.add()
        entry.name = "" if self.lora == TYPE_NAME else self.lora
        entry.weight = 1.0
        settings.lora_index = len(settings.lora_list) - 1
        return {"FINISHED"}


class ZS_OT_lora_remove(bpy.types.Operator):
    """Remove the selected LoRA from the list"""

    bl_idname = "zs.lora_remove"
    bl_label = "Remove LoRA"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        settings = getattr(context.scene, "zs_texturing", None)
        return settings is not None and 0 <= settings.lora_index < len(settings.lora_list)

    def execute(self, context):
        settings = context.scene.zs_texturing
        settings.lora_list.remove(settings.lora_index)
        settings.lora_index = max(0, min(settings.lora_index, len(settings.lora_list) - 1))
        return {"FINISHED"}


classes = (ZS_OT_lora_add, ZS_OT_lora_remove)
