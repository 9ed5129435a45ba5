"""(T) One texture job split over several workers, with the single worker's result.

Workers (ranks 0..W-1) hold contiguous ranges of the job's views (:func:`partition`). Every
step each runs the model on its own views; what views share travels through a
:class:`Collective` (torch.distributed's Gloo process group, :class:`GlooCollective`, on one
machine or across a Ray cluster):

- **noise**: every worker draws the whole job's starting (and per-step) noise from the seed
  and keeps its views: nothing is sent;
- **UV sync**: each worker sums its samples per texel of the UV pyramid; one all-reduce of
  those sums per step (a texture, not the latents; ``sync.UVSync(held=, reduce=)``);
- **attention** (:class:`ShardedAttention`), per self-attention layer and step: ``extended``
  all-gathers every view's keys and values (the communication-heavy mode); ``neighbors``
  and ``keyframes`` gather only the views another worker's queries read (the ring
  neighbours at each range's ends, the reference view, the keyframes); ``tma`` gathers one
  momentum state per worker (the last of its range) and each worker completes its own
  chain from the states before it: the momentum recursion is linear, so a prefix over the
  workers gives exactly the sequential chain;
- **cancel**: the workers agree on it (an all-reduce of one flag), so none waits for a
  worker that stopped.

The grid layout (all views tiled into one image) and completion views (a second stage on
the baked main views) are not split. docs/scaling.md gives the bytes each mode sends
(:func:`bytes_per_step`).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from . import animation, attention, memory, sampler, sync
from .models import Components
from .protocol import ANIMATION, Passes, ProtocolError, Request

GLOO_TIMEOUT_SECONDS = 600.0  # a worker lost mid-job fails the others' collective after this
SPLIT_MODES = ("self", "extended", "neighbors", "keyframes", "tma")
ANIMATION_SPLIT_MODES = ("self", "keyframes", "tma")  # an animation's attention modes


class Collective(Protocol):
    """What a worker of a split job exchanges with the others (blocking, same call order on
    every worker)."""

    rank: int
    size: int

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of every worker's ``tensor`` (same shape everywhere)."""

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every worker's ``tensor`` (same shape everywhere), in rank order."""

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor] | None:
        """Every worker's ``tensor`` on rank 0 (None on the others)."""


class Solo:
    """The collective of a job on one worker."""

    rank, size = 0, 1

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return [tensor]

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return [tensor]


class GlooCollective:
    """A torch.distributed Gloo process group of its own (not the process-wide default group,
    so one process can take part in several jobs one after another): rank 0 hosts the
    rendezvous store at ``host:port``; ``name`` keeps jobs sharing a store apart. Tensors
    travel as float32 on the CPU and come back in their own dtype and device."""

    def __init__(self, host: str, port: int, rank: int, size: int, name: str = "job",
                 timeout: float = GLOO_TIMEOUT_SECONDS, store=None):
        from torch import distributed

        wait = datetime.timedelta(seconds=timeout)
        self.rank, self.size = rank, size
        # ``store``: rank 0's store opened beforehand (:func:`open_store`, on a port it chose).
        self._store = store if store is not None else distributed.TCPStore(host, port, size, rank == 0, timeout=wait)
        self._group = distributed.ProcessGroupGloo(distributed.PrefixStore(name, self._store), rank, size, wait)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        flat = tensor.detach().to("cpu", torch.float32).contiguous().clone()
        self._group.allreduce([flat]).wait()
        return flat.to(tensor.device, tensor.dtype)

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        flat = tensor.detach().to("cpu", torch.float32).contiguous()
        parts = [torch.empty_like(flat) for _ in range(self.size)]
        self._group.allgather([parts], [flat]).wait()
        return [part.to(tensor.device, tensor.dtype) for part in parts]

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor] | None:
        """Every worker's ``tensor`` (same shape everywhere) on rank 0, in rank order; None
        on the others (what only rank 0 needs does not travel to every worker)."""
        from torch import distributed

        flat = tensor.detach().to("cpu", torch.float32).contiguous()
        options = distributed.GatherOptions()
        options.rootRank = 0
        parts = [torch.empty_like(flat) for _ in range(self.size)] if self.rank == 0 else []
        self._group.gather([parts] if self.rank == 0 else [], [flat], options).wait()
        return [part.to(tensor.device, tensor.dtype) for part in parts] if self.rank == 0 else None


def open_store(host: str, size: int, timeout: float = GLOO_TIMEOUT_SECONDS):
    """Rank 0's rendezvous store on a free port of ``host`` chosen by the system (no race
    between finding a port and taking it) -> (store, port): the port goes to the other
    workers, the store to rank 0's :class:`GlooCollective`."""
    from torch import distributed

    store = distributed.TCPStore(host, 0, size, True, timeout=datetime.timedelta(seconds=timeout),
                                 wait_for_workers=False)
    return store, int(store.port)


def partition(views: int, workers: int) -> list[tuple[int, int]]:
    """``views`` split into ``workers`` contiguous ranges ``(start, stop)``, sizes differing by
    at most one (the first ones larger); a worker beyond the views gets an empty range."""
    if workers < 1:
        raise ValueError(f"workers: expected at least 1, got {workers!r}")
    base, extra = divmod(views, workers)
    bounds = np.cumsum([0] + [base + (rank < extra) for rank in range(workers)])
    return [(int(bounds[rank]), int(bounds[rank + 1])) for rank in range(workers)]


# ------------------------------------------------------------------------- attention


class ShardedAttention(attention._SelfAttentionOnly):
    """Cross-view self-attention of the views ``ranges[rank]`` of a job split over workers,
    equal to :class:`zs_core.attention.CrossViewAttnProcessor` on all ``views`` at once.

    The batch is ``G * n``: the CFG groups of this worker's n views. Each layer call
    exchanges what the mode reads (see the module docstring) through ``collective``; every
    worker calls the same layers in the same order, so the exchanges line up."""

    def __init__(self, mode: str, views: int, collective: Collective, *, reference: int = 0,
                 reference_weight: float = 1.0, policy: str | None = None, anchors: Sequence[int] | None = None,
                 momentum: float = 0.5, score_bytes: int | None = None):
        if mode not in SPLIT_MODES or mode == "self":
            raise ValueError(f"mode: {mode!r} has no sharded processor; expected one of {SPLIT_MODES[1:]}")
        super().__init__()
        self.mode, self.views, self.collective = mode, views, collective
        self.ranges = partition(views, collective.size)
        self.start, self.stop = self.ranges[collective.rank]
        self.momentum, self.score_bytes = float(momentum), score_bytes
        self.sources, self.bias = _sources(mode, views, reference, reference_weight, policy, anchors)
        self.exports = exported_views(mode, views, collective.size, reference=reference,
                                      reference_weight=reference_weight, policy=policy, anchors=anchors)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r}, views {self.start}..{self.stop - 1} of {self.views})"

    def _attention(self, attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        held = self.stop - self.start
        batch, heads, tokens, head_dim = query.shape
        groups = batch // max(held, 1)

        def grouped(tensor: torch.Tensor) -> torch.Tensor:  # (G*n, h, N, d) -> (G, n, h, N, d)
            return tensor.reshape(groups, held, heads, tokens, head_dim)

        query, key, value = grouped(query), grouped(key), grouped(value)
        if self.mode == "tma":
            out = attention._sdpa(*(part.reshape(batch, heads, tokens, head_dim)
                                    for part in (query, self._momentum(key), self._momentum(value))))
            return out
        pool_key, pool_value = self._pool(key), self._pool(value)
        if self.mode == "extended":
            def sequence(tensor: torch.Tensor) -> torch.Tensor:  # (G, n, h, N, d) -> (G, h, n*N, d)
                count = tensor.shape[1]
                return tensor.transpose(1, 2).reshape(groups, heads, count * tokens, head_dim)

            keys, values, queries = sequence(pool_key), sequence(pool_value), sequence(query)
            if self.score_bytes is None:
                out = attention._sdpa(queries, keys, values)
            else:
                out = memory.chunked_sdpa(queries, keys, values, score_bytes=self.score_bytes)
            out = out.reshape(groups, heads, held, tokens, head_dim).transpose(1, 2)
        else:
            out = attention.pooled_attention(query, pool_key, pool_value, self.sources[self.start:self.stop],
                                             self.bias[self.start:self.stop])
        return out.reshape(batch, heads, tokens, head_dim)

    def _pool(self, tensor: torch.Tensor) -> torch.Tensor:
        """This worker's ``(G, n, h, N, d)`` -> ``(G, V, h, N, d)`` holding every view this
        worker's queries read (its own and the other ranks' exports; zeros elsewhere)."""
        groups, held, *rest = tensor.shape
        pool = tensor.new_zeros(groups, self.views, *rest)
        pool[:, self.start:self.stop] = tensor
        most = max(len(views) for views in self.exports)
        if most == 0 or self.collective.size == 1:
            return pool
        mine = self.exports[self.collective.rank]
        sent = tensor.new_zeros(groups, most, *rest)
        if mine:
            sent[:, :len(mine)] = tensor[:, [view - self.start for view in mine]]
        for rank, received in enumerate(self.collective.all_gather(sent)):
            views = self.exports[rank]
            if rank != self.collective.rank and views:
                pool[:, views] = received[:, :len(views)]
        return pool

    def _momentum(self, tensor: torch.Tensor) -> torch.Tensor:
        """K'' of this worker's frames ``(G, n, h, N, d)``: its own chain started at zero,
        plus the state carried in from the ranks before, mu^(i - start + 1) C."""
        mu, held = self.momentum, tensor.shape[1]
        local = torch.einsum("ij,gj...->gi...", _chain_matrix(held, mu, self.start == 0, tensor), tensor)
        lasts = self.collective.all_gather(local[:, -1] if held else tensor.new_zeros(tensor.shape[0],
                                                                                      *tensor.shape[2:]))
        carry = None  # K'' at the frame before this range
        for rank in range(self.collective.rank):
            start, stop = self.ranges[rank]
            if stop == start:
                continue
            carry = lasts[rank] if carry is None else lasts[rank] + mu ** (stop - start) * carry
        if carry is None or held == 0:
            return local
        powers = mu ** torch.arange(1, held + 1, dtype=torch.float64)
        return local + powers.to(tensor.dtype).view(1, held, *[1] * (tensor.ndim - 2)) * carry[:, None]


def _chain_matrix(frames: int, mu: float, first: bool, like: torch.Tensor) -> torch.Tensor:
    """The momentum matrix of :func:`zs_core.attention.momentum_matrix` for a range of frames;
    a range after the first frame enters damped like every later frame (its state before
    is carried in separately)."""
    matrix = attention.momentum_matrix(frames, mu, dtype=torch.float64)
    if not first and frames:
        matrix[:, 0] *= 1.0 - mu
    return matrix.to(like.dtype).to(like.device)


def _sources(mode: str, views: int, reference: int, reference_weight: float, policy: str | None,
             anchors: Sequence[int] | None):
    """(sources (V, S), bias (V, S)) of the gathered modes, (None, None) for the others."""
    if mode == "neighbors":
        return attention.neighbor_sources(views, reference, reference_weight)
    if mode == "keyframes":
        return attention.keyframe_sources(views, policy or "first", anchors)
    return None, None


def exported_views(mode: str, views: int, workers: int, *, reference: int = 0, reference_weight: float = 1.0,
                   policy: str | None = None, anchors: Sequence[int] | None = None) -> list[list[int]]:
    """Per worker, the views of its range whose keys and values it sends each layer: all of
    them for ``extended``; for ``neighbors`` / ``keyframes`` those another worker's queries
    read; none for ``self`` and ``tma`` (which sends one momentum state instead)."""
    ranges = partition(views, workers)
    if mode == "extended":
        return [list(range(start, stop)) for start, stop in ranges]
    if mode not in ("neighbors", "keyframes"):
        return [[] for _ in ranges]
    sources, bias = _sources(mode, views, reference, reference_weight, policy, anchors)
    read = [set(sources[start:stop][torch.isfinite(bias[start:stop])].tolist()) for start, stop in ranges]
    exports = []
    for rank, (start, stop) in enumerate(ranges):
        wanted = set().union(*(read[other] for other in range(len(ranges)) if other != rank))
        exports.append(sorted(view for view in wanted if start <= view < stop))
    return exports


# ------------------------------------------------------------------------- the job


def check_split(request: Request, passes: Passes) -> None:
    """What a split job cannot do; ProtocolError names the field."""
    if request.kind == ANIMATION:
        if request.attention not in ANIMATION_SPLIT_MODES:
            raise ProtocolError("attention", f"an animation with {request.attention!r} attention cannot be split; "
                                             f"expected one of {ANIMATION_SPLIT_MODES}")
        return
    if request.layout == "grid":
        raise ProtocolError("layout", "the grid layout tiles every view into one image; it runs on one worker")
    if request.attention not in SPLIT_MODES:
        raise ProtocolError("attention", f"{request.attention!r} cannot be split; expected one of {SPLIT_MODES}")
    if passes.completion is not None and passes.completion.any():
        raise ProtocolError("completion", "jobs with completion views run on one worker")


def agreed(cancel: Callable[[], bool] | None, collective: Collective) -> Callable[[], bool] | None:
    """``cancel`` asked of every worker at the same point: True for all when any says so."""
    if cancel is None or collective.size == 1:
        return cancel
    return lambda: bool(collective.all_reduce(torch.tensor([float(bool(cancel()))])).item() > 0)


def sample_shard(components: Components, request: Request, passes: Passes, collective: Collective, *,
                 progress: Callable[[sampler.StepProgress], None] | None = None,
                 cancel: Callable[[], bool] | None = None) -> sampler.SampleResult:
    """This worker's views (or frames) of a job split over ``collective``'s workers ->
    :class:`zs_core.sampler.SampleResult` of views ``partition(V, W)[rank]``; every worker
    calls it with the whole job. Concatenated in rank order, the results equal
    :func:`zs_core.sampler.sample` on one worker (to float rounding); for an animation,
    :func:`zs_core.animation.sample_frames` before its pixel sync (:func:`sample_split`
    runs that on the gathered frames). An animation worker runs its frames in one model
    call per step (not ``request.chunk`` at a time)."""
    animated = request.kind == ANIMATION
    (animation if animated else sampler).check_inputs(components, request, passes)
    check_split(request, passes)
    ranges = partition(passes.views, collective.size)
    start, stop = ranges[collective.rank]
    held = passes.select(range(start, stop))
    # One near/far and one reference for the job: conditioned on every view, then sliced.
    conditioning = sampler.condition(components, request, passes)
    conditioning = dataclasses.replace(conditioning, control=conditioning.control[start:stop])
    predictor = sampler.WholeBatch(components, dataclasses.replace(request, attention="self"), conditioning)
    if request.attention != "self":
        params = sampler.attention_params(request, passes.views)
        params.pop("views")
        if request.attention == "extended":
            params["score_bytes"] = memory.attention_score_bytes(components)
        predictor.processor = ShardedAttention(request.attention, passes.views, collective,
                                               **_processor_params(request.attention, params))
    if animated:
        hooks = animation.sync_hooks(components, request, passes, held=(start, stop), reduce=collective.all_reduce,
                                     gather=functools.partial(_gathered, collective, ranges))
        shown = [frame - start for frame in animation.preview_frames(passes.views) if start <= frame < stop]
    else:
        hooks = [sync.UVSync(passes, request, components.vae_scale_factor, device=components.device,
                             held=(start, stop), reduce=collective.all_reduce)] if request.sync_strength > 0 else []
        shown = slice(None)
    whole_noise = animation.initial_noise if animated else sampler.initial_noise

    def noise_model(step_request: Request, _held: Passes, channels: int, factor: int) -> torch.Tensor:
        # The whole job's noise, so each view gets what it would on one worker.
        return whole_noise(step_request, passes, channels, factor)[start:stop]

    return sampler.denoise(components, request, held, predictor, noise_model, hooks=hooks, progress=progress,
                           cancel=agreed(cancel, collective), shown=shown)


def _gathered(collective: Collective, ranges: list[tuple[int, int]], tensor: torch.Tensor) -> torch.Tensor:
    """This worker's ``(n, ...)`` part -> every worker's, ``(V, ...)`` in order, on every worker."""
    most = max(stop - start for start, stop in ranges)
    padded = tensor.new_zeros(most, *tensor.shape[1:])
    padded[:len(tensor)] = tensor
    return torch.cat([part[:stop - start] for part, (start, stop) in zip(collective.all_gather(padded), ranges)])


def sample_split(components: Components, request: Request, passes: Passes, collective: Collective, *,
                 progress: Callable[[sampler.StepProgress], None] | None = None,
                 cancel: Callable[[], bool] | None = None) -> sampler.SampleResult | None:
    """:func:`sample_shard`, then every worker's views gathered on rank 0 -> the whole job's
    :class:`zs_core.sampler.SampleResult` on rank 0 (what :func:`zs_core.sampler.sample`
    gives on one worker), None on the others."""
    shard = sample_shard(components, request, passes, collective, progress=progress, cancel=cancel)
    ranges = partition(passes.views, collective.size)
    most = max(stop - start for start, stop in ranges)

    def gathered(tensor: torch.Tensor) -> torch.Tensor | None:  # (n, ...) -> (V, ...) on rank 0
        padded = tensor.new_zeros(most, *tensor.shape[1:])
        padded[:len(tensor)] = tensor
        parts = collective.gather(padded)
        if parts is None:
            return None
        return torch.cat([part[:stop - start] for part, (start, stop) in zip(parts, ranges)])

    images = gathered(torch.from_numpy(np.ascontiguousarray(shard.images)))
    latents, initial = gathered(shard.latents), gathered(shard.initial_noise)
    if images is None:
        return None
    if request.kind == ANIMATION:  # pixel sync reads every frame
        return animation.AnimationResult(images=animation.pixel_synced(images.numpy(), passes, request),
                                         latents=latents, initial_noise=initial,
                                         attention_stats={"workers": collective.size})
    return sampler.SampleResult(images=images.numpy(), latents=latents, initial_noise=initial)


def _processor_params(mode: str, params: dict) -> dict:
    """sampler.attention_params' names -> ShardedAttention's."""
    names = {"reference": "reference", "reference_weight": "reference_weight", "policy": "policy",
             "momentum": "momentum", "score_bytes": "score_bytes", "anchors": "anchors"}
    return {names[key]: value for key, value in params.items() if key in names}


def bytes_per_step(mode: str, views: int, workers: int, unet_config, latent: tuple[int, int], *,
                   texels: int = 0, channels: int = 4, guidance: bool = True, reference: int = 0,
                   policy: str | None = None) -> dict:
    """What one denoising step of a texture job of ``views`` split over ``workers`` moves, as
    float32, for a UNet of ``unet_config`` (its ControlNet mirrors the down and mid blocks)
    at ``latent`` (h, w) -> {"attention": bytes each worker sends per step for the mode's
    keys and values, summed over every self-attention layer of UNet and ControlNet (an
    all-gather pads every worker's part to the largest); "sync": the UV sync's texel sums
    (``texels`` texels of the pyramid, all-reduced); "per_worker": both}."""
    if workers <= 1:
        return {"attention": 0, "sync": 0, "per_worker": 0}
    groups = 2 if guidance else 1
    per_view = 2 * groups * 4 * sum(attention_layer_elements(unet_config, latent))  # keys and values
    if mode == "tma":
        sent = 1  # one momentum state (of one frame) per layer
    else:
        sent = max(len(part) for part in exported_views(mode, views, workers, reference=reference, policy=policy))
    sync = texels * (2 * channels + 3) * 4
    return {"attention": sent * per_view, "sync": sync, "per_worker": sent * per_view + sync}


def attention_layer_elements(unet_config, latent: tuple[int, int]) -> list[int]:
    """tokens x channels of one view's keys at every self-attention layer of a UNet of
    ``unet_config`` (a diffusers UNet2DConditionModel config) and of its ControlNet (its
    down and mid blocks), for a latent of ``latent`` (h, w)."""
    config = dict(unet_config)
    widths = list(config["block_out_channels"])
    depth = config.get("transformer_layers_per_block", 1)
    depths = list(depth) if isinstance(depth, (list, tuple)) else [depth] * len(widths)
    per_block = config.get("layers_per_block", 2)
    height, width = latent

    def tokens(level: int) -> int:
        return -(-height // 2 ** level) * -(-width // 2 ** level)

    down = [per_block * depths[i] * tokens(i) * widths[i]
            for i, kind in enumerate(config["down_block_types"]) if "CrossAttn" in kind]
    last = len(widths) - 1
    mid = [depths[-1] * tokens(last) * widths[-1]] if "CrossAttn" in (config.get("mid_block_type") or "") else []
    up = [(per_block + 1) * depths[last - j] * tokens(last - j) * widths[last - j]
          for j, kind in enumerate(config["up_block_types"]) if "CrossAttn" in kind]
    return down + mid + up + down + mid  # the UNet, then its ControlNet
