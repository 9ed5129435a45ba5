"""(T) Cross-view / cross-frame self-attention for UNet and ControlNet.

Processors here replace diffusers' stock processor on the self-attention layers
(``attn1``) only; cross-attention (``attn2``) keeps the stock one. The batch is
``B = G * V``: G groups (2 for the classifier-free-guidance halves
``[uncond views..., cond views...]``, else 1) of V views or frames. Keys and values
are shared between the views of one group, never between groups.

Modes (:data:`MODES`, protocol's ``ATTENTION_MODES``):

- ``self``: the stock processor (``AttnProcessor2_0``).
- ``extended``: every view attends to the keys/values of all V views of its group.
- ``neighbors``: view i attends to views i-1, i, i+1 on the camera ring plus a
  ``reference`` view whose keys carry weight ``reference_weight`` (a log-weight logit bias)
  in every other view, ring neighbours of the reference included; own keys keep weight 1.
- ``keyframes``: ``policy`` ``first`` (frame 0), ``first_previous`` (frames 0 and i-1),
  ``middle`` (frame V//2), or explicit ``anchors`` (those frames plus the frame itself).
- ``tma``: ZS2 temporal momentum, K''_i = mu K''_(i-1) + (1-mu) K_i (and the same for V),
  computed for all frames at once with :func:`momentum_matrix`.

Use :func:`install` as a context manager around the denoising loop.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

from . import memory
from .protocol import ATTENTION_MODES, KEYFRAME_POLICIES

# The wire's names; each has an implementation here (CROSS_VIEW_ATTENTION, KEYFRAME_SOURCES),
# which tests/core/test_mode_names.py holds equal to them.
MODES = ATTENTION_MODES
POLICIES = KEYFRAME_POLICIES
SELF_ATTENTION_SUFFIX = "attn1.processor"
# Gathered modes copy S source views' keys and values per view; views are processed in
# chunks so one chunk's gathered keys hold at most this many elements.
GATHER_BUDGET = 1 << 24


# --- pure functions --------------------------------------------------------------------


def momentum_matrix(frames: int, mu: float, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """The lower-triangular ``(V, V)`` matrix M with ``K'' = M @ K`` over the frame axis.

    ``M[i, 0] = mu^i`` and ``M[i, j] = (1 - mu) mu^(i - j)`` for ``1 <= j <= i``; every row
    sums to 1. Built in float64 so high powers of mu stay accurate, then cast.
    """
    index = torch.arange(frames, dtype=torch.float64)
    lag = index[:, None] - index[None, :]
    powers = torch.pow(torch.tensor(float(mu), dtype=torch.float64), lag.clamp(min=0))
    matrix = torch.where(lag >= 0, powers, torch.zeros_like(powers))
    matrix[:, 1:] *= 1.0 - mu  # frame 0 enters undamped: K''_0 = K_0
    return matrix.to(dtype=dtype, device=device)


def momentum_recursive(keys: torch.Tensor, mu: float) -> torch.Tensor:
    """``K''`` by the recursion, frame by frame: keys ``(V, ...)`` -> ``(V, ...)``.

    The reference definition; :func:`apply_momentum` computes the same in one product.
    """
    blended = [keys[0]]
    for frame in keys[1:]:
        blended.append(mu * blended[-1] + (1.0 - mu) * frame)
    return torch.stack(blended)


def apply_momentum(tensor: torch.Tensor, mu: float) -> torch.Tensor:
    """Momentum over the frame axis of ``(G, V, ...)`` -> ``(G, V, ...)`` (groups separate)."""
    matrix = momentum_matrix(tensor.shape[1], mu, dtype=tensor.dtype, device=tensor.device)
    return torch.einsum("ij,gj...->gi...", matrix, tensor)


def deduplicated_bias(sources: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Set the bias of every repeated source slot to -inf.

    sources ``(V, S)`` view indices per view, bias ``(V, S)`` logit bias. A view listed twice
    would otherwise have its keys counted twice (double weight); the first slot wins.
    """
    slots = sources.shape[1]
    earlier = torch.triu(torch.ones(slots, slots, dtype=torch.bool), diagonal=1)  # [a, b]: a < b
    repeated = ((sources[:, :, None] == sources[:, None, :]) & earlier).any(dim=1)
    return bias.masked_fill(repeated, -math.inf)


def neighbor_sources(views: int, reference: int, reference_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources ``(V, 4)`` = view i itself, the reference, ring neighbours i-1 and i+1, with
    bias ``(V, 4)``.

    The reference slot's bias is log(w) (-inf for w = 0). The slots are ordered so that
    :func:`deduplicated_bias` keeps the right one: the reference's keys get weight w in
    every other view, also where the reference is a ring neighbour (the neighbour slot is
    masked); a view's own keys always keep weight 1, also in the reference view itself
    (w = 0 must not leave it without its own keys).
    """
    index = torch.arange(views)
    sources = torch.stack([index, torch.full((views,), reference), (index - 1) % views, (index + 1) % views],
                          dim=1)
    bias = torch.zeros(views, 4)
    bias[:, 1] = math.log(reference_weight) if reference_weight > 0 else -math.inf
    return sources, deduplicated_bias(sources, bias)


# Keyframe policy -> the frames each of V frames attends to: frame indices ``(V,)`` -> ``(V, S)``.
KEYFRAME_SOURCES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "first": lambda index: torch.zeros(len(index), 1, dtype=torch.long),
    # Frame 0 has no previous frame: its second slot repeats frame 0 and is masked.
    "first_previous": lambda index: torch.stack([torch.zeros_like(index), (index - 1).clamp(min=0)], dim=1),
    "middle": lambda index: torch.full((len(index), 1), len(index) // 2),
}


def keyframe_sources(views: int, policy: str | None, anchors: Sequence[int] | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources ``(V, S)`` and bias ``(V, S)`` for a keyframe policy (None: ``first``) or
    explicit anchors."""
    index = torch.arange(views)
    if anchors is not None:
        fixed = torch.tensor(list(anchors), dtype=torch.long).expand(views, -1)
        sources = torch.cat([fixed, index[:, None]], dim=1)
    else:
        sources = KEYFRAME_SOURCES[policy or "first"](index)
    return sources, deduplicated_bias(sources, torch.zeros(sources.shape, dtype=torch.float32))


# --- validation ------------------------------------------------------------------------


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode: unknown attention mode {mode!r}; expected one of {', '.join(MODES)}")


def _check_index(name: str, value: int, views: int | None) -> None:
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: expected a view index >= 0, got {value!r}")
    if views is not None and value >= views:
        raise ValueError(f"{name}: {value} is not a view index (0..{views - 1})")


def _check_params(views, reference, reference_weight, policy, anchors, momentum, score_bytes=None) -> None:
    if views is not None and (not isinstance(views, int) or views < 1):
        raise ValueError(f"views: expected a positive int or None, got {views!r}")
    if score_bytes is not None and (isinstance(score_bytes, bool) or not isinstance(score_bytes, int)
                                    or score_bytes < 1):
        raise ValueError(f"score_bytes: expected a positive int or None, got {score_bytes!r}")
    _check_index("reference", reference, views)
    if not reference_weight >= 0 or math.isinf(reference_weight):
        raise ValueError(f"reference_weight: expected a finite weight >= 0, got {reference_weight!r}")
    if policy is not None and policy not in POLICIES:
        raise ValueError(f"policy: unknown keyframe policy {policy!r}; expected one of {', '.join(POLICIES)}")
    if anchors is not None:
        if policy is not None:
            raise ValueError("anchors: give either a keyframe policy or anchors, not both")
        for anchor in anchors:
            _check_index("anchors", anchor, views)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum: expected mu in [0, 1], got {momentum!r}")


# --- the processors --------------------------------------------------------------------


class _SelfAttentionOnly:
    """What the processors here share. Callable like ``AttnProcessor2_0``: given
    ``encoder_hidden_states`` (cross-attention) it is the stock processor; self-attention
    runs the stock input handling (spatial_norm, 4-D input, group_norm, norm_q/norm_k),
    :meth:`_attention` on the heads, then the stock output projection, residual and
    rescale. Only the choice of keys/values differs from the stock processor."""

    mode: str

    def __init__(self):
        self._stock = AttnProcessor2_0()

    @property
    def _described(self) -> str:
        return repr(self.mode)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None:
            return self._stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if attention_mask is not None:
            # A per-view key mask would have to be gathered along with the keys; nothing needs it.
            raise ValueError(f"attention_mask: not supported by the {self._described} attention mode")
        hidden_states, residual, spatial_shape = _prologue(attn, hidden_states, temb)
        query, key, value = _heads_qkv(attn, hidden_states)
        return _project_out(attn, self._attention(attn, query, key, value), residual, spatial_shape)

    def _attention(self, attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """One layer's query, key, value ``(B, h, N, d)`` -> attention output ``(B, h, N, d)``."""
        raise NotImplementedError


class CrossViewAttnProcessor(_SelfAttentionOnly):
    """Self-attention whose keys/values come from other views of the same group
    (:data:`CROSS_VIEW_ATTENTION` per mode)."""

    def __init__(self, mode: str, *, views: int | None = None, reference: int = 0,
                 reference_weight: float = 1.0, policy: str | None = None,
                 anchors: Sequence[int] | None = None, momentum: float = 0.5, score_bytes: int | None = None):
        _check_mode(mode)
        if mode == "self":
            raise ValueError("mode: 'self' is the stock processor; use processor_for('self')")
        _check_params(views, reference, reference_weight, policy, anchors, momentum, score_bytes)
        super().__init__()
        self.mode = mode
        self.views = views
        self.reference = reference
        self.reference_weight = float(reference_weight)
        self.policy = policy or "first"
        self.anchors = None if anchors is None else tuple(int(a) for a in anchors)
        self.momentum = float(momentum)
        self.score_bytes = score_bytes

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r}, views={self.views})"

    def _attention(self, attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        groups, views = self.split_batch(query.shape[0])
        return self.attend(query, key, value, groups, views)

    def split_batch(self, batch: int) -> tuple[int, int]:
        """``B`` -> ``(G, V)``, validating the per-call parameters against V."""
        views = batch if self.views is None else self.views
        if batch % views:
            raise ValueError(f"views: batch of {batch} is not a whole number of groups of {views} views")
        _check_index("reference", self.reference, views)
        for anchor in self.anchors or ():
            _check_index("anchors", anchor, views)
        return batch // views, views

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               groups: int, views: int) -> torch.Tensor:
        """Queries, keys, values ``(G*V, h, N, d)`` -> attention output ``(G*V, h, N, d)``."""
        return CROSS_VIEW_ATTENTION[self.mode](self, query, key, value, groups, views)


# Cross-view mode -> (processor, query, key, value (G*V, h, N, d), groups G, views V) -> (G*V, h, N, d).
CROSS_VIEW_ATTENTION: dict[str, Callable[..., torch.Tensor]] = {
    "extended": lambda processor, query, key, value, groups, views: extended_attention(
        query, key, value, groups, views, processor.score_bytes),
    "neighbors": lambda processor, query, key, value, groups, views: gathered_attention(
        query, key, value, groups, *neighbor_sources(views, processor.reference, processor.reference_weight)),
    "keyframes": lambda processor, query, key, value, groups, views: gathered_attention(
        query, key, value, groups, *keyframe_sources(views, processor.policy, processor.anchors)),
    "tma": lambda processor, query, key, value, groups, views: momentum_attention(
        query, key, value, groups, views, processor.momentum),
}


def _prologue(attn, hidden_states: torch.Tensor, temb: torch.Tensor | None):
    """The stock processor's input handling -> (hidden states ``(B, N, C)``, residual,
    the 4-D input shape or None)."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    spatial_shape = hidden_states.shape if hidden_states.ndim == 4 else None
    if spatial_shape is not None:
        batch, channels, height, width = spatial_shape
        hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    return hidden_states, residual, spatial_shape


def _heads_qkv(attn, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden states ``(B, N, C)`` -> query, key, value ``(B, h, N, d)`` (after norm_q/norm_k)."""
    batch = hidden_states.shape[0]
    query = attn.to_q(hidden_states)
    key = attn.to_k(hidden_states)
    value = attn.to_v(hidden_states)
    head_dim = key.shape[-1] // attn.heads

    def split(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

    query, key, value = split(query), split(key), split(value)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return query, key, value


def _project_out(attn, out: torch.Tensor, residual: torch.Tensor, spatial_shape) -> torch.Tensor:
    """Attention output ``(B, h, N, d)`` -> layer output, shaped like the layer's input."""
    batch, heads, _, head_dim = out.shape
    hidden_states = out.transpose(1, 2).reshape(batch, -1, heads * head_dim)
    hidden_states = attn.to_out[0](hidden_states)  # linear
    hidden_states = attn.to_out[1](hidden_states)  # dropout
    if spatial_shape is not None:
        hidden_states = hidden_states.transpose(-1, -2).reshape(spatial_shape)
    if attn.residual_connection:
        hidden_states = hidden_states + residual
    return hidden_states / attn.rescale_output_factor


def _sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
          bias: torch.Tensor | None = None) -> torch.Tensor:
    # No explicit scale, as the stock processor: SDPA's default is attn.scale for SD models.
    return F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=0.0, is_causal=False)


def extended_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       groups: int, views: int, score_bytes: int | None = None) -> torch.Tensor:
    """All views of a group in one sequence: ``(G*V, h, N, d)`` -> ``(G*V, h, N, d)``.

    Tokens are reshaped to ``(G, h, V*N, d)`` rather than copying all keys per view, so
    memory is the group's tokens plus whatever the SDPA kernel needs. ``score_bytes``
    bounds the scores a kernel that materialises them (MPS, the math fallback) holds at
    once: (V*N)^2 per head would be tens of GiB at 8 views of 1024^2; the queries then go
    in chunks, each over all keys, so the result is the same (memory.chunked_sdpa).
    """
    batch, heads, tokens, head_dim = query.shape

    def as_group(tensor: torch.Tensor) -> torch.Tensor:
        grouped = tensor.reshape(groups, views, heads, tokens, head_dim).transpose(1, 2)
        return grouped.reshape(groups, heads, views * tokens, head_dim)

    if score_bytes is None:
        out = _sdpa(as_group(query), as_group(key), as_group(value))
    else:
        out = memory.chunked_sdpa(as_group(query), as_group(key), as_group(value), score_bytes=score_bytes)
    out = out.reshape(groups, heads, views, tokens, head_dim).transpose(1, 2)
    return out.reshape(batch, heads, tokens, head_dim)


def momentum_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       groups: int, views: int, mu: float) -> torch.Tensor:
    """Frame i's queries attend to K''_i, V''_i: ``(G*V, h, N, d)`` -> ``(G*V, h, N, d)``."""
    shape = query.shape

    def blend(tensor: torch.Tensor) -> torch.Tensor:
        return apply_momentum(tensor.reshape(groups, views, *shape[1:]), mu).reshape(shape)

    return _sdpa(query, blend(key), blend(value))


def gathered_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, groups: int,
                       sources: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """View i attends to the keys/values of views ``sources[i]`` with logit ``bias[i]``.

    query, key, value ``(G*V, h, N, d)``; sources, bias ``(V, S)``. See :func:`pooled_attention`.
    """
    batch, heads, tokens, head_dim = query.shape
    views = sources.shape[0]
    grouped = [t.reshape(groups, views, heads, tokens, head_dim) for t in (query, key, value)]
    out = pooled_attention(*grouped, sources, bias)
    return out.reshape(batch, heads, tokens, head_dim)


def pooled_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, sources: torch.Tensor,
                     bias: torch.Tensor) -> torch.Tensor:
    """Each of c query frames attends to the pool frames ``sources[i]`` with logit ``bias[i]``.

    query ``(G, c, h, N, d)``; key, value pool ``(G, P, h, N, d)``; sources ``(c, S)`` pool
    indices, bias ``(c, S)`` (-inf masks a slot). -> ``(G, c, h, N, d)``. Queries are
    processed in chunks so the gathered keys ``(G*c', h, S*N, d)`` stay within
    :data:`GATHER_BUDGET`.
    """
    groups, count, heads, tokens, head_dim = query.shape
    slots = sources.shape[1]
    sources = sources.to(query.device)
    bias = None if not bias.any() else bias.to(device=query.device, dtype=query.dtype)
    per_view = groups * slots * tokens * heads * head_dim
    chunk = max(1, GATHER_BUDGET // per_view)
    outputs = [
        _gathered_chunk(query[:, start:start + chunk], key, value, sources[start:start + chunk],
                        None if bias is None else bias[start:start + chunk])
        for start in range(0, count, chunk)
    ]
    return torch.cat(outputs, dim=1)


def _gathered_chunk(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, sources: torch.Tensor,
                    bias: torch.Tensor | None) -> torch.Tensor:
    """Query chunk ``(G, c, h, N, d)``, key/value pool ``(G, P, h, N, d)`` -> ``(G, c, h, N, d)``."""
    groups, count, heads, tokens, head_dim = query.shape
    slots = sources.shape[1]

    def gather(tensor: torch.Tensor) -> torch.Tensor:
        picked = tensor[:, sources]  # (G, c, S, h, N, d)
        return picked.transpose(2, 3).reshape(groups * count, heads, slots * tokens, head_dim)

    chunk_query = query.reshape(groups * count, heads, tokens, head_dim)
    mask = None
    if bias is not None:
        # (c, S) -> one additive bias per key token, the same for every group, head and query.
        mask = bias.repeat_interleave(tokens, dim=1).expand(groups, count, slots * tokens)
        mask = mask.reshape(groups * count, 1, 1, slots * tokens)
    out = _sdpa(chunk_query, gather(key), gather(value), mask)
    return out.reshape(groups, count, heads, tokens, head_dim)


# --- frames in chunks -------------------------------------------------------------------
#
# A long frame sequence cannot go through the UNet as one batch, so the animation loop runs
# each denoising step chunk by chunk (K frames per model call). Cross-frame attention still
# needs frames outside the chunk: the anchors. Rather than recomputing them (K + anchors
# frames per call), each layer keeps the keys/values of the anchor frames from the chunk
# that computed them earlier in the same step: frame 0 (and the middle frame for the
# ``middle`` policy), and the last frame of the previous chunk, or for ``tma`` the momentum
# state K''/V'' of that frame. A query then sees its chunk plus at most two cached frames,
# whatever the length of the sequence, and since the cached values are exactly what an
# unchunked pass computes, chunk borders do not jump: chunked equals unchunked.

CHUNKED_MODES = ("keyframes", "tma")


@dataclass(frozen=True)
class ChunkPlan:
    """How a step's F frames are split: ``chunks`` ``(start, stop)`` in processing order and
    ``keep[j]`` the frames whose keys must be cached after chunk j for later chunks."""

    frames: int
    chunks: tuple[tuple[int, int], ...]
    keep: tuple[frozenset, ...]

    @property
    def largest(self) -> int:
        return max(stop - start for start, stop in self.chunks)


def chunk_plan(frames: int, chunk: int, mode: str = "self", policy: str = "first") -> ChunkPlan:
    """Chunks of ``chunk`` consecutive frames, in order; for ``keyframes`` with the ``middle``
    policy the chunk holding frame F // 2 goes first (every other chunk attends to it)."""
    for name, value in (("frames", frames), ("chunk", chunk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    _check_mode(mode)
    if policy not in POLICIES:
        raise ValueError(f"policy: unknown keyframe policy {policy!r}; expected one of {', '.join(POLICIES)}")
    spans = [(start, min(start + chunk, frames)) for start in range(0, frames, chunk)]
    if mode == "keyframes" and policy == "middle":
        middle = (frames // 2) // chunk
        spans = [spans[middle]] + spans[:middle] + spans[middle + 1:]
    needs = [set() for _ in spans]  # frames outside each chunk that its queries attend to
    if mode == "keyframes":
        sources, bias = keyframe_sources(frames, policy, None)
        for index, (start, stop) in enumerate(spans):
            used = sources[start:stop][torch.isfinite(bias[start:stop])].tolist()
            needs[index] = {frame for frame in used if not start <= frame < stop}
    elif mode == "tma":
        needs = [{start - 1} if start > 0 else set() for start, _ in spans]
    keep = []
    for index, (start, stop) in enumerate(spans):
        done = {f for s, e in spans[:index + 1] for f in range(s, e)}
        missing = needs[index] - {f for s, e in spans[:index] for f in range(s, e)}
        if missing:  # a bug in the ordering above, never the caller's fault
            raise AssertionError(f"chunk {start}..{stop - 1} needs frames {sorted(missing)} computed later")
        keep.append(frozenset(set().union(*needs[index + 1:]) & done))
    return ChunkPlan(frames, tuple(spans), tuple(keep))


class ChunkedFrameAttention(_SelfAttentionOnly):
    """``keyframes`` or ``tma`` across F frames evaluated chunk by chunk (see above).

    Before each model call on the frames of ``plan.chunks[j]`` (batch ``G * c``, the CFG
    groups stacked as usual), the loop calls :meth:`begin` ``(step, j)``. Chunks must run in
    plan order within a step; a chunk whose anchors were not computed earlier in the same
    step raises RuntimeError. With one chunk (K >= F) the computation is exactly
    :class:`CrossViewAttnProcessor`'s. ``stats`` records, over all calls, the most key
    tokens one query saw, the most frames in a layer's anchor cache and in one batch.
    """

    def __init__(self, mode: str, plan: ChunkPlan, *, policy: str = "first", momentum: float = 0.5):
        if mode not in CHUNKED_MODES:
            raise ValueError(f"mode: chunked attention supports {', '.join(CHUNKED_MODES)}, got {mode!r}")
        _check_params(plan.frames, 0, 1.0, policy, None, momentum)
        super().__init__()
        self.mode, self.plan, self.policy, self.momentum = mode, plan, policy, float(momentum)
        self.sources, self.bias = keyframe_sources(plan.frames, policy, None)
        self._position: tuple[int, int] | None = None  # (step, chunk index)
        self._cache: dict = {}  # attention module -> {"step", "frames": {frame: (k, v)}, "state"}
        self.stats = {"peak_key_tokens": 0, "peak_cached_frames": 0, "peak_batch_frames": 0}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r}, frames={self.plan.frames}, chunks={len(self.plan.chunks)})"

    def begin(self, step: int, index: int) -> None:
        """The next model call runs chunk ``plan.chunks[index]`` of denoising step ``step``."""
        if not 0 <= index < len(self.plan.chunks):
            raise ValueError(f"index: {index} is not a chunk index (0..{len(self.plan.chunks) - 1})")
        self._position = (step, index)

    @property
    def _described(self) -> str:
        return f"chunked {self.mode!r}"

    def _attention(self, attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        if self._position is None:
            raise RuntimeError("ChunkedFrameAttention: call begin(step, chunk index) before each model call")
        step, index = self._position
        start, stop = self.plan.chunks[index]
        batch, heads, tokens, head_dim = query.shape
        count = stop - start
        if batch % count:
            raise ValueError(f"views: batch of {batch} is not a whole number of groups of the chunk's {count} frames")
        grouped = [t.reshape(batch // count, count, heads, tokens, head_dim) for t in (query, key, value)]
        cache = self._layer_cache(attn, step)
        if self.mode == "tma":
            out = self._momentum(cache, *grouped, start, stop)
        else:
            out = self._keyframes(cache, *grouped, start, stop, index)
        self.stats["peak_batch_frames"] = max(self.stats["peak_batch_frames"], count)
        self.stats["peak_cached_frames"] = max(self.stats["peak_cached_frames"],
                                               len(cache["frames"]) + (cache["state"] is not None))
        return out.reshape(batch, heads, tokens, head_dim)

    def _layer_cache(self, attn, step: int) -> dict:
        cache = self._cache.setdefault(attn, {"step": step, "frames": {}, "state": None})
        if cache["step"] != step:  # a new denoising step: last step's keys are stale
            cache.update(step=step, frames={}, state=None)
        return cache

    def _missing(self, frame: int, start: int, stop: int):
        step = self._position[0]
        return RuntimeError(f"chunk of frames {start}..{stop - 1} needs frame {frame}'s keys, which no earlier "
                            f"chunk of step {step} computed: run the chunks in plan order")

    def _keyframes(self, cache: dict, query, key, value, start: int, stop: int, index: int) -> torch.Tensor:
        """Grouped ``(G, c, h, N, d)`` -> ``(G, c, h, N, d)``: gathered attention over a pool of
        the cached anchors followed by the chunk's own frames."""
        sources, bias = self.sources[start:stop], self.bias[start:stop]
        anchors = sorted({int(f) for f in sources[torch.isfinite(bias)].tolist()} - set(range(start, stop)))
        for frame in anchors:
            if frame not in cache["frames"]:
                raise self._missing(frame, start, stop)
        position = {frame: slot for slot, frame in enumerate(anchors)}
        position.update({frame: len(anchors) + frame - start for frame in range(start, stop)})
        # Masked slots (repeated sources) may point anywhere: map them to the chunk's first frame.
        pooled = torch.tensor([[position.get(int(f), len(anchors)) for f in row] for row in sources.tolist()],
                              dtype=torch.long)
        if anchors:
            key = torch.cat([torch.stack([cache["frames"][f][0] for f in anchors], dim=1), key], dim=1)
            value = torch.cat([torch.stack([cache["frames"][f][1] for f in anchors], dim=1), value], dim=1)
        out = pooled_attention(query, key, value, pooled, bias)
        tokens = query.shape[3]
        self.stats["peak_key_tokens"] = max(self.stats["peak_key_tokens"], int(torch.isfinite(bias).sum(1).max()) * tokens)
        # Keep exactly the anchors later chunks need (clones: a view would pin the whole chunk).
        kept = {}
        for frame in self.plan.keep[index]:
            if start <= frame < stop:
                slot = len(anchors) + frame - start
                kept[frame] = (key[:, slot].clone(), value[:, slot].clone())
            elif frame in cache["frames"]:
                kept[frame] = cache["frames"][frame]
        cache["frames"] = kept
        return out

    def _momentum(self, cache: dict, query, key, value, start: int, stop: int) -> torch.Tensor:
        """K''_i = mu K''_(i-1) + (1 - mu) K_i over the chunk, continuing from the cached
        K''/V'' of frame start - 1; grouped ``(G, c, h, N, d)`` -> ``(G, c, h, N, d)``."""
        if start == 0:
            blended_key, blended_value = apply_momentum(key, self.momentum), apply_momentum(value, self.momentum)
        else:
            state = cache["state"]
            if state is None or state[0] != start - 1:
                raise self._missing(start - 1, start, stop)

            def carry(previous: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
                # The state acts as frame 0 of the sequence: M[i, 0] = mu^i, the rest as in M.
                return apply_momentum(torch.cat([previous[:, None], tensor], dim=1), self.momentum)[:, 1:]

            blended_key, blended_value = carry(state[1], key), carry(state[2], value)
        groups, count, heads, tokens, head_dim = query.shape
        self.stats["peak_key_tokens"] = max(self.stats["peak_key_tokens"], tokens)
        cache["state"] = (stop - 1, blended_key[:, -1].clone(), blended_value[:, -1].clone())

        def flat(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.reshape(groups * count, heads, tokens, head_dim)

        out = _sdpa(flat(query), flat(blended_key), flat(blended_value))
        return out.reshape(groups, count, heads, tokens, head_dim)


# --- public API ------------------------------------------------------------------------


def processor_for(mode: str, **params) -> AttnProcessor2_0 | CrossViewAttnProcessor:
    """The attention processor for ``mode``; ``self`` gives the stock ``AttnProcessor2_0``.

    Params: ``views`` (V, None = the whole batch is one group), ``reference``,
    ``reference_weight``, ``policy``, ``anchors``, ``momentum``, ``score_bytes`` (extended:
    the bound on attention scores per kernel call, None: none). Validated here.
    """
    _check_mode(mode)
    params = _defaults(params)
    _check_params(**params)  # also for ``self``, so a bad value is never silently ignored
    if mode == "self":
        return AttnProcessor2_0()
    return CrossViewAttnProcessor(mode, **params)


def _defaults(params: dict) -> dict:
    known = dict(views=None, reference=0, reference_weight=1.0, policy=None, anchors=None, momentum=0.5,
                 score_bytes=None)
    unknown = set(params) - set(known)
    if unknown:
        raise TypeError(f"unknown attention parameter(s): {', '.join(sorted(unknown))}")
    return {**known, **params}


def _models(model) -> list:
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    for each in models:
        if each is not None and not hasattr(each, "set_attn_processor"):
            raise TypeError(f"model: {type(each).__name__} has no attention processors")
    return [each for each in models if each is not None]


@contextlib.contextmanager
def install(model, mode: str, **params) -> Iterator[object]:
    """Use ``mode`` on every ``attn1`` of ``model`` (a model or a list/tuple of models).

    Yields the installed processor. The previous processors (the same objects) are always
    restored on exit, also when the body raises. ``None`` entries in a list are skipped.
    """
    with install_processor(model, processor_for(mode, **params)) as processor:
        yield processor


@contextlib.contextmanager
def install_processor(model, processor) -> Iterator[object]:
    """Use ``processor`` (any attention processor) on every ``attn1`` of ``model``; restore
    the previous processors on exit, also when the body raises. See :func:`install`."""
    saved = []
    try:
        for each in _models(model):
            previous = each.attn_processors
            saved.append((each, previous))
            replaced = {name: processor if name.endswith(SELF_ATTENTION_SUFFIX) else current
                        for name, current in previous.items()}
            each.set_attn_processor(replaced)
        yield processor
    finally:
        for each, previous in reversed(saved):
            each.set_attn_processor(dict(previous))  # a copy: set_attn_processor pops from it
