"""The ``zs`` command: the application that wires the sampling core (``zs_core``), the
server (``server``) and Blender (``blender_addon``, through Blender's Python module) together.

Nothing below it imports this package. Heavy imports (torch, bpy, uvicorn) happen inside
the sub-commands, so ``zs --help`` is instant.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
