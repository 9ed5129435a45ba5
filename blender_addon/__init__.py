"""The Blender extension: bpy, the standard library and numpy only (see DESIGN.md)."""
