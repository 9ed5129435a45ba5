"""Memory options: half precision, model CPU offload, VAE slicing / tiling and extended
attention in bounded memory, chosen from the device's memory and overridable.

:func:`plan` is pure arithmetic: ``(device memory, family, views, view size) ->``
:class:`MemoryPlan`, from the parameter counts of the real architectures and the peak
activations traced for them (docs/architecture.md, "Memory", gives the arithmetic; the
README's table is :func:`markdown_table`). :func:`apply` puts a plan on loaded
:class:`~zs_core.models.Components`. :func:`chunked_sdpa` is attention whose queries run in
chunks, so a kernel that materialises the scores (MPS, the math fallback) holds at most
:attr:`MemoryPlan.attention_score_bytes` of them.

Stdlib only at import: :func:`plan` runs anywhere (a server's settings, the README's
table); torch and accelerate are imported by the functions that need them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GiB = 1 << 30
MiB = 1 << 20

# Parameter counts of the real architectures: the diffusers / transformers classes built from
# the published configs (stable-diffusion-v1-5/stable-diffusion-v1-5 with
# lllyasviel/control_v11f1p_sd15_depth; stabilityai/stable-diffusion-xl-base-1.0 with
# diffusers/controlnet-depth-sdxl-1.0) on the meta device; tests/core/test_memory.py counts
# them again.
PARAMETERS: dict[str, dict[str, int]] = {
    "sd15": {"unet": 859_520_964, "controlnet": 361_279_120, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sdxl": {"unet": 2_567_463_684, "controlnet": 1_251_014_160, "vae": 83_653_863, "text_encoder": 123_060_480,
             "text_encoder_2": 694_659_840},
}
# The reference image (IP-Adapter, h94/IP-Adapter): the image encoder (SD 1.5: CLIP ViT-H/14,
# models/image_encoder; SDXL: ViT-bigG/14, sdxl_models/image_encoder) and the adapter's own
# weights (its image projection and a key / value projection per cross-attention layer).
IMAGE_ENCODER_PARAMETERS = {"sd15": 632_076_800, "sdxl": 1_844_907_264}
IP_ADAPTER_PARAMETERS = {"sd15": 22_319_616, "sdxl": 351_285_248}
# Peak activations of one ControlNet + UNet call per sample and latent pixel, in fp16 with a
# fused attention kernel (CUDA's flash / memory-efficient SDPA): traced on the meta device,
# linear in samples and pixels (the ControlNet's residuals are alive while the UNet runs).
ACTIVATION_BYTES = {"sd15": 21_241, "sdxl": 13_761}
# Decoding one image with the VAE, per output pixel in fp16 (the up-blocks' full-size maps).
VAE_DECODE_BYTES = 1_536
DECODE_CHUNK = 4  # views the sampler decodes per VAE call (zs_core.sampler.decode)
VAE_TILE = 512  # pixels: the tile of a tiled decode (the SD 1.5 VAE config's own sample size)
# The largest self-attention layer: tokens per latent pixel divisor and heads. SD 1.5 attends
# at full latent size with 8 heads; SDXL's first attention is at half size with 10 heads.
ATTENTION_LAYER = {"sd15": (1, 8), "sdxl": (4, 10)}
# What a device needs besides the tensors we count: the CUDA context and the allocator's
# fragmentation (a share of the memory).
RESERVED_BYTES = GiB // 2
USABLE_SHARE = 0.92
# Kernels that materialise the attention scores get this many bytes of them per call.
SCORE_BUDGET = 512 * MiB
# Where torch's SDPA has no fused kernel and builds the (queries x keys) scores.
SCORE_MATERIALISING_DEVICES = ("mps",)
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
KEY = "memory_plan"  # Components.extras: the plan applied
OFFLOAD_KEY = "memory_offload"  # Components.extras: the offload hooks' shared state


@dataclass(frozen=True)
class MemoryPlan:
    """How a model runs on a device.

    ``dtype``: fp16 on GPUs, fp32 on the CPU. ``offload``: model CPU offload (weights on the
    CPU; the text encoders, then UNet + ControlNet move to the device when they run, the
    VAE stays there). ``vae_slicing``: decode one view per VAE call instead of :data:`DECODE_CHUNK`;
    ``vae_tiling``: decode in tiles of ``vae_tile`` pixels. ``attention_score_bytes``: the
    bound on attention scores per call for kernels that materialise them (None: no bound).
    ``usable_bytes``: the device memory the plan may use (None: not a GPU); ``peak_bytes``
    the estimated peak, ``stages`` the estimated peak of each stage (encode, denoise,
    decode); ``fits``: the peak is within ``usable_bytes``."""

    dtype: str = "fp32"
    offload: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    vae_tile: int = VAE_TILE
    attention_score_bytes: int | None = None
    usable_bytes: int | None = None
    peak_bytes: int = 0
    stages: dict = field(default_factory=dict)
    fits: bool = True

    def describe(self) -> str:
        """One line for a log: what is on and the estimate."""
        options = [self.dtype]
        options += ["model CPU offload"] if self.offload else []
        options += ["VAE slicing"] if self.vae_slicing else []
        options += [f"VAE tiling ({self.vae_tile} px tiles)"] if self.vae_tiling else []
        if self.attention_score_bytes is not None:
            options.append(f"attention in chunks of {self.attention_score_bytes // MiB} MiB of scores")
        text = ", ".join(options)
        if self.usable_bytes is None:
            return f"{text}; estimated peak {_gib(self.peak_bytes)} GiB"
        verdict = "fits" if self.fits else "does NOT fit: use fewer or smaller views"
        return f"{text}; estimated peak {_gib(self.peak_bytes)} of {_gib(self.usable_bytes)} GiB usable ({verdict})"


def _gib(value: int) -> str:
    return f"{value / GiB:.1f}"


def usable_bytes(device_memory_bytes: int) -> int:
    """What the tensors of a job may use of a device's memory."""
    return int(device_memory_bytes * USABLE_SHARE) - RESERVED_BYTES


def weight_bytes(family: str, dtype: str = "fp16", reference: bool = False,
                 parameters: dict[str, int] | None = None) -> dict[str, int]:
    """Bytes of each stage's weights: ``{"encode", "denoise", "decode"}`` (with a reference
    image: the image encoder in encode, the IP-Adapter in denoise). ``parameters``: counts
    per module name (unet, controlnet, inpaint_controlnet, vae, text_encoder, text_encoder_2) that replace the
    family's, e.g. a smaller ControlNet's or those of loaded modules."""
    counts = dict(_parameters(family), **(parameters or {}))
    size = DTYPE_BYTES[dtype]
    encode = counts["text_encoder"] + counts.get("text_encoder_2", 0)
    denoise = counts["unet"] + counts["controlnet"] + counts.get("inpaint_controlnet", 0)
    if reference:  # counts of loaded modules already hold a loaded adapter
        encode += counts.get("image_encoder", IMAGE_ENCODER_PARAMETERS[family])
        denoise += 0 if "image_encoder" in counts else IP_ADAPTER_PARAMETERS[family]
    return {"encode": encode * size, "denoise": denoise * size, "decode": counts["vae"] * size}


def denoise_activation_bytes(family: str, views: int, view_size: int, dtype: str = "fp16") -> int:
    """Peak activations of one guided model call: ``2 * views`` samples (the guidance
    halves) of ``(view_size / 8)^2`` latent pixels each."""
    _parameters(family)
    latent_pixels = (view_size // 8) ** 2
    return ACTIVATION_BYTES[family] * 2 * views * latent_pixels * DTYPE_BYTES[dtype] // 2


def decode_activation_bytes(views: int, view_size: int, dtype: str = "fp16", *, slicing: bool = False,
                            tiling: bool = False, tile: int = VAE_TILE) -> int:
    """Peak activations of one VAE decode call (the sampler decodes
    :data:`DECODE_CHUNK` views per call; slicing makes it one; tiling one tile)."""
    images = 1 if slicing else min(views, DECODE_CHUNK)
    side = min(view_size, tile) if tiling else view_size
    # A tiled decode also keeps the decoded image whole: 3 channels per pixel.
    whole = images * view_size * view_size * 3 * DTYPE_BYTES[dtype] if tiling else 0
    return VAE_DECODE_BYTES * images * side * side * DTYPE_BYTES[dtype] // 2 + whole


def extended_score_bytes(family: str, views: int, view_size: int, dtype: str = "fp16") -> int:
    """Scores of extended attention's largest layer when a kernel materialises them: the
    two guidance groups, each ``heads x (V N) x (V N)`` for N tokens per view."""
    divisor, heads = ATTENTION_LAYER[family]
    tokens = views * (view_size // 8) ** 2 // divisor
    return 2 * heads * tokens * tokens * DTYPE_BYTES[dtype]


def plan(device_memory_bytes: int | None, family: str, views: int, view_size: int, *, device: str = "cuda",
         reference: bool = False, dtype: str | None = None, offload: bool | None = None,
         vae_tiling: bool | None = None, parameters: dict[str, int] | None = None) -> MemoryPlan:
    """The memory options for ``views`` views of ``view_size`` x ``view_size`` pixels of a
    ``family`` model (sd15, sdxl) on a device with ``device_memory_bytes`` (None: the CPU,
    whose RAM is not planned). ``device`` is the device's kind (cuda, mps, cpu).

    ``parameters`` replaces the family's parameter counts (see :func:`weight_bytes`).
    ``dtype``, ``offload`` and ``vae_tiling`` force a choice (None: automatic). Automatic
    choices take the first of these that fits: nothing; VAE slicing; slicing and tiling;
    offload; offload and slicing; offload, slicing and tiling (the last when nothing fits,
    with ``fits`` False; without device memory, nothing). Slicing costs nothing but a loop,
    tiling a little time and seams blended over a quarter of a tile, offload a copy of each
    model to the device per job.
    """
    kind = device.split(":")[0]
    if dtype is None:
        dtype = "fp32" if kind == "cpu" else "fp16"
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype: unknown dtype {dtype!r}; expected one of {', '.join(DTYPE_BYTES)}")
    if views < 1 or view_size < 8:
        raise ValueError(f"views: expected at least 1 view of 8 x 8 pixels, got {views} of {view_size}")
    weights = weight_bytes(family, dtype, reference, parameters)
    score_bytes = SCORE_BUDGET if kind in SCORE_MATERIALISING_DEVICES else None
    denoise = denoise_activation_bytes(family, views, view_size, dtype) + (score_bytes or 0)

    def estimate(offloaded: bool, slicing: bool, tiling: bool) -> MemoryPlan:
        decode = decode_activation_bytes(views, view_size, dtype, slicing=slicing, tiling=tiling)
        activations = {"encode": 0, "denoise": denoise, "decode": decode}
        if offloaded:  # one stage's weights on the device at a time, and the VAE's always
            stages = {name: weights[name] + (weights["decode"] if name != "decode" else 0) + activations[name]
                      for name in weights}
        else:
            resident = sum(weights.values())
            stages = {name: resident + activations[name] for name in weights}
        peak = max(stages.values())
        usable = usable_bytes(device_memory_bytes) if device_memory_bytes is not None else None
        return MemoryPlan(dtype=dtype, offload=offloaded, vae_slicing=slicing, vae_tiling=tiling,
                          attention_score_bytes=score_bytes, usable_bytes=usable, peak_bytes=peak, stages=stages,
                          fits=usable is None or peak <= usable)

    candidates = [(False, False, False), (False, True, False), (False, True, True),
                  (True, False, False), (True, True, False), (True, True, True)]
    wanted = [(o, s, t) for o, s, t in candidates
              if (offload is None or o == offload) and (vae_tiling is None or t == vae_tiling)]
    if vae_tiling:  # tiling asked for: slicing too, so the tiles are one view's
        wanted = [(o, s, t) for o, s, t in wanted if s] or wanted
    plans = [estimate(*choice) for choice in wanted]
    return next((each for each in plans if each.fits), plans[-1])


def _parameters(family: str) -> dict[str, int]:
    if family not in PARAMETERS:
        raise ValueError(f"family: no memory figures for {family!r}; expected one of {', '.join(PARAMETERS)}")
    return PARAMETERS[family]


# ------------------------------------------------------------------ the README's table

TABLE_MEMORY_GIB = (8, 12, 24)
TABLE_CASES = (("sd15", 512), ("sd15", 1024), ("sdxl", 512), ("sdxl", 1024))
TABLE_VIEWS = 8


def markdown_table(views: int = TABLE_VIEWS) -> str:
    """What fits with ``views`` views, by :func:`plan`, as the README shows it."""
    header = "| model, views of | " + " | ".join(f"{size} GiB GPU" for size in TABLE_MEMORY_GIB) + " |"
    lines = [header, "| --- |" + " --- |" * len(TABLE_MEMORY_GIB)]
    titles = {"sd15": "SD 1.5", "sdxl": "SDXL"}
    for family, size in TABLE_CASES:
        cells = []
        for memory in TABLE_MEMORY_GIB:
            chosen = plan(memory * GiB, family, views, size)
            cells.append(_cell(chosen))
        lines.append(f"| {titles[family]}, {views} x {size}^2 | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(chosen: MemoryPlan) -> str:
    options = [name for name, on in (("offload", chosen.offload), ("VAE slicing", chosen.vae_slicing),
                                     ("VAE tiling", chosen.vae_tiling)) if on]
    peak = f"{_gib(chosen.peak_bytes)} GiB"
    if not chosen.fits:
        return f"no ({peak} with {', '.join(options)})"
    return f"yes, {' + '.join(options)} ({peak})" if options else f"yes ({peak})"


# ------------------------------------------------------------------ the device


def device_memory(device) -> int | None:
    """Total memory of a torch device in bytes (CUDA: the card's; MPS: what Metal
    recommends for one process), None for the CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device.index or 0).total_memory)
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory())
    return None


def plan_for(components, views: int, view_size: int, *, reference: bool = False, offload: bool | None = None,
             vae_tiling: bool | None = None) -> MemoryPlan:
    """:func:`plan` for loaded ``components`` on their device: their own parameter counts
    and dtype."""
    family = components.family if components.family in PARAMETERS else "sd15"
    size = _itemsize(components.dtype)
    dtype = "fp32" if size == 4 else ("bf16" if "bfloat" in str(components.dtype) else "fp16")
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in components.modules().items()}
    return plan(device_memory(components.device), family, views, view_size, device=components.device.type,
                reference=reference, dtype=dtype, offload=offload, vae_tiling=vae_tiling, parameters=counts)


def plan_for_job(components, request, passes, *, offload: bool | None = None,
                 vae_tiling: bool | None = None) -> MemoryPlan:
    """:func:`plan_for` one job: its views per model call (an animation's chunk of frames),
    their size, and whether a reference image is encoded."""
    views = min(passes.views, request.chunk) if request.kind == "animation" else passes.views
    return plan_for(components, views, max(passes.height, passes.width),
                    reference=passes.reference_image is not None, offload=offload, vae_tiling=vae_tiling)


def _itemsize(dtype) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()


# ------------------------------------------------------------------ applying a plan


def apply(components, chosen: MemoryPlan) -> None:
    """Put ``chosen`` on ``components`` (idempotent; a later plan replaces an earlier one):
    the dtype, model CPU offload on or off, VAE slicing and tiling; the plan is kept in
    ``components.extras`` (:func:`attention_score_bytes` reads it)."""
    import torch

    from .models import vae_dtype

    wanted = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[chosen.dtype]
    if wanted != components.dtype:
        for name, module in components.modules().items():
            module.to(dtype=vae_dtype(module, wanted) if name == "vae" else wanted)
        components.dtype = wanted
    if chosen.offload:
        _install_offload(components)
    else:
        _remove_offload(components)
    vae = components.vae
    vae.use_slicing = chosen.vae_slicing
    vae.use_tiling = chosen.vae_tiling
    if chosen.vae_tiling:
        # diffusers tiles by its own config's sample size (SDXL's VAE: 1024); ours is smaller.
        factor = components.vae_scale_factor
        vae.tile_sample_min_size = chosen.vae_tile
        vae.tile_latent_min_size = chosen.vae_tile // factor
    components.extras[KEY] = chosen


def attention_score_bytes(components) -> int | None:
    """The bound on attention scores per call of the plan applied to ``components``."""
    chosen = components.extras.get(KEY)
    return None if chosen is None else chosen.attention_score_bytes


# Which stage each of Components' modules belongs to: one stage's modules are on the device
# at a time. The VAE (84M parameters) never leaves it: previews encode with it during the
# denoising stage, and diffusers runs its encode / decode through the hook without moving
# their inputs (apply_forward_hook), so the VAE must already be where the inputs are.
STAGES = {"text_encoder": "encode", "text_encoder_2": "encode", "image_encoder": "encode",
          "unet": "denoise", "controlnet": "denoise", "inpaint_controlnet": "denoise", "vae": "decode"}
RESIDENT = ("vae",)


class _Offload:
    """Model CPU offload for one Components: when a module of a stage runs, the modules of
    the other stages (but the resident VAE) go to the CPU and it goes to the device. The
    modules are read from ``components`` each time, so one added later (the reference's
    image encoder) is hooked the first time any module runs.

    Why not accelerate's ``cpu_offload_with_hook`` chain: diffusers' LoRA and IP-Adapter
    loaders find its ``CpuOffload`` hooks, remove them and call the transient pipeline's
    ``enable_model_cpu_offload`` (its own chain, without the ControlNet; on the CPU an
    error). Hooks of this class (accelerate's ``ModelHook`` protocol) are left alone.
    """

    def __init__(self, components):
        self.components = components
        self.stage = ""  # the stage on the device
        self.log: list[str] = []  # stages in the order they went to the device

    def hook_all(self) -> None:
        from accelerate.hooks import add_hook_to_module

        for name, module in self.components.modules().items():
            if not isinstance(getattr(module, "_hf_hook", None), _StageHook):
                add_hook_to_module(module, _StageHook(self, name))

    def enter(self, name: str, module) -> None:
        """``module`` (Components' ``name``) is about to run."""
        self.hook_all()
        stage = STAGES.get(name, name)
        device = self.components.device
        if stage != self.stage:
            for other, each in self.components.modules().items():
                if STAGES.get(other, other) != stage and other not in RESIDENT:
                    each.to("cpu")
            if device.type == "cuda":
                import torch

                torch.cuda.empty_cache()
            self.stage = stage
            self.log.append(stage)
        module.to(device)


class _StageHook:
    """accelerate's ``ModelHook`` protocol: before the module's forward (and the VAE's
    ``encode`` / ``decode``), :meth:`_Offload.enter`; the inputs go to the device."""

    no_grad = False

    def __init__(self, offload: _Offload, name: str):
        self.offload = offload
        self.name = name

    def init_hook(self, module):
        return module.to(self.offload.components.device if self.name in RESIDENT else "cpu")

    def pre_forward(self, module, *args, **kwargs):
        from accelerate.utils import send_to_device

        self.offload.enter(self.name, module)
        device = self.offload.components.device
        return send_to_device(args, device), send_to_device(kwargs, device)

    def post_forward(self, module, output):
        return output

    def detach_hook(self, module):
        return module


def _install_offload(components) -> None:
    if OFFLOAD_KEY not in components.extras:
        components.extras[OFFLOAD_KEY] = _Offload(components)
    components.extras[OFFLOAD_KEY].hook_all()  # each module to the CPU, the VAE to the device


def _remove_offload(components) -> None:
    offload = components.extras.pop(OFFLOAD_KEY, None)
    if offload is None:
        return
    from accelerate.hooks import remove_hook_from_module

    for module in components.modules().values():
        if isinstance(getattr(module, "_hf_hook", None), _StageHook):
            remove_hook_from_module(module)
        module.to(components.device)


def offload_log(components) -> list[str]:
    """The stages in the order offload moved them to the device (empty without offload)."""
    offload = components.extras.get(OFFLOAD_KEY)
    return [] if offload is None else list(offload.log)


# ------------------------------------------------------------------ bounded attention


def query_chunk(batch: int, heads: int, keys: int, itemsize: int, score_bytes: int) -> int:
    """Queries per call so that the scores ``(batch, heads, chunk, keys)`` and their
    softmax (two such tensors) fit ``score_bytes``; at least 1."""
    return max(1, score_bytes // (2 * batch * heads * keys * itemsize))


def chunked_sdpa(query, key, value, bias=None, *, score_bytes: int | None = None):
    """Scaled dot-product attention with the queries in chunks: query ``(B, h, Nq, d)``,
    key and value ``(B, h, Nk, d)``, ``bias`` broadcastable to ``(B, h, Nq, Nk)`` ->
    ``(B, h, Nq, d)``. Each query's softmax is over all keys, so the result is the one
    unchunked call gives; only the scores a materialising kernel holds at once are bounded
    (``score_bytes``; None: one call)."""
    import torch
    import torch.nn.functional as F

    batch, heads, queries, _ = query.shape
    if score_bytes is None:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
    chunk = query_chunk(batch, heads, key.shape[-2], query.element_size(), score_bytes)
    if chunk >= queries:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
    per_query = bias is not None and bias.dim() >= 2 and bias.shape[-2] == queries
    outputs = []
    for start in range(0, queries, chunk):
        part = None if bias is None else (bias[..., start:start + chunk, :] if per_query else bias)
        outputs.append(F.scaled_dot_product_attention(query[:, :, start:start + chunk], key, value, attn_mask=part))
    return torch.cat(outputs, dim=2)


__all__ = ["MemoryPlan", "plan", "plan_for", "apply", "device_memory", "markdown_table", "chunked_sdpa",
           "query_chunk", "attention_score_bytes", "offload_log", "weight_bytes", "usable_bytes"]
