"""(T) Cross-view / cross-frame self-attention for UNet and ControlNet.

Processors here replace diffusers' stock processor on the self-attention layers
(``attn1``) only; cross-attention (``attn2``) keeps the stock one. The batch is
``B = G * V``: G groups (2 for the classifier-free-guidance halves
``[uncond views..., cond views...]``, else 1) of V views or frames. Keys and values
are shared between the views of one group, never between groups.

Modes (:data:`MODES`):

- ``self``: the stock processor (``AttnProcessor2_0``).
- ``extended``: every view attends to the keys/values of all V views of its group.
- ``neighbors``: view i attends to views i-1, i, i+1 on the camera ring plus a
  ``reference`` view whose keys carry weight ``reference_weight`` (a log-weight logit bias).
- ``keyframes``: ``policy`` ``first`` (frame 0), ``first_previous`` (frames 0 and i-1),
  ``middle`` (frame V//2), or explicit ``anchors`` (those frames plus the frame itself).
- ``tma``: ZS2 temporal momentum, K''_i = mu K''_(i-1) + (1-mu) K_i (and the same for V),
  computed for all frames at once with :func:`momentum_matrix`.

Use :func:`install` as a context manager around the denoising loop.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

MODES = ("self", "extended", "neighbors", "keyframes", "tma")
POLICIES = ("first", "first_previous", "middle")
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
    """Sources ``(V, 4)`` = ring neighbours i-1, i, i+1 and the reference, with bias ``(V, 4)``.

    The reference slot's bias is log(w) (-inf for w = 0); when the reference is already a
    ring neighbour it is masked, so that view keeps weight 1.
    """
    index = torch.arange(views)
    ring = torch.stack([(index - 1) % views, index, (index + 1) % views], dim=1)
    sources = torch.cat([ring, torch.full((views, 1), reference)], dim=1)
    log_weight = math.log(reference_weight) if reference_weight > 0 else -math.inf
    bias = torch.zeros(views, 4)
    bias[:, 3] = log_weight
    return sources, deduplicated_bias(sources, bias)


def keyframe_sources(views: int, policy: str | None, anchors: Sequence[int] | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources ``(V, S)`` and bias ``(V, S)`` for a keyframe policy or explicit anchors."""
    index = torch.arange(views)
    if anchors is not None:
        fixed = torch.tensor(list(anchors), dtype=torch.long).expand(views, -1)
        sources = torch.cat([fixed, index[:, None]], dim=1)
    elif policy == "first_previous":
        # Frame 0 has no previous frame: its second slot repeats frame 0 and is masked.
        sources = torch.stack([torch.zeros_like(index), (index - 1).clamp(min=0)], dim=1)
    elif policy == "middle":
        sources = torch.full((views, 1), views // 2)
    else:  # first
        sources = torch.zeros(views, 1, dtype=torch.long)
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


def _check_params(views, reference, reference_weight, policy, anchors, momentum) -> None:
    if views is not None and (not isinstance(views, int) or views < 1):
        raise ValueError(f"views: expected a positive int or None, got {views!r}")
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


# --- the processor ---------------------------------------------------------------------


class CrossViewAttnProcessor:
    """Self-attention whose keys/values come from other views of the same group.

    Callable like ``AttnProcessor2_0`` and mirrors its spatial_norm, 4-D input,
    group_norm, norm_q/norm_k, output projection, residual and rescale handling; only the
    choice of keys/values differs. Given ``encoder_hidden_states`` (cross-attention) it
    behaves exactly like the stock processor.
    """

    def __init__(self, mode: str, *, views: int | None = None, reference: int = 0,
                 reference_weight: float = 1.0, policy: str | None = None,
                 anchors: Sequence[int] | None = None, momentum: float = 0.5):
        _check_mode(mode)
        if mode == "self":
            raise ValueError("mode: 'self' is the stock processor; use processor_for('self')")
        _check_params(views, reference, reference_weight, policy, anchors, momentum)
        self.mode = mode
        self.views = views
        self.reference = reference
        self.reference_weight = float(reference_weight)
        self.policy = policy or "first"
        self.anchors = None if anchors is None else tuple(int(a) for a in anchors)
        self.momentum = float(momentum)
        self._stock = AttnProcessor2_0()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r}, views={self.views})"

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None:
            return self._stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if attention_mask is not None:
            # A per-view key mask would have to be gathered along with the keys; nothing needs it.
            raise ValueError(f"attention_mask: not supported by the {self.mode!r} attention mode")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial_shape = hidden_states.shape if hidden_states.ndim == 4 else None
        if spatial_shape is not None:
            batch, channels, height, width = spatial_shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query, key, value = _heads_qkv(attn, hidden_states)
        groups, views = self.split_batch(query.shape[0])
        out = self.attend(query, key, value, groups, views)
        return _project_out(attn, out, residual, spatial_shape)

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
        if self.mode == "extended":
            return extended_attention(query, key, value, groups, views)
        if self.mode == "tma":
            return momentum_attention(query, key, value, groups, views, self.momentum)
        if self.mode == "neighbors":
            sources, bias = neighbor_sources(views, self.reference, self.reference_weight)
        else:
            sources, bias = keyframe_sources(views, self.policy, self.anchors)
        return gathered_attention(query, key, value, groups, sources, bias)


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
                       groups: int, views: int) -> torch.Tensor:
    """All views of a group in one sequence: ``(G*V, h, N, d)`` -> ``(G*V, h, N, d)``.

    Tokens are reshaped to ``(G, h, V*N, d)`` rather than copying all keys per view, so
    memory is the group's tokens plus whatever the SDPA kernel needs.
    """
    batch, heads, tokens, head_dim = query.shape

    def as_group(tensor: torch.Tensor) -> torch.Tensor:
        grouped = tensor.reshape(groups, views, heads, tokens, head_dim).transpose(1, 2)
        return grouped.reshape(groups, heads, views * tokens, head_dim)

    out = _sdpa(as_group(query), as_group(key), as_group(value))
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

    query, key, value ``(G*V, h, N, d)``; sources, bias ``(V, S)``. Views are processed in
    chunks so the gathered keys ``(G*c, h, S*N, d)`` stay within :data:`GATHER_BUDGET`.
    """
    batch, heads, tokens, head_dim = query.shape
    views, slots = sources.shape
    grouped = [t.reshape(groups, views, heads, tokens, head_dim) for t in (query, key, value)]
    sources = sources.to(query.device)
    bias = None if not bias.any() else bias.to(device=query.device, dtype=query.dtype)
    per_view = groups * slots * tokens * heads * head_dim
    chunk = max(1, GATHER_BUDGET // per_view)
    outputs = [
        _gathered_chunk(*grouped, sources[start:start + chunk],
                        None if bias is None else bias[start:start + chunk], start)
        for start in range(0, views, chunk)
    ]
    return torch.cat(outputs, dim=1).reshape(batch, heads, tokens, head_dim)


def _gathered_chunk(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, sources: torch.Tensor,
                    bias: torch.Tensor | None, start: int) -> torch.Tensor:
    """One chunk of c views: grouped ``(G, V, h, N, d)`` -> output ``(G, c, h, N, d)``."""
    groups, _, heads, tokens, head_dim = query.shape
    count, slots = sources.shape

    def gather(tensor: torch.Tensor) -> torch.Tensor:
        picked = tensor[:, sources]  # (G, c, S, h, N, d)
        return picked.transpose(2, 3).reshape(groups * count, heads, slots * tokens, head_dim)

    chunk_query = query[:, start:start + count].reshape(groups * count, heads, tokens, head_dim)
    mask = None
    if bias is not None:
        # (c, S) -> one additive bias per key token, the same for every group, head and query.
        mask = bias.repeat_interleave(tokens, dim=1).expand(groups, count, slots * tokens)
        mask = mask.reshape(groups * count, 1, 1, slots * tokens)
    out = _sdpa(chunk_query, gather(key), gather(value), mask)
    return out.reshape(groups, count, heads, tokens, head_dim)


# --- public API ------------------------------------------------------------------------


def processor_for(mode: str, **params) -> AttnProcessor2_0 | CrossViewAttnProcessor:
    """The attention processor for ``mode``; ``self`` gives the stock ``AttnProcessor2_0``.

    Params: ``views`` (V, None = the whole batch is one group), ``reference``,
    ``reference_weight``, ``policy``, ``anchors``, ``momentum``. Validated here.
    """
    _check_mode(mode)
    params = _defaults(params)
    _check_params(**params)  # also for ``self``, so a bad value is never silently ignored
    if mode == "self":
        return AttnProcessor2_0()
    return CrossViewAttnProcessor(mode, **params)


def _defaults(params: dict) -> dict:
    known = dict(views=None, reference=0, reference_weight=1.0, policy=None, anchors=None, momentum=0.5)
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
    processor = processor_for(mode, **params)
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
