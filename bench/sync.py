"""The UV sync hook's share of one sampler step: 8 views of 512x512.

Timed: the hook on one step (x0 -> texture pyramid splat -> read back -> epsilon) against one
ControlNet + UNet evaluation of the same batch (both CFG halves) on the mid-size UNet
used by bench/sampler_overhead.py, measured in the same run. Target: share < 5%.
"""

from __future__ import annotations

import torch
from _common import MID_UNET, interleaved, report

from zs_core import models, noise, sampler, scene, sync
from zs_core.protocol import Request

VIEWS, SIZE = 8, 512


def main() -> None:
    components = models.load_tiny(MID_UNET, device="cpu")
    passes = scene.sphere_scene(views=VIEWS, width=SIZE, height=SIZE, texture_size=64)
    hook = sync.UVSync(passes, Request(sync_strength=1.0))
    scheduler = sampler.make_scheduler(components, "ddim")
    scheduler.set_timesteps(20)
    timestep = scheduler.timesteps[0]
    shape = (4, SIZE // 8, SIZE // 8)
    latents, eps = noise.iid(VIEWS, shape, seed=0), noise.iid(VIEWS, shape, seed=1)
    state = sampler.StepState(0, 20, timestep, latents, eps, scheduler)
    batch = torch.cat([latents] * 2)
    text = torch.randn(2 * VIEWS, 77, 32)
    control = sampler.control_images(passes.depth).repeat(2, 1, 1, 1)

    @torch.inference_mode()
    def model_step():
        down, mid = components.controlnet(batch, timestep, encoder_hidden_states=text, controlnet_cond=control,
                                          return_dict=False)
        components.unet(batch, timestep, encoder_hidden_states=text, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid)

    @torch.inference_mode()
    def sync_step():
        hook(state)

    sync_step()
    times = interleaved({"model": model_step, "sync": sync_step}, repeats=2)
    share = times["sync"] / (times["sync"] + times["model"])
    print(f"model step {times['model']:.2f} s, sync hook {times['sync'] * 1000:.1f} ms "
          f"({100 * share:.2f}% of a synced step; pyramid levels {hook.pyramid.sizes}, "
          f"{hook.pyramid.total_texels} latent texels)")
    report("sync", times["sync"], times["model"], target=0.05, target_applies_to="share",
           share=round(share, 4),
           target_note="sync share of one step", views=VIEWS, size=SIZE)


if __name__ == "__main__":
    main()
