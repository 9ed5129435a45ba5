"""Our multi-view sampler vs diffusers' StableDiffusionControlNetPipeline on the same batch.

8 views, a mid-size UNet (so the UNet dominates, as with real checkpoints), the same
scheduler, steps and latents shape. Ratios: surface noise + stock attention (target
<= 1.05), and, reported alongside, extended and neighbors attention (target <= 1.35
for neighbors).
"""

from __future__ import annotations

import torch
from _common import interleaved, report
from diffusers import DDIMScheduler, StableDiffusionControlNetPipeline

from zs_core import models, noise, sampler, scene
from zs_core.protocol import Request

VIEWS, SIZE, STEPS = 8, 256, 2
# Head dimensions 32-64 like SD1.5's 40-160 (attention_head_dim is the head count here),
# so attention takes a realistic share of the UNet's time.
MID_UNET = dict(
    block_out_channels=(128, 256, 256),
    attention_head_dim=4,
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3,
    up_block_types=("CrossAttnUpBlock2D",) * 3,
)


def main() -> None:
    torch.set_num_threads(torch.get_num_threads())
    components = models.load_tiny(MID_UNET, device="cpu")
    passes = scene.sphere_scene(views=VIEWS, width=SIZE, height=SIZE)
    control = sampler.control_images(passes.depth)
    base = dict(prompt="a weathered bronze statue", negative_prompt="blurry", steps=STEPS, seed=1)
    pipeline = StableDiffusionControlNetPipeline(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        unet=components.unet, controlnet=components.controlnet,
        scheduler=DDIMScheduler.from_config(components.scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    latents = noise.iid(VIEWS, (4, SIZE // 8, SIZE // 8), seed=1)

    def stock():
        pipeline(prompt=[base["prompt"]] * VIEWS, negative_prompt=[base["negative_prompt"]] * VIEWS,
                 image=control, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=7.5,
                 latents=latents.clone(), output_type="np")

    def ours(attention):
        # No UV sync: this measures the attention modes against the stock pipeline.
        request = Request(noise="surface", attention=attention, sync_strength=0.0, **base)
        return lambda: sampler.sample(components, request, passes)

    stock()  # warm-up: first calls allocate
    ours("self")()
    times = interleaved({"stock": stock, "self": ours("self"), "extended": ours("extended"),
                         "neighbors": ours("neighbors")}, repeats=2)
    for name, seconds in times.items():
        print(f"{name:>10}: {seconds:.2f} s ({seconds / times['stock']:.3f} x stock)")
    report("sampler_overhead", times["self"], times["stock"], target=1.05,
           extended_ratio=round(times["extended"] / times["stock"], 3),
           neighbors_ratio=round(times["neighbors"] / times["stock"], 3), neighbors_target=1.35,
           views=VIEWS, size=SIZE, steps=STEPS)


if __name__ == "__main__":
    main()
