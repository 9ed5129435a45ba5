"""The wire format (``zs_core/protocol.py``) as seen from inside the extension.

The add-on never imports the ``zs_core`` package (its ``__init__`` and siblings belong to
the server side); it loads the single stdlib + numpy module ``protocol.py`` by file path
instead. In the repository and in the built extension the file sits at
``<root>/zs_core/protocol.py`` next to ``<root>/blender_addon/``; a vendored copy
``blender_addon/_protocol.py`` is accepted as well.
"""

from __future__ import annotations

import sys
from importlib import util
from pathlib import Path

_MODULE_NAME = "_zs_texturing_wire_protocol"
_CANDIDATES = (
    Path(__file__).resolve().parent / "_protocol.py",
    Path(__file__).resolve().parents[1] / "zs_core" / "protocol.py",
)


def _load():
    """Load protocol.py once under a private module name and return the module."""
    if _MODULE_NAME in sys.modules:
        return sys.modules[_MODULE_NAME]
    path = next((p for p in _CANDIDATES if p.is_file()), None)
    if path is None:
        raise ImportError("ZS Texturing: protocol.py not found; looked in "
                          + ", ".join(str(p) for p in _CANDIDATES))
    spec = util.spec_from_file_location(_MODULE_NAME, path)
    module = util.module_from_spec(spec)
    # dataclasses resolve annotations through sys.modules: register before executing.
    sys.modules[_MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_MODULE_NAME]
        raise
    return module


protocol = _load()
Passes = protocol.Passes
Request = protocol.Request
ProtocolError = protocol.ProtocolError
PROTOCOL_VERSION = protocol.PROTOCOL_VERSION

__all__ = ["Passes", "Request", "ProtocolError", "PROTOCOL_VERSION", "protocol"]
