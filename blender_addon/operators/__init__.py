"""The add-on's operators (``zs.*``): build rig, generate (modal), cancel, apply a texture,
load animation frames, server, server set-up, ZS passes on / off, the LoRA list.

``classes`` gathers every module's classes in registration order (PropertyGroups used
by operator properties come first: apply.py lists ZS_ObjectUV before its operator).
"""

from __future__ import annotations

from . import animation, apply, cancel, generate, models, passes, rig, server, server_setup

classes = (*apply.classes, *animation.classes, *rig.classes, *generate.classes, *cancel.classes,
           *server.classes, *server_setup.classes, *passes.classes, *models.classes)
