"""(T) The multi-view / multi-frame denoising pipeline, and texture jobs' use of it.

Stages, in the order of :func:`sample` (the same order as diffusers' ControlNet
pipeline, so with ``iid`` noise, ``self`` attention and no hooks the result equals
``StableDiffusionControlNetPipeline`` for the same latents):

    check -> encode prompt + control maps (:func:`condition`) -> initial latents ->
    scheduler -> loop -> decode (the last four: :func:`denoise`)

Texture jobs (:func:`sample`) and animation jobs (:func:`zs_core.animation.sample_frames`)
run the same stages and differ in their checks, starting noise, step hooks and
:class:`NoisePredictor`: how the latents meet the model each step. Here
:class:`WholeBatch` runs ControlNet and UNet on all views at once (both CFG halves in one
batch, the views as the batch or tiled into one grid image); the animation's predictor
goes chunk by chunk. After the prediction every step hook (e.g. UV synchronisation) may
replace the guided noise prediction before the scheduler step. The predictor's attention
processor is installed on UNet and ControlNet for the duration of the loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    TCDScheduler,
    UniPCMultistepScheduler,
)

from . import attention, families, memory, noise, preview, reference, sync
from .models import Components
from .protocol import ANIMATION, Passes, ProtocolError, Request
from .step_noise import drawn_from as step_noise_from
from .step_noise import step_seed
from .x0_epsilon import predicted_x0

BACKGROUND_DEPTH = 1e9  # depth at or above this is "nothing was hit"
PREVIEW_KEY = "latent_to_rgb"


class Cancelled(Exception):
    """The job was cancelled between two steps."""


@dataclass
class StepState:
    """What a step hook sees. Tensors are in view space: ``(V, 4, h, w)``."""

    index: int
    total: int
    timestep: torch.Tensor
    latents: torch.Tensor
    noise_pred: torch.Tensor
    scheduler: object


class StepHook(Protocol):
    def __call__(self, state: StepState) -> torch.Tensor | None:
        """Return a replacement guided noise prediction, or None to keep it."""


@dataclass
class StepProgress:
    step: int  # steps done, 1..total
    total: int
    preview: np.ndarray  # (h', w', 3) uint8: predicted x0 of all views, tiled


@dataclass
class SampleResult:
    images: np.ndarray  # (V, H, W, 3) float32 in [0, 1]
    latents: torch.Tensor  # (V, 4, H/8, W/8) final latents (float32, CPU)
    initial_noise: torch.Tensor  # (V, 4, H/8, W/8) unscaled N(0, 1) starting noise


# One per name of protocol.SCHEDULERS (tests/core/test_mode_names.py holds them equal).
# x0 and epsilon convert in each one's own parameterisation (x0_epsilon.py), which step
# hooks (UV sync) rely on; the stochastic ones take their per-step noise from the job's
# noise model (step_noise.py).
SCHEDULERS: dict[str, Callable[[dict], object]] = {
    "ddim": lambda config: DDIMScheduler.from_config(config),
    "dpmpp": lambda config: DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++"),
    "dpmpp_2m_karras": lambda config: DPMSolverMultistepScheduler.from_config(
        config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True),
    "unipc": lambda config: UniPCMultistepScheduler.from_config(config),
    "euler": lambda config: EulerDiscreteScheduler.from_config(config),
    "euler_a": lambda config: EulerAncestralDiscreteScheduler.from_config(config),
    "lcm": lambda config: LCMScheduler.from_config(config),
    "tcd": lambda config: TCDScheduler.from_config(config),
}


def make_scheduler(components: Components, name: str):
    if name not in SCHEDULERS:
        raise ProtocolError("scheduler", f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name](components.scheduler.config)


# ---------------------------------------------------------------- stages


def check_request_and_passes(components: Components, request: Request, passes: Passes) -> None:
    """The checks every job kind shares: the request and the passes each valid, the image
    size a multiple of the VAE factor, the UV pass there when anything reads it; the
    ProtocolError names the field (``uv`` with the first use, e.g. surface noise)."""
    request.validate()
    passes.validate()
    factor = components.vae_scale_factor
    if passes.height % factor or passes.width % factor:
        raise ProtocolError("depth", f"height and width must be multiples of {factor}, got "
                                     f"{passes.height}x{passes.width}")
    uses = request.uv_pass_uses()
    if uses and passes.uv is None:
        shape = "(F, H, W, 2) of every frame" if request.kind == ANIMATION else "(V, H, W, 2)"
        raise ProtocolError("uv", f"{uses[0]} needs the UV pass {shape}")


def check_inputs(components: Components, request: Request, passes: Passes) -> None:
    """Everything :func:`sample` needs, checked before any work."""
    check_request_and_passes(components, request, passes)
    if request.attention == "neighbors" and request.reference_view >= passes.views:
        raise ProtocolError("reference_view", f"{request.reference_view} is not a view index (0..{passes.views - 1})")
    if request.layout == "grid" and request.attention != "self":
        raise ProtocolError("attention", "the grid layout tiles all views into one image; use attention 'self'")


@torch.inference_mode()
def encode_prompt(components: Components, prompt: str, negative_prompt: str, guidance: bool,
                  size: tuple[int, int]) -> tuple[torch.Tensor, dict]:
    """The prompt as the model's family conditions on it, one row per CFG group ([negative,
    prompt] with guidance, else [prompt]): text embeddings ``(G, 77, D)`` and the added
    conditioning for UNet and ControlNet (SD 1.5: none; SDXL: ``text_embeds (G, P)``,
    ``time_ids (G, 6)`` naming ``size`` = (height, width) of the image the UNet sees)."""
    family = families.get(components.family)
    return family.encode_prompt(components, prompt, negative_prompt, guidance, size)


def control_images(depth: np.ndarray) -> torch.Tensor:
    """Depth ``(V, H, W)`` -> ControlNet input ``(V, 3, H, W)`` float32 in [0, 1].

    One near/far for all views of the job, so the same surface gets the same brightness
    in every view; near is bright (the depth ControlNets were trained on inverse depth
    maps), background is 0.
    """
    depth = np.asarray(depth, dtype=np.float32)
    hit = np.isfinite(depth) & (depth < BACKGROUND_DEPTH)
    if not hit.any():
        raise ProtocolError("depth", "no pixel of any view hits geometry")
    near, far = float(depth[hit].min()), float(depth[hit].max())
    span = max(far - near, 1e-6)
    # Keep the farthest surface slightly above the black background.
    value = np.where(hit, 0.1 + 0.9 * (far - np.where(hit, depth, far)) / span, 0.0)
    control = torch.from_numpy(value.astype(np.float32))
    return control.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


@dataclass
class ModelBatch:
    """The conditioning of one model call, in the call's batch order [uncond..., cond...].

    embeds ``(B, 77, D)``; ``added``: the model family's extra conditioning, given to UNet
    and ControlNet as ``added_cond_kwargs`` (SDXL: text_embeds ``(B, 1280)``, time_ids
    ``(B, 6)``); ``unet_added``: given to the UNet only (IP-Adapter: image_embeds, a list
    of ``(B, n, D)``)."""

    embeds: torch.Tensor
    added: dict = dataclasses.field(default_factory=dict)
    unet_added: dict = dataclasses.field(default_factory=dict)

    def unet_kwargs(self) -> dict:
        merged = {**self.added, **self.unet_added}
        return dict(added_cond_kwargs=merged) if merged else {}

    def controlnet_kwargs(self) -> dict:
        return dict(added_cond_kwargs=self.added) if self.added else {}


@dataclass
class Conditioning:
    """What the model is conditioned on, prepared once per job (:func:`condition`).

    embeds ``(G, 77, D)``: the text embeddings, [uncond, cond] with classifier-free
    guidance (G = 2 when ``guidance_scale`` > 1), else [cond]; a model call repeats them per
    view. ``added`` / ``unet_added``: the extra conditioning (see :class:`ModelBatch`), one
    row per CFG group. control ``(V, 3, H, W)`` float32 on the CPU: the ControlNet's depth
    images.
    """

    embeds: torch.Tensor
    control: torch.Tensor
    guidance_scale: float
    added: dict = dataclasses.field(default_factory=dict)
    unet_added: dict = dataclasses.field(default_factory=dict)
    # More ControlNets beside the depth one, each (ControlNet, its images (V, 3, H, W)
    # float32 on the CPU, its scale relative to the depth one's): their residuals add up,
    # as in diffusers' MultiControlNetModel (the completion views' inpainting ControlNet).
    extra_control: list = dataclasses.field(default_factory=list)

    def per_group(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor (n, ...)`` once per CFG group -> ``(G*n, ...)``, in the embeddings' order."""
        return torch.cat([tensor] * len(self.embeds))

    def batch(self, views: int) -> ModelBatch:
        """The conditioning of a model call on ``views`` views (or grid images) per group."""
        return ModelBatch(_repeat_rows(self.embeds, views), _repeat_rows(self.added, views),
                          _repeat_rows(self.unet_added, views))


def _repeat_rows(value, views: int):
    """Each row of a tensor (or of the tensors in a dict / list) repeated ``views`` times."""
    if isinstance(value, dict):
        return {key: _repeat_rows(item, views) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_repeat_rows(item, views) for item in value]
    return value.repeat_interleave(views, dim=0)


def model_image_size(request: Request, passes: Passes) -> tuple[int, int]:
    """(height, width) of one image the UNet denoises: a view, or with the grid layout the
    whole grid (so SDXL's size ids name the image it actually generates, as diffusers'
    pipeline would for that image)."""
    if request.layout == "grid":
        grid = GridLayout(passes.views)
        return grid.rows * passes.height, grid.cols * passes.width
    return passes.height, passes.width


def condition(components: Components, request: Request, passes: Passes) -> Conditioning:
    """Encode the prompt (one embedding per CFG half, with the family's added conditioning)
    and make the control images (one near/far for the whole job, so a surface keeps its
    brightness in every view or chunk)."""
    guidance = request.guidance_scale > 1.0
    embeds, added = encode_prompt(components, request.prompt, request.negative_prompt, guidance,
                                  model_image_size(request, passes))
    unet_added = reference.unet_conditioning(components, request, passes, guidance)
    return Conditioning(embeds, control_images(passes.depth), request.guidance_scale, added, unet_added)


def initial_noise(request: Request, passes: Passes, channels: int, factor: int) -> torch.Tensor:
    """Unit-variance starting noise ``(V, C, H/f, W/f)`` for the request's noise model."""
    shape = (channels, passes.height // factor, passes.width // factor)
    if request.noise == "surface":
        return noise.surface(passes.uv, passes.mask, request.seed, channels=channels, factor=factor)
    params = {}
    if request.noise in ("mixed", "progressive"):
        params["alpha"] = request.noise_alpha
    if request.noise == "dependency":
        params["lam"] = request.noise_lambda
    return noise.make(request.noise, passes.views, shape, request.seed, **params)


def attention_params(request: Request, views: int) -> dict:
    if request.attention == "neighbors":
        return dict(views=views, reference=request.reference_view, reference_weight=request.reference_weight)
    if request.attention == "keyframes":
        return dict(views=views, policy=request.keyframes)
    if request.attention == "tma":
        return dict(views=views, momentum=request.momentum)
    return dict(views=views)


def controlnet_keep(index: int, total: int, start: float, end: float) -> float:
    """1 inside the ControlNet guidance window (fractions of the steps), else 0."""
    return 1.0 - float(index / total < start or (index + 1) / total > end)


@torch.inference_mode()
def decode(components: Components, latents: torch.Tensor, chunk: int = 4) -> np.ndarray:
    """Latents ``(V, 4, h, w)`` -> images ``(V, H, W, 3)`` float32 in [0, 1]."""
    images = []
    scale = components.vae.config.scaling_factor
    for start in range(0, latents.shape[0], chunk):
        # The VAE's own dtype: fp32 when its config asks to be upcast (models.vae_dtype).
        part = latents[start:start + chunk].to(components.device, next(components.vae.parameters()).dtype) / scale
        image = components.vae.decode(part, return_dict=False)[0]
        images.append((image.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(images)


# ---------------------------------------------------------------- layout


class ViewLayout:
    """Views are the batch: model space == view space."""

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def to_views(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def model_views(self) -> int | None:
        return None


class GridLayout(ViewLayout):
    """All V views tiled into one image of ``rows x cols`` cells (padded with empty cells).

    Tiling is done per CFG group: ``(G*V, C, h, w)`` <-> ``(G, C, rows*h, cols*w)``.
    """

    def __init__(self, views: int):
        self.views = views
        self.cols = int(np.ceil(np.sqrt(views)))
        self.rows = int(np.ceil(views / self.cols))

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        groups = x.shape[0] // self.views
        _, channels, height, width = x.shape
        cells = self.rows * self.cols
        x = x.reshape(groups, self.views, channels, height, width)
        if cells > self.views:
            pad = x.new_zeros(groups, cells - self.views, channels, height, width)
            x = torch.cat([x, pad], dim=1)
        x = x.reshape(groups, self.rows, self.cols, channels, height, width)
        return x.permute(0, 3, 1, 4, 2, 5).reshape(groups, channels, self.rows * height, self.cols * width)

    def to_views(self, x: torch.Tensor) -> torch.Tensor:
        groups, channels, full_height, full_width = x.shape
        height, width = full_height // self.rows, full_width // self.cols
        x = x.reshape(groups, channels, self.rows, height, self.cols, width).permute(0, 2, 4, 1, 3, 5)
        x = x.reshape(groups, self.rows * self.cols, channels, height, width)[:, :self.views]
        return x.reshape(groups * self.views, channels, height, width)

    @property
    def model_views(self) -> int | None:
        return 1


# ---------------------------------------------------------------- the loop


def guided_noise_pred(components: Components, scheduler, latents: torch.Tensor, timestep, batch: ModelBatch,
                      control: torch.Tensor, scale: float, guidance_scale: float,
                      layout: ViewLayout | None = None, extra: Sequence[tuple] = ()) -> torch.Tensor:
    """Guided noise prediction ``(V, 4, h, w)`` for ``latents (V, 4, h, w)``: ControlNet and
    UNet on one batch [uncond views..., cond views...] (cond only when ``guidance_scale``
    <= 1). ``batch`` (text and extra conditioning) and ``control`` (control images) are that
    batch's, already in the ``layout``'s model shape (the grid tiles views into one image).
    ``extra``: more ControlNets, each (ControlNet, its control images in the model shape,
    its scale relative to ``scale``); their residuals add to the depth ControlNet's."""
    layout = layout or ViewLayout()
    groups = 2 if guidance_scale > 1.0 else 1
    model_input = layout.to_model(scheduler.scale_model_input(torch.cat([latents] * groups), timestep))
    down_residuals, mid_residual = components.controlnet(
        model_input, timestep, encoder_hidden_states=batch.embeds, controlnet_cond=control,
        conditioning_scale=scale, guess_mode=False, return_dict=False, **batch.controlnet_kwargs(),
    )
    for controlnet, images, relative in extra:
        down, mid = controlnet(model_input, timestep, encoder_hidden_states=batch.embeds, controlnet_cond=images,
                               conditioning_scale=scale * relative, guess_mode=False, return_dict=False,
                               **batch.controlnet_kwargs())
        down_residuals = [total + more for total, more in zip(down_residuals, down)]
        mid_residual = mid_residual + mid
    noise_pred = components.unet(
        model_input, timestep, encoder_hidden_states=batch.embeds,
        down_block_additional_residuals=down_residuals,
        mid_block_additional_residual=mid_residual, return_dict=False, **batch.unet_kwargs(),
    )[0]
    noise_pred = layout.to_views(noise_pred)
    if groups == 2:
        uncond, cond = noise_pred.chunk(2)
        noise_pred = uncond + guidance_scale * (cond - uncond)
    return noise_pred


def finish_step(components: Components, scheduler, hooks: Sequence[StepHook], index: int, latents: torch.Tensor,
                noise_pred: torch.Tensor, progress: Callable[[StepProgress], None] | None,
                shown: Sequence[int] | slice = slice(None),
                step_noise: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
    """The rest of denoising step ``index``: the hooks (each may replace the noise
    prediction), the scheduler step and the progress report with a preview of the views
    ``shown`` -> the next latents ``(V, 4, h, w)``. A stochastic scheduler's fresh noise
    is ``step_noise()`` (unit variance, shaped as the latents) when given."""
    timesteps = scheduler.timesteps
    timestep = timesteps[index]
    for hook in hooks:
        replaced = hook(StepState(index, len(timesteps), timestep, latents, noise_pred, scheduler))
        if replaced is not None:
            noise_pred = replaced
    if progress is not None:
        if PREVIEW_KEY not in components.extras:  # fitted once per model
            components.extras[PREVIEW_KEY] = preview.fit_latent_to_rgb(components.vae)
        x0 = predicted_x0(scheduler, latents[shown], noise_pred[shown], timestep)
        image = preview.latents_to_rgb(x0 / components.vae.config.scaling_factor, components.extras[PREVIEW_KEY])
    with step_noise_from(scheduler, step_noise) if step_noise is not None else contextlib.nullcontext():
        latents = scheduler.step(noise_pred, timestep, latents, return_dict=False)[0]
    if progress is not None:
        progress(StepProgress(step=index + 1, total=len(timesteps), preview=image))
    return latents


class NoisePredictor(Protocol):
    """How one job's latents meet the model at every step of :func:`denoise`.

    ``processor``: the self-attention processor installed on UNet and ControlNet for the
    loop. ``spans``: view ranges ``(start, stop)``, one guided model call each, in call
    order, together covering every view once; cancel is polled before each call.
    """

    processor: object
    spans: Sequence[tuple[int, int]]

    def where(self, index: int, total: int, span: int) -> str:
        """Where a cancel before call ``span`` of step ``index`` stops (for the message)."""

    def __call__(self, scheduler, index: int, span: int, timestep, latents: torch.Tensor,
                 scale: float) -> torch.Tensor:
        """The guided noise prediction ``(n, 4, h, w)`` of ``spans[span]``'s latents
        ``(n, 4, h, w)`` at step ``index``, with ControlNet scale ``scale``."""


class WholeBatch:
    """Texture jobs: every step, all views in one guided call (:func:`guided_noise_pred`),
    laid out by the request's ``layout``, with its cross-view ``attention``."""

    def __init__(self, components: Components, request: Request, conditioning: Conditioning):
        views = len(conditioning.control)
        self.components, self.guidance_scale = components, conditioning.guidance_scale
        self.layout = GridLayout(views) if request.layout == "grid" else ViewLayout()
        model_views = self.layout.model_views or views
        params = attention_params(request, model_views)
        if request.attention == "extended":  # bounded by the memory plan, when one is applied
            params["score_bytes"] = memory.attention_score_bytes(components)
        self.processor = attention.processor_for(request.attention, **params)
        self.spans = ((0, views),)
        # The batch's text and control in model space, built once for every step.
        self.batch = conditioning.batch(model_views)
        control = conditioning.control.to(components.device, components.dtype)
        self.control = self.layout.to_model(conditioning.per_group(control))
        self.extra = [(net, self.layout.to_model(conditioning.per_group(images.to(components.device, components.dtype))),
                       relative) for net, images, relative in conditioning.extra_control]
        self.models = [net for net, _, _ in self.extra]  # more models the attention processor goes on

    def where(self, index: int, total: int, span: int) -> str:
        return f"before step {index + 1} of {total}"

    def __call__(self, scheduler, index: int, span: int, timestep, latents: torch.Tensor,
                 scale: float) -> torch.Tensor:
        return guided_noise_pred(self.components, scheduler, latents, timestep, self.batch, self.control, scale,
                                 self.guidance_scale, self.layout, self.extra)


def _poll(cancel: Callable[[], bool] | None, where: str) -> None:
    if cancel is not None and cancel():
        raise Cancelled(f"cancelled {where}")


@contextlib.contextmanager
def cancel_inside(models, cancel: Callable[[], bool] | None, where: list[str]):
    """Poll ``cancel`` before every down, mid and up block of ``models`` (UNet, ControlNet)
    too, so one long step (a large view on the CPU takes minutes) stops within a block:
    :class:`Cancelled` says where (``where[0]``, the call under way)."""
    if cancel is None:
        yield
        return

    def check(_module, _inputs) -> None:
        if cancel():
            raise Cancelled(f"cancelled {where[0]}, inside the model")

    blocks = [block for model in models for name in ("down_blocks", "mid_block", "up_blocks")
              for block in _as_list(getattr(model, name, None))]
    handles = [block.register_forward_pre_hook(check) for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _as_list(blocks) -> list:
    if blocks is None:
        return []
    return list(blocks) if isinstance(blocks, torch.nn.ModuleList) else [blocks]


def denoise(
    components: Components,
    request: Request,
    passes: Passes,
    predictor: NoisePredictor,
    noise_model: Callable[[Request, Passes, int, int], torch.Tensor],
    *,
    hooks: Sequence[StepHook] = (),
    progress: Callable[[StepProgress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    latents: torch.Tensor | None = None,
    shown: Sequence[int] | slice = slice(None),
) -> SampleResult:
    """The stages every job kind shares from the starting noise on: initial latents ->
    scheduler -> denoising loop -> decode.

    The starting noise ``(V, C, H/8, W/8)`` (unit variance) is ``latents`` when given, else
    ``noise_model(request, passes, channels, factor)``. Each step the ``predictor`` gives
    the guided noise prediction span by span, then :func:`finish_step` runs the ``hooks``,
    the scheduler step and the ``progress`` report (a preview of the views ``shown``).
    ``cancel`` is polled before every model call and before decoding; when it returns
    True, :class:`Cancelled` is raised.
    """
    channels = components.unet.config.in_channels
    factor = components.vae_scale_factor
    start_noise = latents if latents is not None else noise_model(request, passes, channels, factor)
    expected = (passes.views, channels, passes.height // factor, passes.width // factor)
    if tuple(start_noise.shape) != expected:
        raise ProtocolError("latents", f"expected shape {expected}, got {tuple(start_noise.shape)}")

    scheduler = make_scheduler(components, request.scheduler)
    scheduler.set_timesteps(request.steps, device=components.device)
    timesteps = scheduler.timesteps
    current = start_noise.to(components.device, components.dtype) * scheduler.init_noise_sigma

    models = [components.unet, components.controlnet, *getattr(predictor, "models", ())]
    where = [""]  # the model call under way, for a cancel inside it
    with torch.inference_mode(), attention.install_processor(models, predictor.processor), \
            cancel_inside(models, cancel, where):
        for index, timestep in enumerate(timesteps):
            scale = request.controlnet_scale * controlnet_keep(index, len(timesteps), request.control_start,
                                                                request.control_end)
            noise_pred = torch.empty_like(current)
            for span, (start, stop) in enumerate(predictor.spans):
                where[0] = predictor.where(index, len(timesteps), span)
                _poll(cancel, where[0])
                noise_pred[start:stop] = predictor(scheduler, index, span, timestep, current[start:stop], scale)
            fresh = functools.partial(_step_noise, noise_model, request, passes, channels, factor, index, current)
            current = finish_step(components, scheduler, hooks, index, current, noise_pred, progress, shown, fresh)

    _poll(cancel, "before decoding")
    images = decode(components, current)
    return SampleResult(images=images, latents=current.float().cpu(), initial_noise=start_noise.float().cpu())


def _step_noise(noise_model, request: Request, passes: Passes, channels: int, factor: int, index: int,
                like: torch.Tensor) -> torch.Tensor:
    """Step ``index``'s fresh noise: the job's noise model at that step's seed."""
    seeded = dataclasses.replace(request, seed=step_seed(request.seed, index))
    return noise_model(seeded, passes, channels, factor).to(like.device, like.dtype)


def sample(
    components: Components,
    request: Request,
    passes: Passes,
    *,
    progress: Callable[[StepProgress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    hooks: Iterable[StepHook] = (),
    latents: torch.Tensor | None = None,
) -> SampleResult:
    """Sample all views of a job consistently. See the module docstring for the stages.

    ``latents`` overrides the starting noise ``(V, 4, H/8, W/8)`` (unit variance).
    ``cancel`` is polled before every step; when it returns True, :class:`Cancelled` is
    raised within one step.
    """
    check_inputs(components, request, passes)
    own_hooks = ([sync.UVSync(passes, request, components.vae_scale_factor, device=components.device)]
                 if request.sync_strength > 0 else [])
    predictor = WholeBatch(components, request, condition(components, request, passes))
    return denoise(components, request, passes, predictor, initial_noise, hooks=own_hooks + list(hooks),
                   progress=progress, cancel=cancel, latents=latents)
