"""(T) The built-in ``tiny`` and ``tiny-sdxl`` models: real diffusers / transformers classes,
small configs.

Nothing is downloaded: every component is built from a config with a fixed seed, and
the CLIP tokenizer's vocabulary and merges are generated here. Images they make are
noise-like (the weights are random), but every code path is the one a real SD1.5 (or
SDXL) + depth-ControlNet checkpoint takes, so tests and the demo exercise the real
pipeline. ``tiny-sdxl`` has SDXL's shape in small: two text encoders (CLIP and CLIP with
projection, of different widths), a UNet and ControlNet taking pooled text + size ids
("text_time"), no attention in the first level, more transformer layers deeper down.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

TINY_SEED = 20261122
TINY_SDXL_SEED = 20261123
# SDXL's size ids: original size, crop top-left, target size (2 numbers each).
SDXL_TIME_IDS = 6

BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# A handful of frequent prompt words get whole-word merges so the BPE path is exercised.
_MERGE_WORDS = ("the", "a", "of", "and", "stone", "wood", "metal", "red", "old", "texture", "photo")


def _byte_alphabet() -> list[str]:
    """CLIP's byte-to-unicode alphabet: 256 printable stand-ins, one per byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def build_tokenizer(pad_token: str = EOS) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over bytes plus whole-word merges for a few words. SD's tokenizers
    pad with the end token; SDXL's second one pads with "!" (pass ``pad_token="!"``)."""
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet]
    merges: list[tuple[str, str]] = []
    for word in _MERGE_WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        # Merge left to right: ("s","t") -> "st", ("st","o") -> "sto", ...
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            merged = pair[0] + pair[1]
            if pair not in merges:
                merges.append(pair)
            if merged not in tokens:
                tokens.append(merged)
            pieces = [merged] + pieces[2:]
    tokens += [BOS, EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, bos_token=BOS, eos_token=EOS,
                              pad_token=pad_token, unk_token=EOS)
    tokenizer.model_max_length = 77
    return tokenizer


def unet_config(cross_attention_dim: int = 32) -> dict:
    return dict(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def sdxl_unet_config(text_width: int = 96, pooled_width: int = 32, time_embed_dim: int = 8) -> dict:
    """SDXL's UNet layout in small: plain first level, cross-attention below with more
    transformer layers deeper down, linear projections, and the "text_time" added
    embedding of the pooled text ``(pooled_width,)`` plus 6 size ids."""
    return dict(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 4, 4),  # head counts, as SDXL's config names them
        use_linear_projection=True,
        cross_attention_dim=text_width,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=time_embed_dim * SDXL_TIME_IDS + pooled_width,
        norm_num_groups=8,
    )


def vae_config() -> dict:
    # Four down blocks: a scale factor of 8, matching ControlNet's 8x conditioning embedding.
    return dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )


def text_config(vocab_size: int, eos_token_id: int, bos_token_id: int, hidden_size: int = 32, layers: int = 2,
                pad_token_id: int | None = None, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        eos_token_id=eos_token_id,
        bos_token_id=bos_token_id,
        pad_token_id=eos_token_id if pad_token_id is None else pad_token_id,
        **extra,
    )


def scheduler() -> DDIMScheduler:
    """SD1.5's noise schedule (scaled linear betas, 1000 steps, epsilon prediction)."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def sdxl_scheduler() -> DDIMScheduler:
    """SDXL base's noise schedule (the values of its scheduler config that DDIM reads; the
    sampler builds the requested scheduler class from it)."""
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
                         timestep_spacing="leading", sample_max_value=1.0)


def build_controlnet(unet: UNet2DConditionModel) -> ControlNetModel:
    """A ControlNet copied from ``unet`` whose zero convolutions are made non-zero.

    A freshly initialised ControlNet adds exactly zero (its output convolutions start at
    zero), which would hide every control-path bug; small random weights make the depth
    map change the result as a trained one does.
    """
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32, 32))
    embedding = controlnet.controlnet_cond_embedding
    with torch.no_grad():
        # PyTorch's default conv init shrinks the signal at every layer; He init keeps the
        # depth map visible through the embedding's eight convolutions.
        for conv in (embedding.conv_in, *embedding.blocks):
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        torch.nn.init.normal_(embedding.conv_out.weight, std=0.1)
        torch.nn.init.zeros_(embedding.conv_out.bias)
        for conv in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
            torch.nn.init.normal_(conv.weight, std=0.1)
            torch.nn.init.zeros_(conv.bias)
    return controlnet


def build(unet_overrides: dict | None = None) -> dict:
    """All components of the tiny model, deterministic for a given config.

    Returns a dict with keys unet, controlnet, vae, text_encoder, tokenizer, scheduler.
    ``unet_overrides`` changes the UNet config (used by benchmarks for a mid-size model).
    """
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(TINY_SEED)
        tokenizer = build_tokenizer()
        config = unet_config()
        config.update(unet_overrides or {})
        text_encoder = CLIPTextModel(text_config(
            vocab_size=len(tokenizer.get_vocab()),
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        ))
        if config["cross_attention_dim"] != text_encoder.config.hidden_size:
            raise ValueError("unet_overrides: cross_attention_dim must stay 32 for the tiny text encoder")
        unet = UNet2DConditionModel(**config)
        vae = AutoencoderKL(**vae_config())
        controlnet = build_controlnet(unet)
    finally:
        torch.random.set_rng_state(generator_state)
    for module in (unet, vae, text_encoder, controlnet):
        module.eval()
    return dict(unet=unet, controlnet=controlnet, vae=vae, text_encoder=text_encoder,
                tokenizer=tokenizer, scheduler=scheduler())


def build_sdxl(unet_overrides: dict | None = None) -> dict:
    """All components of ``tiny-sdxl``, deterministic for a given config.

    Returns a dict with keys unet, controlnet, vae, text_encoder (CLIPTextModel, width 32),
    text_encoder_2 (CLIPTextModelWithProjection, width 64, projection 32), tokenizer,
    tokenizer_2, scheduler; the UNet's text width is 32 + 64 = 96 and its added embedding
    takes the 32-wide pooled text and 6 size ids. ``unet_overrides`` changes the UNet config
    (benchmarks use a mid-size one).
    """
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(TINY_SDXL_SEED)
        tokenizer, tokenizer_2 = build_tokenizer(), build_tokenizer(pad_token="!")
        ids = dict(vocab_size=len(tokenizer.get_vocab()), eos_token_id=tokenizer.eos_token_id,
                   bos_token_id=tokenizer.bos_token_id)
        # Three layers, so the penultimate hidden states SDXL reads are not the last ones.
        text_encoder = CLIPTextModel(text_config(**ids, hidden_size=32, layers=3))
        text_encoder_2 = CLIPTextModelWithProjection(text_config(
            **ids, hidden_size=64, layers=3, pad_token_id=tokenizer_2.pad_token_id, projection_dim=32))
        config = sdxl_unet_config(text_width=32 + 64, pooled_width=text_encoder_2.config.projection_dim)
        config.update(unet_overrides or {})
        unet = UNet2DConditionModel(**config)
        vae = AutoencoderKL(**vae_config(), scaling_factor=0.13025, force_upcast=True)  # SDXL VAE's values
        controlnet = build_controlnet(unet)
    finally:
        torch.random.set_rng_state(generator_state)
    for module in (unet, vae, text_encoder, text_encoder_2, controlnet):
        module.eval()
    return dict(unet=unet, controlnet=controlnet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler=sdxl_scheduler())
