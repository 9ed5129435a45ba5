"""Cross-view attention processors: equivalences with the stock processor, an explicit
softmax oracle for every mode, CFG-group isolation, and install/restore of processors."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from zs_core import attention

TIMESTEP = 500
ATOL = 1e-5


# --- helpers ---------------------------------------------------------------------------


def cfg_inputs(views: int, seed: int = 0, identical: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents ``(2V, 4, 16, 16)`` and text ``(2V, 77, 32)`` laid out [uncond x V, cond x V]."""
    generator = torch.Generator().manual_seed(seed)
    if identical:
        latents = torch.randn(2, 4, 16, 16, generator=generator).repeat_interleave(views, dim=0)
    else:
        latents = torch.randn(2 * views, 4, 16, 16, generator=generator)
    text = torch.randn(2, 77, 32, generator=generator).repeat_interleave(views, dim=0)
    return latents, text


def unet_eps(unet, latents, text, mode: str | None = None, **params) -> torch.Tensor:
    """UNet noise prediction, with ``mode`` installed (stock processors if None)."""
    installed = attention.install(unet, mode, **params) if mode else contextlib.nullcontext()
    with torch.inference_mode(), installed:
        return unet(latents, TIMESTEP, encoder_hidden_states=text).sample


def controlnet_mid(controlnet, latents, text, mode: str | None = None, **params) -> torch.Tensor:
    control = torch.rand(latents.shape[0], 3, 128, 128, generator=torch.Generator().manual_seed(3))
    installed = attention.install(controlnet, mode, **params) if mode else contextlib.nullcontext()
    with torch.inference_mode(), installed:
        _, mid = controlnet(latents, TIMESTEP, encoder_hidden_states=text, controlnet_cond=control,
                            return_dict=False)
    return mid


def first_self_attention(tiny) -> Attention:
    return tiny.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1


def hidden_states(batch: int, seed: int = 1, tokens: int = 64, channels: int = 32) -> torch.Tensor:
    return torch.randn(batch, tokens, channels, generator=torch.Generator().manual_seed(seed))


def oracle(attn: Attention, hidden: torch.Tensor, views: int, weights) -> torch.Tensor:
    """Explicit softmax: view i's query sees view j's keys with weight ``weights[i][j]`` (0 = not).

    hidden ``(G*V, N, C)``; weights a ``V x V`` nested list; returns ``(G*V, N, C)``.
    """
    batch, tokens, channels = hidden.shape
    heads = attn.heads
    head_dim = channels // heads
    query, key, value = (f(hidden).view(batch, tokens, heads, head_dim).transpose(1, 2)
                         for f in (attn.to_q, attn.to_k, attn.to_v))
    out = torch.empty_like(query)
    for group in range(batch // views):
        for i in range(views):
            used = [j for j in range(views) if weights[i][j] > 0]
            keys = torch.cat([key[group * views + j] for j in used], dim=1)  # (h, S*N, d)
            values = torch.cat([value[group * views + j] for j in used], dim=1)
            log_weight = torch.cat([torch.full((tokens,), math.log(weights[i][j])) for j in used])
            logits = query[group * views + i] @ keys.transpose(-1, -2) / math.sqrt(head_dim) + log_weight
            out[group * views + i] = logits.softmax(dim=-1) @ values
    return attn.to_out[0](out.transpose(1, 2).reshape(batch, tokens, channels))


def neighbor_weights(views: int, reference: int, weight: float) -> list[list[float]]:
    """docs/methods.md, written out: ring neighbours weight 1, the reference ``weight`` in
    every other view (a ring neighbour too), a view's own keys weight 1."""
    weights = [[0.0] * views for _ in range(views)]
    for i in range(views):
        for j in (i - 1, i + 1):
            weights[i][j % views] = 1.0
        weights[i][reference] = weight
        weights[i][i] = 1.0
    return weights


def keyframe_weights(views: int, policy: str | None, anchors=None) -> list[list[float]]:
    weights = [[0.0] * views for _ in range(views)]
    for i in range(views):
        if anchors is not None:
            sources = [*anchors, i]
        else:
            sources = {"first": [0], "first_previous": [0, max(i - 1, 0)], "middle": [views // 2]}[policy]
        for j in sources:
            weights[i][j] = 1.0
    return weights


# --- pure functions --------------------------------------------------------------------


@pytest.mark.parametrize("mu", [0.0, 0.3, 0.75, 1.0])
def test_momentum_matrix_form_equals_the_recursion(mu):
    keys = torch.randn(7, 3, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    matrix = attention.momentum_matrix(7, mu, dtype=torch.float64)
    assert torch.allclose(torch.einsum("ij,j...->i...", matrix, keys), attention.momentum_recursive(keys, mu))
    assert torch.allclose(matrix.sum(dim=1), torch.ones(7, dtype=torch.float64))
    assert torch.equal(matrix, matrix.tril())
    grouped = torch.stack([keys, 2 * keys])  # (G, V, ...): groups are blended separately
    blended = attention.apply_momentum(grouped, mu)
    assert torch.allclose(blended[1], 2 * attention.momentum_recursive(keys, mu))


def test_momentum_matrix_extremes():
    assert torch.equal(attention.momentum_matrix(4, 0.0), torch.eye(4))
    first = torch.zeros(4, 4)
    first[:, 0] = 1
    assert torch.equal(attention.momentum_matrix(4, 1.0), first)
    assert attention.momentum_matrix(3, 0.5)[2].tolist() == [0.25, 0.25, 0.5]


# --- the processor against an explicit oracle ------------------------------------------


@pytest.mark.parametrize("views", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("reference,weight", [(0, 1.0), (0, 0.0), (0, 2.5), (2, 0.5), (5, 4.0)])
def test_neighbors_matches_the_weighted_softmax_oracle(tiny, views, reference, weight):
    reference = min(reference, views - 1)  # also covers "the reference is a ring neighbour"
    attn = first_self_attention(tiny)
    hidden = hidden_states(2 * views)
    processor = attention.processor_for("neighbors", views=views, reference=reference, reference_weight=weight)
    with torch.inference_mode():
        expected = oracle(attn, hidden, views, neighbor_weights(views, reference, weight))
        assert torch.allclose(processor(attn, hidden), expected, atol=ATOL)


@pytest.mark.parametrize("views", [1, 2, 5])
@pytest.mark.parametrize("policy,anchors", [("first", None), ("first_previous", None), ("middle", None),
                                            (None, [0]), (None, [0, 1]), (None, [])])
def test_keyframes_matches_the_oracle(tiny, views, policy, anchors):
    if anchors is not None:
        anchors = [anchor % views for anchor in anchors]  # with one view: a repeated anchor
    attn = first_self_attention(tiny)
    hidden = hidden_states(2 * views)
    processor = attention.processor_for("keyframes", views=views, policy=policy, anchors=anchors)
    with torch.inference_mode():
        expected = oracle(attn, hidden, views, keyframe_weights(views, policy, anchors))
        assert torch.allclose(processor(attn, hidden), expected, atol=ATOL)


def test_extended_matches_the_oracle(tiny):
    attn = first_self_attention(tiny)
    hidden = hidden_states(2 * 3)
    with torch.inference_mode():
        expected = oracle(attn, hidden, 3, [[1.0] * 3] * 3)
        assert torch.allclose(attention.processor_for("extended", views=3)(attn, hidden), expected, atol=ATOL)


def test_extended_in_bounded_memory_matches_the_oracle(tiny):
    """With a bound on the scores a kernel holds, the queries go in chunks (several here:
    the bound fits a few queries' scores), each over all keys: the same result."""
    attn = first_self_attention(tiny)
    hidden = hidden_states(2 * 3)
    tokens = hidden.shape[1]
    score_bytes = 2 * attn.heads * (3 * tokens) * 4 * 8  # 8 queries' scores of both groups, float32
    processor = attention.processor_for("extended", views=3, score_bytes=score_bytes)
    with torch.inference_mode():
        expected = oracle(attn, hidden, 3, [[1.0] * 3] * 3)
        assert torch.allclose(processor(attn, hidden), expected, atol=ATOL)
    with pytest.raises(ValueError, match="score_bytes"):
        attention.processor_for("extended", views=3, score_bytes=0)


@pytest.mark.parametrize("mu", [0.2, 0.6])
def test_tma_matches_the_recursive_definition(tiny, mu):
    attn = first_self_attention(tiny)
    views, heads = 4, attn.heads
    hidden = hidden_states(2 * views)
    batch, tokens, channels = hidden.shape
    with torch.inference_mode():
        query, key, value = (f(hidden).view(batch, tokens, heads, -1).transpose(1, 2)
                             for f in (attn.to_q, attn.to_k, attn.to_v))
        key, value = (torch.cat([attention.momentum_recursive(half, mu) for half in t.split(views)])
                      for t in (key, value))
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value)
        expected = attn.to_out[0](out.transpose(1, 2).reshape(batch, tokens, channels))
        actual = attention.processor_for("tma", views=views, momentum=mu)(attn, hidden)
    assert torch.allclose(actual, expected, atol=ATOL)


def test_chunked_gathering_equals_one_chunk(tiny, monkeypatch):
    attn = first_self_attention(tiny)
    hidden = hidden_states(2 * 5)
    processors = [attention.processor_for("neighbors", views=5, reference=2, reference_weight=0.5),
                  attention.processor_for("keyframes", views=5, policy="first_previous")]
    with torch.inference_mode():
        whole = [p(attn, hidden) for p in processors]
        monkeypatch.setattr(attention, "GATHER_BUDGET", 1)  # one view per chunk
        chunked = [p(attn, hidden) for p in processors]
    for a, b in zip(whole, chunked):
        assert torch.allclose(a, b, atol=1e-6)


def test_neighbors_ignore_views_that_are_neither_neighbours_nor_the_reference(tiny):
    attn = first_self_attention(tiny)
    views = 6
    hidden = hidden_states(2 * views)
    far = hidden.clone()
    far[views + 4] += 1.0  # cond view 4: not a neighbour of view 2 nor the reference 0
    reference_changed = hidden.clone()
    reference_changed[views + 0] += 1.0
    weighted = attention.processor_for("neighbors", views=views, reference=0, reference_weight=1.0)
    unweighted = attention.processor_for("neighbors", views=views, reference=0, reference_weight=0.0)
    with torch.inference_mode():
        base = weighted(attn, hidden)
        perturbed = weighted(attn, far)
        # view 2 sees 1, 2, 3 and the reference 0; view 0 sees 5, 0, 1
        assert torch.equal(perturbed[views + 2], base[views + 2])
        assert torch.equal(perturbed[views + 0], base[views + 0])
        assert torch.equal(perturbed[:views], base[:views])
        for neighbour in (3, 4, 5):
            assert not torch.allclose(perturbed[views + neighbour], base[views + neighbour], atol=1e-4)
        # the reference matters with weight 1 and not with weight 0
        assert not torch.allclose(weighted(attn, reference_changed)[views + 2], base[views + 2], atol=1e-4)
        assert torch.equal(unweighted(attn, reference_changed)[views + 2], unweighted(attn, hidden)[views + 2])


def test_processor_mirrors_the_stock_norms_4d_input_residual_and_rescale():
    torch.manual_seed(4)
    attn = Attention(query_dim=32, heads=4, dim_head=8, bias=True, norm_num_groups=8, spatial_norm_dim=6,
                     qk_norm="layer_norm", residual_connection=True, rescale_output_factor=2.0).eval()
    with torch.no_grad():  # non-trivial norm affine parameters
        for module in (attn.norm_q, attn.norm_k, attn.group_norm):
            module.weight.normal_()
            module.bias.normal_()
    hidden = torch.randn(3, 32, 4, 4)
    temb = torch.randn(3, 6, 2, 2)
    with torch.no_grad():
        expected = AttnProcessor2_0()(attn, hidden, temb=temb)
        for processor in (attention.processor_for("tma", views=3, momentum=0.0),
                          attention.processor_for("extended", views=1),
                          attention.processor_for("keyframes", views=3, anchors=[])):
            assert torch.allclose(processor(attn, hidden, temb=temb), expected, atol=ATOL)
        # cross-attention keeps the stock computation
        context = torch.randn(3, 5, 32)
        stock_cross = AttnProcessor2_0()(attn, hidden, context, temb=temb)
        ours = attention.processor_for("extended", views=3)(attn, hidden, context, temb=temb)
        assert torch.equal(ours, stock_cross)


# --- whole-UNet equivalences -----------------------------------------------------------


def test_tma_with_zero_momentum_is_stock_self_attention(tiny):
    latents, text = cfg_inputs(4)
    expected = unet_eps(tiny.unet, latents, text)
    assert torch.allclose(unet_eps(tiny.unet, latents, text, "tma", views=4, momentum=0.0), expected, atol=ATOL)
    assert torch.allclose(unet_eps(tiny.unet, latents, text, "self", views=4), expected, atol=ATOL)


def test_tma_with_full_momentum_is_first_frame_attention(tiny):
    latents, text = cfg_inputs(4)
    first = unet_eps(tiny.unet, latents, text, "keyframes", views=4, policy="first")
    assert torch.allclose(unet_eps(tiny.unet, latents, text, "tma", views=4, momentum=1.0), first, atol=ATOL)


@pytest.mark.parametrize("mode", ["extended", "neighbors", "tma"])
def test_identical_views_reproduce_stock(tiny, mode):
    latents, text = cfg_inputs(4, identical=True)
    expected = unet_eps(tiny.unet, latents, text)
    assert torch.allclose(unet_eps(tiny.unet, latents, text, mode, views=4, momentum=0.4), expected, atol=ATOL)


@pytest.mark.parametrize("policy,frame", [("first", 0), ("first_previous", 0), ("middle", 2)])
def test_the_keyframe_itself_is_unchanged(tiny, policy, frame):
    views = 4
    latents, text = cfg_inputs(views)
    expected = unet_eps(tiny.unet, latents, text)
    actual = unet_eps(tiny.unet, latents, text, "keyframes", views=views, policy=policy)
    for index in (frame, views + frame):  # in both CFG halves
        assert torch.allclose(actual[index], expected[index], atol=ATOL)


def test_neighbors_with_reference_weight_one_on_three_views_is_extended(tiny):
    latents, text = cfg_inputs(3)
    extended = unet_eps(tiny.unet, latents, text, "extended", views=3)
    neighbors = unet_eps(tiny.unet, latents, text, "neighbors", views=3, reference_weight=1.0)
    assert torch.allclose(neighbors, extended, atol=ATOL)


@pytest.mark.parametrize("weight", [0.0, 3.0])
def test_a_reference_that_is_a_ring_neighbour_gets_the_reference_weight(tiny, weight):
    # Three views: everyone is everyone's ring neighbour, so the weight is all that moves them.
    attn = first_self_attention(tiny)
    hidden = hidden_states(2 * 3)
    weighted = attention.processor_for("neighbors", views=3, reference=0, reference_weight=weight)
    with torch.inference_mode():
        extended = attention.processor_for("extended", views=3)(attn, hidden)
        actual = weighted(attn, hidden)
        expected = oracle(attn, hidden, 3, [[1.0, 1.0, 1.0], [weight, 1.0, 1.0], [weight, 1.0, 1.0]])
    assert torch.allclose(actual, expected, atol=ATOL)
    for half in (0, 3):  # the reference itself keeps its own keys at weight 1; the others do not
        assert torch.allclose(actual[half], extended[half], atol=ATOL)
        assert not torch.allclose(actual[half + 1], extended[half + 1], atol=1e-4)


@pytest.mark.parametrize("mode,params", [
    ("extended", {}),
    ("neighbors", {}),
    ("neighbors", dict(reference=2, reference_weight=3.0)),
    ("keyframes", dict(policy="first")),
    ("keyframes", dict(policy="first_previous")),
    ("keyframes", dict(policy="middle")),
    ("keyframes", dict(anchors=[0, 3])),
    ("tma", dict(momentum=0.5)),
])
def test_cross_view_modes_change_the_output_when_views_differ(tiny, mode, params):
    latents, text = cfg_inputs(5)
    stock = unet_eps(tiny.unet, latents, text)
    crossed = unet_eps(tiny.unet, latents, text, mode, views=5, **params)
    assert (crossed - stock).abs().max() > 1e-3


@pytest.mark.parametrize("mode,params", [
    ("extended", {}),
    ("neighbors", dict(reference=1, reference_weight=2.0)),
    ("keyframes", dict(policy="first_previous")),
    ("tma", dict(momentum=0.5)),
])
def test_cfg_halves_never_mix(tiny, mode, params):
    views = 4
    latents, text = cfg_inputs(views)
    changed = latents.clone()
    changed[:views] = torch.randn(views, 4, 16, 16, generator=torch.Generator().manual_seed(9))
    base = unet_eps(tiny.unet, latents, text, mode, views=views, **params)
    other = unet_eps(tiny.unet, changed, text, mode, views=views, **params)
    assert torch.allclose(other[views:], base[views:], atol=1e-6)
    assert not torch.allclose(other[:views], base[:views], atol=1e-3)
    mid = controlnet_mid(tiny.controlnet, latents, text, mode, views=views, **params)
    other_mid = controlnet_mid(tiny.controlnet, changed, text, mode, views=views, **params)
    assert torch.allclose(other_mid[views:], mid[views:], atol=1e-6)


def test_without_views_the_whole_batch_is_one_group(tiny):
    latents, text = cfg_inputs(2)  # 4 samples
    whole = unet_eps(tiny.unet, latents, text, "extended")
    assert torch.allclose(whole, unet_eps(tiny.unet, latents, text, "extended", views=4), atol=ATOL)
    assert not torch.allclose(whole, unet_eps(tiny.unet, latents, text, "extended", views=2), atol=1e-3)


# --- install / restore -----------------------------------------------------------------


def test_install_sets_only_self_attention_and_restores_the_same_objects(tiny):
    models = [tiny.unet, tiny.controlnet]
    before = [model.attn_processors for model in models]
    with attention.install(models, "extended", views=2) as processor:
        for model, previous in zip(models, before):
            during = model.attn_processors
            assert during.keys() == previous.keys()
            for name, current in during.items():
                if name.endswith("attn1.processor"):
                    assert current is processor
                else:
                    assert current is previous[name]
    for model, previous in zip(models, before):
        after = model.attn_processors
        assert all(after[name] is previous[name] for name in previous)


def test_install_restores_when_the_body_raises(tiny):
    before = tiny.unet.attn_processors
    with pytest.raises(RuntimeError, match="boom"):
        with attention.install(tiny.unet, "tma", views=2, momentum=0.5):
            raise RuntimeError("boom")
    assert all(tiny.unet.attn_processors[name] is processor for name, processor in before.items())
    # nested installs unwind to the outer one, then to the original
    with attention.install(tiny.unet, "extended") as outer:
        with attention.install(tiny.unet, "tma"):
            pass
        assert tiny.unet.attn_processors["mid_block.attentions.0.transformer_blocks.0.attn1.processor"] is outer
    assert all(tiny.unet.attn_processors[name] is processor for name, processor in before.items())


def test_install_works_on_the_controlnet_and_restores_it(tiny):
    views = 2
    latents, text = cfg_inputs(views)
    stock = controlnet_mid(tiny.controlnet, latents, text)
    crossed = controlnet_mid(tiny.controlnet, latents, text, "extended", views=views)
    assert (crossed - stock).abs().max() > 1e-4
    assert torch.equal(controlnet_mid(tiny.controlnet, latents, text), stock)


# --- errors ----------------------------------------------------------------------------


def test_unknown_mode_names_mode_and_lists_the_modes(tiny):
    with pytest.raises(ValueError, match="^mode") as error:
        with attention.install(tiny.unet, "global"):
            pass
    assert all(mode in str(error.value) for mode in attention.MODES)


@pytest.mark.parametrize("mode,params,name", [
    ("tma", dict(momentum=1.5), "momentum"),
    ("tma", dict(momentum=-0.1), "momentum"),
    ("neighbors", dict(reference_weight=-1.0), "reference_weight"),
    ("neighbors", dict(views=4, reference=4), "reference"),
    ("neighbors", dict(reference=-1), "reference"),
    ("keyframes", dict(policy="last"), "policy"),
    ("keyframes", dict(views=4, anchors=[0, 5]), "anchors"),
    ("keyframes", dict(policy="first", anchors=[0]), "anchors"),
    ("extended", dict(views=0), "views"),
    ("self", dict(momentum=2.0), "momentum"),
])
def test_bad_parameters_name_the_parameter(tiny, mode, params, name):
    before = tiny.unet.attn_processors
    with pytest.raises(ValueError, match=f"^{name}:"):
        with attention.install(tiny.unet, mode, **params):
            pass
    assert all(tiny.unet.attn_processors[key] is processor for key, processor in before.items())


@pytest.mark.parametrize("mode,params,name", [
    ("extended", dict(views=3), "views"),  # a batch of 4 is not groups of 3
    ("neighbors", dict(reference=5), "reference"),  # views=None: 4 views in the batch
    ("keyframes", dict(anchors=[7]), "anchors"),
])
def test_call_time_errors_name_the_parameter_and_still_restore(tiny, mode, params, name):
    latents, text = cfg_inputs(2)
    before = tiny.unet.attn_processors
    with pytest.raises(ValueError, match=f"^{name}:"):
        unet_eps(tiny.unet, latents, text, mode, **params)
    assert all(tiny.unet.attn_processors[key] is processor for key, processor in before.items())
