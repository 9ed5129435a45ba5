"""ZS Texturing as a Blender extension: the package Blender imports (``bl_ext.<repo>.zs_texturing``).

Nothing but the hand-over to :mod:`blender_addon`. The repository root is not a Python
package for setuptools or pytest (pyproject lists its packages explicitly and tests/ has
no ``__init__.py``), so this file is only ever imported by Blender.
"""

from .blender_addon import register, unregister

__all__ = ["register", "unregister"]
