"""The scene's ZS settings (``scene.zs_texturing``): what to generate (a texture, or an
animation re-styled frame by frame), from which views or frames, with which method, where
to put it, and the state of the running job for the panel.

Choices (noise, attention, scheduler, background noise, anchor policy) come from the wire
format (``zs_core/protocol.py`` loaded through :mod:`.wire`), so the panel never offers a
value the server refuses. :func:`build_request` turns the settings into a validated
:class:`wire.Request` of the mode's kind. Imports: bpy, the standard library and the add-on's own modules.
"""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

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
_BACKGROUND_HELP = {
    "auto": "Warped along the motion vectors (the vector pass)",
    "iid": "New noise every frame (flickers)",
    "fixed": "The same noise every frame (sticks to the screen)",
    "mixed": "Shared plus individual noise per frame (PYoCo mixed)",
    "progressive": "Each frame's noise builds on the previous one (PYoCo progressive)",
    "dependency": "Correlated noise between consecutive frames (ZS2)",
    "warped": "Carried along the motion vectors, like the surface noise",
}
_KEYFRAME_HELP = {
    "first": "Every frame attends to the first frame",
    "first_previous": "Every frame attends to the first and the previous frame",
    "middle": "Every frame attends to the middle frame",
}


def _items(values, help_text):
    return [(value, value.replace("_", " ").title() if value != "tma" else "TMA",
             help_text.get(value, value)) for value in values]


NOISE_ITEMS = _items(protocol.NOISE_MODES, _NOISE_HELP)
ATTENTION_ITEMS = _items(protocol.ATTENTION_MODES, _ATTENTION_HELP)
SCHEDULER_ITEMS = [(value, _SCHEDULER_HELP.get(value, value), _SCHEDULER_HELP.get(value, value))
                   for value in protocol.SCHEDULERS]
BACKGROUND_NOISE_ITEMS = _items(protocol.BACKGROUND_NOISE_MODES, _BACKGROUND_HELP)
KEYFRAME_ITEMS = _items(protocol.KEYFRAME_POLICIES, _KEYFRAME_HELP)
_ANIMATION = protocol.ANIMATION_DEFAULTS
ANIMATION_ATTENTION_ITEMS = [item for item in ATTENTION_ITEMS if item[0] in protocol.ANIMATION_ATTENTION]
MODES = [
    ("TEXTURE", "Texture", "Generate a UV texture for the selected objects from several views"),
    ("ANIMATION", "Animation", "Re-style the camera's shot over a frame range into consistent frames"),
]
VIEW_SOURCES = [
    ("CAMERAS", "Selected Cameras", "Render from the selected camera objects"),
    ("RIG", "Orbit Rig", "Render from an orbit rig around the objects (built when missing)"),
]


def _is_camera(_settings, obj) -> bool:
    return obj.type == "CAMERA"


class ZS_Settings(bpy.types.PropertyGroup):
    mode: EnumProperty(name="Mode", items=MODES, default="TEXTURE",
                       description="Texture the objects, or re-style an animation")

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

    # Animation: the frames and camera, the cross-frame method and where the frames go.
    use_scene_range: BoolProperty(name="Scene Frame Range", default=True,
                                  description="Render the scene's frame range (off: the range below)")
    anim_frame_start: IntProperty(name="Start", default=1, min=0, description="First frame to render")
    anim_frame_end: IntProperty(name="End", default=48, min=0, description="Last frame to render")
    anim_camera: PointerProperty(name="Camera", type=bpy.types.Object, poll=_is_camera,
                                 description="Camera whose shot is re-styled (empty: the scene's camera)")
    anim_attention: EnumProperty(name="Attention", items=ANIMATION_ATTENTION_ITEMS,
                                 default=_ANIMATION["attention"],
                                 description="Which frames each frame looks at while denoising")
    keyframes: EnumProperty(name="Anchor Frames", items=KEYFRAME_ITEMS, default="first",
                            description="The frames Keyframes attention attends to")
    momentum: FloatProperty(name="Momentum", default=0.5, min=0.0, max=1.0, subtype="FACTOR",
                            description="TMA: 0 is plain self-attention, 1 attends to the first frame only")
    chunk: IntProperty(name="Chunk Size", default=16, min=1, max=10000, soft_max=64,
                       description="Frames per model batch (fewer: less memory; the result is the same)")
    background_noise: EnumProperty(name="Background Noise", items=BACKGROUND_NOISE_ITEMS, default="auto",
                                   description="How the noise off the target objects moves over the frames")
    anim_sync_strength: FloatProperty(name="Sync Strength", default=_ANIMATION["sync_strength"], min=0.0, max=1.0,
                                      subtype="FACTOR",
                                      description="Fuse the objects' frames through their UVs at every step "
                                                  "(below 1 lets lighting change; 0: off)")
    background_sync: FloatProperty(name="Background Sync", default=_ANIMATION["background_sync"], min=0.0, max=1.0,
                                   subtype="FACTOR",
                                   description="Carry the background along the motion vectors into the next "
                                               "frame at every step (0: off)")
    background_uv: BoolProperty(name="Background Through UV", default=False,
                                description="Sync the other UV-mapped meshes (floor, walls, props) through "
                                            "their UV maps instead of along the motion vectors")
    pixel_sync: FloatProperty(name="Pixel Sync", default=_ANIMATION["pixel_sync"], min=0.0, max=1.0, subtype="FACTOR",
                              description="Carry the finished frames into the next one in pixels (0: off)")
    frames_folder: StringProperty(name="Frames", default="//zs_frames/", subtype="DIR_PATH",
                                  description="Folder for the generated frames (// is next to the .blend; an "
                                              "unsaved file uses a temporary folder)")

    # The last job, for the panel (written by the Generate operator). Whether a job is
    # running is not stored here: a saved file would keep claiming it (see operators.jobs).
    status: StringProperty(name="Status", default="")
    progress: FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    job_id: StringProperty(name="Job", default="")


def build_request(settings) -> Request:
    """The scene settings -> a validated :class:`Request` of the mode's kind (raises
    ProtocolError naming the field). ``settings`` is a ZS_Settings (or anything with its
    attributes)."""
    if getattr(settings, "mode", "TEXTURE") == "ANIMATION":
        return build_animation_request(settings)
    return Request(
        kind="texture",
        **_sampling_fields(settings),
        attention=settings.attention,
        sync_strength=float(settings.sync_strength) if settings.use_sync else 0.0,
        texture_size=int(settings.texture_size),
    ).validate()


def _sampling_fields(settings) -> dict:
    """The request fields both modes share (prompt, seed, steps, guidance, noise ...)."""
    return dict(
        prompt=settings.prompt,
        negative_prompt=settings.negative_prompt,
        seed=int(settings.seed),
        steps=int(settings.steps),
        guidance_scale=float(settings.guidance),
        scheduler=settings.scheduler,
        controlnet_scale=float(settings.controlnet_scale),
        noise=settings.noise,
    )


def build_animation_request(settings) -> Request:
    """The scene settings -> a validated animation :class:`Request` (the Attention choices
    are the animation ones already)."""
    return Request(
        kind="animation",
        **_sampling_fields(settings),
        background_noise=settings.background_noise,
        attention=settings.anim_attention,
        keyframes=settings.keyframes,
        momentum=float(settings.momentum),
        chunk=int(settings.chunk),
        sync_strength=float(settings.anim_sync_strength),
        background_sync=float(settings.background_sync),
        pixel_sync=float(settings.pixel_sync),
        background_uv=bool(settings.background_uv),
    ).validate()


def animation_frames(settings, scene) -> tuple[int, int]:
    """(first, last) frame to render: the scene's range, or the settings' own."""
    if settings.use_scene_range:
        return scene.frame_start, scene.frame_end
    return settings.anim_frame_start, settings.anim_frame_end


classes = (ZS_Settings,)
