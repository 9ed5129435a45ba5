"""The wire format (``zs_core/protocol.py``), the pass decoder
(``zs_core/render_passes.py``) and the camera coverage (``zs_core/coverage.py``) as seen
from inside the extension.

The add-on never imports the ``zs_core`` package (its ``__init__`` and siblings belong to
the server side); it loads these stdlib + numpy modules by file path instead. In the
repository and in the built extension they sit in ``<root>/zs_core/`` next to
``<root>/blender_addon/``; vendored copies ``blender_addon/_<name>.py`` are accepted too.
"""

from __future__ import annotations

import sys
from importlib import util
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _load(name: str):
    """Load ``zs_core/<name>.py`` once under a private module name and return the module."""
    module_name = f"_zs_texturing_wire_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    candidates = (_HERE / f"_{name}.py", _HERE.parent / "zs_core" / f"{name}.py")
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise ImportError(f"ZS Texturing: {name}.py not found; looked in " + ", ".join(str(p) for p in candidates))
    spec = util.spec_from_file_location(module_name, path)
    module = util.module_from_spec(spec)
    # dataclasses resolve annotations through sys.modules: register before executing.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


protocol = _load("protocol")
render_passes = _load("render_passes")
coverage = _load("coverage")
Passes = protocol.Passes
Request = protocol.Request
ProtocolError = protocol.ProtocolError
PROTOCOL_VERSION = protocol.PROTOCOL_VERSION

__all__ = ["Passes", "Request", "ProtocolError", "PROTOCOL_VERSION", "protocol", "render_passes", "coverage"]
