"""Our multi-view sampler vs diffusers' ControlNet pipelines on the same batch.

8 views, mid-size UNets (so the UNet dominates, as with real checkpoints), the same
scheduler, steps and latents shape. SD 1.5 against ``StableDiffusionControlNetPipeline``:
surface noise + stock attention (target <= 1.05), and, reported alongside, extended and
neighbors attention (target <= 1.35 for neighbors). SDXL against
``StableDiffusionXLControlNetPipeline`` on an SDXL-shaped UNet (plain first level,
attention below, pooled text + size ids): surface noise + stock attention (target
<= 1.05), at views of 384 so its attention levels see 24 x 24 and 12 x 12 latents.
"""

from __future__ import annotations

import torch
from _common import MID_UNET, interleaved, report
from diffusers import DDIMScheduler, StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline

from zs_core import models, noise, sampler, scene
from zs_core.protocol import Request

VIEWS, SIZE, STEPS = 8, 256, 2
SDXL_SIZE = 384
# SDXL's layout at a fraction of its width: no attention at the first level, more
# transformer layers deeper down, head dimension 32-64 (SDXL: 64).
MID_SDXL_UNET = dict(
    block_out_channels=(64, 128, 256),
    attention_head_dim=(2, 4, 4),
    transformer_layers_per_block=(1, 2, 3),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=32,
)
BASE = dict(prompt="a weathered bronze statue", negative_prompt="blurry", steps=STEPS, seed=1)


def stock_call(pipeline, passes, size: int):
    """One stock pipeline run on the views' control images and fixed latents."""
    control = sampler.control_images(passes.depth)
    latents = noise.iid(VIEWS, (4, size // 8, size // 8), seed=1)

    def call():
        pipeline(prompt=[BASE["prompt"]] * VIEWS, negative_prompt=[BASE["negative_prompt"]] * VIEWS,
                 image=control, height=size, width=size, num_inference_steps=STEPS, guidance_scale=7.5,
                 latents=latents.clone(), output_type="np")

    return call


def ours_call(components, passes, attention: str):
    # No UV sync: this measures the sampler and its attention modes against the stock pipeline.
    request = Request(noise="surface", attention=attention, sync_strength=0.0, **BASE)
    return lambda: sampler.sample(components, request, passes)


def sd15_times() -> dict[str, float]:
    components = models.load_tiny(MID_UNET, device="cpu")
    passes = scene.sphere_scene(views=VIEWS, width=SIZE, height=SIZE)
    pipeline = StableDiffusionControlNetPipeline(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        unet=components.unet, controlnet=components.controlnet,
        scheduler=DDIMScheduler.from_config(components.scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    stock = stock_call(pipeline, passes, SIZE)
    stock()  # warm-up: first calls allocate
    ours_call(components, passes, "self")()
    return interleaved({"stock": stock, "self": ours_call(components, passes, "self"),
                        "extended": ours_call(components, passes, "extended"),
                        "neighbors": ours_call(components, passes, "neighbors")}, repeats=2)


def sdxl_times() -> dict[str, float]:
    components = models.load_tiny(MID_SDXL_UNET, device="cpu", family="sdxl")
    passes = scene.sphere_scene(views=VIEWS, width=SDXL_SIZE, height=SDXL_SIZE)
    pipeline = StableDiffusionXLControlNetPipeline(
        vae=components.vae, text_encoder=components.text_encoder, text_encoder_2=components.text_encoder_2,
        tokenizer=components.tokenizer, tokenizer_2=components.tokenizer_2, unet=components.unet,
        controlnet=components.controlnet, scheduler=DDIMScheduler.from_config(components.scheduler.config),
        add_watermarker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    stock = stock_call(pipeline, passes, SDXL_SIZE)
    stock()
    ours_call(components, passes, "self")()
    return interleaved({"stock": stock, "self": ours_call(components, passes, "self")}, repeats=2)


def main() -> None:
    torch.set_num_threads(torch.get_num_threads())
    times = sd15_times()
    for name, seconds in times.items():
        print(f"sd15 {name:>10}: {seconds:.2f} s ({seconds / times['stock']:.3f} x stock)")
    xl = sdxl_times()
    for name, seconds in xl.items():
        print(f"sdxl {name:>10}: {seconds:.2f} s ({seconds / xl['stock']:.3f} x stock)")
    report("sampler_overhead", times["self"], times["stock"], target=1.05, target_applies_to="ratio",
           extended_ratio=round(times["extended"] / times["stock"], 3),
           neighbors_ratio=round(times["neighbors"] / times["stock"], 3), neighbors_target=1.35,
           sdxl_seconds=round(xl["self"], 4), sdxl_baseline_seconds=round(xl["stock"], 4),
           sdxl_ratio=round(xl["self"] / xl["stock"], 3), sdxl_target=1.05, sdxl_size=SDXL_SIZE,
           views=VIEWS, size=SIZE, steps=STEPS)


if __name__ == "__main__":
    main()
