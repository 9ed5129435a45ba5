"""The scene's ZS settings (``scene.zs_texturing``): what to generate, from which views,
with which method, where to put it, and the state of the running job for the panel.

Choices (noise, attention, scheduler) come from the wire format (``zs_core/protocol.py``
loaded through :mod:`.wire`), so the panel never offers a value the server refuses.
:func:`build_request` turns the settings into a validated :class:`wire.Request`.
Imports: bpy and the standard library only.
"""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from .wire import Request, protocol

# One line per choice for the tooltips; a mode the protocol gains later still shows up.
_NOISE_HELP = {
    "iid": "Independent noise per view",
    "fixed": "The same noise in every view",
    "mixed": "Shared plus individual noise (PYoCo mixed)",
    "progressive": "Each view's noise builds on the previous one (PYoCo progressive)",
    "dependency": "Correlated noise between consecutive views (ZS2), for animation",
    "surface": "One noise texture on the surface: the same point gets the same noise in every view",
}
_ATTENTION_HELP = {
    "self": "Stock self-attention: every view on its own",
    "extended": "Every view attends to all views (most consistent, slowest)",
    "neighbors": "Each view attends to its ring neighbours and a reference view",
    "keyframes": "Views attend to key views (first, previous, middle)",
    "tma": "Temporal momentum attention (ZS2), for animation",
}
_SCHEDULER_HELP = {"ddim": "DDIM", "dpmpp": "DPM++ multistep", "unipc": "UniPC"}


def _items(values, help_text):
    return [(value, value.replace("_", " ").title() if value != "tma" else "TMA",
             help_text.get(value, value)) for value in values]


NOISE_ITEMS = _items(protocol.NOISE_MODES, _NOISE_HELP)
ATTENTION_ITEMS = _items(protocol.ATTENTION_MODES, _ATTENTION_HELP)
SCHEDULER_ITEMS = [(value, _SCHEDULER_HELP.get(value, value), _SCHEDULER_HELP.get(value, value))
                   for value in protocol.SCHEDULERS]
VIEW_SOURCES = [
    ("CAMERAS", "Selected Cameras", "Render from the selected camera objects"),
    ("RIG", "Orbit Rig", "Render from an orbit rig around the objects (built when missing)"),
]


class ZS_Settings(bpy.types.PropertyGroup):
    # What to generate.
    prompt: StringProperty(name="Prompt", default="", description="What the texture should look like")
    negative_prompt: StringProperty(name="Negative Prompt", default="blurry, low quality",
                                    description="What the texture should not look like")
    seed: IntProperty(name="Seed", default=0, min=0, description="Same seed, same settings: same texture")
    steps: IntProperty(name="Steps", default=20, min=1, max=1000, soft_max=100,
                       description="Denoising steps (more: slower, finer)")
    guidance: FloatProperty(name="Guidance", default=7.5, min=0.0, max=50.0, soft_max=20.0,
                            description="Classifier-free guidance scale: how strictly to follow the prompt")
    controlnet_scale: FloatProperty(name="ControlNet Strength", default=1.0, min=0.0, max=5.0, soft_max=2.0,
                                    description="How strongly the depth of each view steers the image")

    # Views.
    views_source: EnumProperty(name="Views", items=VIEW_SOURCES, default="RIG")
    rig_count: IntProperty(name="Cameras", default=6, min=1, max=64, soft_max=16,
                           description="Cameras on the orbit ring")
    rig_elevation: FloatProperty(name="Elevation", default=20.0, min=-89.0, max=89.0,
                                 description="Height of the ring above the objects' centre, in degrees")
    rig_top_view: BoolProperty(name="Top View", default=False, description="Add a camera looking straight down")
    view_resolution: IntProperty(name="View Size", default=512, min=64, max=2048, step=8,
                                 description="Width and height of each rendered view in pixels (a multiple of 8)")

    # Method.
    noise: EnumProperty(name="Noise", items=NOISE_ITEMS, default="surface",
                        description="How the initial noise of the views is drawn")
    attention: EnumProperty(name="Attention", items=ATTENTION_ITEMS, default="extended",
                            description="Which views each view looks at while denoising")
    scheduler: EnumProperty(name="Scheduler", items=SCHEDULER_ITEMS, default="ddim")
    use_sync: BoolProperty(name="UV Sync", default=True,
                           description="Synchronise the views through the UV texture at every step")
    sync_strength: FloatProperty(name="Sync Strength", default=1.0, min=0.0, max=1.0, subtype="FACTOR",
                                 description="1: views fully share the texture; lower lets them differ")

    # Output.
    texture_size: IntProperty(name="Texture Size", default=1024, min=16, max=8192, soft_max=4096,
                              description="Side of the square texture in texels")
    uv_map: StringProperty(name="UV Map", default="",
                           description="UV map to texture (empty: each object's active render UV map)")
    smart_uv: BoolProperty(name="Smart UV Project", default=False,
                           description="Objects without a UV map get a new Smart UV Project map")
    output_folder: StringProperty(name="Output", default="//zs_textures/", subtype="DIR_PATH",
                                  description="Folder for the downloaded results (// is next to the .blend; "
                                              "an unsaved file uses a temporary folder)")

    # The last job, for the panel (written by the Generate operator). Whether a job is
    # running is not stored here: a saved file would keep claiming it (see operators.jobs).
    status: StringProperty(name="Status", default="")
    progress: FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    job_id: StringProperty(name="Job", default="")


def build_request(settings) -> Request:
    """The scene settings -> a validated texture :class:`Request` (raises ProtocolError
    naming the field). ``settings`` is a ZS_Settings (or anything with its attributes)."""
    return Request(
        prompt=settings.prompt,
        negative_prompt=settings.negative_prompt,
        kind="texture",
        seed=int(settings.seed),
        steps=int(settings.steps),
        guidance_scale=float(settings.guidance),
        scheduler=settings.scheduler,
        controlnet_scale=float(settings.controlnet_scale),
        noise=settings.noise,
        attention=settings.attention,
        sync_strength=float(settings.sync_strength) if settings.use_sync else 0.0,
        texture_size=int(settings.texture_size),
    ).validate()


classes = (ZS_Settings,)
