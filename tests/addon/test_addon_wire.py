"""blender_addon.wire: the wire format inside the extension, without the zs_core package."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wire_loads_protocol_by_path_without_importing_zs_core():
    code = (
        "import sys, numpy as np\n"
        "from blender_addon import wire\n"
        "assert 'zs_core' not in sys.modules, sorted(m for m in sys.modules if m.startswith('zs_core'))\n"
        "p = wire.Passes(depth=np.ones((1, 8, 8), np.float32), mask=np.ones((1, 8, 8), bool)).validate()\n"
        "back = wire.Passes.load(p.to_npz_bytes())\n"
        "assert back.depth.shape == (1, 8, 8)\n"
        "assert wire.Request(prompt='x').validate().prompt == 'x'\n"
        "try:\n"
        "    wire.Request(steps=0).validate()\n"
        "except wire.ProtocolError as exc:\n"
        "    assert exc.field == 'steps'\n"
        "else:\n"
        "    raise AssertionError('no ProtocolError')\n"
        "print('ok')\n"
    )
    env = dict(os.environ, BLENDER_USER_RESOURCES=tempfile.mkdtemp(prefix="zs-blender-"))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
