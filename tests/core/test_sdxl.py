"""The SDXL family on the built-in tiny SDXL: saved as a diffusers folder, as single files and
into a hub cache, found and loaded by the real loading code with the family told from the
contents; equal to diffusers' StableDiffusionXLControlNetPipeline with every scheduler;
every attention mode, the grid and UV sync at SDXL's resolution."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLControlNetPipeline

from zs_core import families, metrics, models, noise, protocol, sampler, scene, step_noise
from zs_core.protocol import Request

VIEWS, SIZE, STEPS = 2, 64, 3
TCD_ETA = 0.3  # TCDScheduler.step's own default; diffusers' pipelines pass their eta argument instead


@pytest.fixture(scope="module")
def sdxl_dir(tiny_sdxl, tmp_path_factory):
    return models.save(tiny_sdxl, tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture(scope="module")
def single_files(tiny_sdxl, tmp_path_factory):
    """The model and the ControlNet as single files whose names say SD 1.5 (the family must
    come from the contents), alone in a folder."""
    folder = tmp_path_factory.mktemp("single")
    model, controlnet = folder / "sd15-model.safetensors", folder / "control_sd15_depth.safetensors"
    models.save_single_file(tiny_sdxl, model, controlnet)
    return model, controlnet


def put_in_hub_cache(cache: Path, repo_id: str, folder: Path, configs_only: bool = False) -> Path:
    """``folder``'s files as the snapshot of ``repo_id`` in a hub cache (huggingface_hub's layout)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    ignore = shutil.ignore_patterns("*.safetensors", "*.bin") if configs_only else None
    shutil.copytree(folder, snapshot, ignore=ignore, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text("0" * 40)
    return snapshot


@pytest.fixture(scope="module")
def passes():
    return scene.sphere_scene(views=VIEWS, width=SIZE, height=SIZE)


def request(**changes) -> Request:
    fields = dict(prompt="a brass lamp", negative_prompt="blurry", steps=STEPS, seed=5, noise="iid",
                  attention="self", sync_strength=0.0, guidance_scale=5.0)
    fields.update(changes)
    return Request(**fields).validate()


def outputs(components, seed=0):
    """UNet (with ControlNet residuals) noise prediction and text embeddings for one input."""
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    control = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        embeds, added = sampler.encode_prompt(components, "a red stone wall", "", True, (64, 64))
        down, mid = components.controlnet(latents, 500, encoder_hidden_states=embeds, controlnet_cond=control,
                                          added_cond_kwargs=added, return_dict=False)
        eps = components.unet(latents, 500, encoder_hidden_states=embeds, added_cond_kwargs=added,
                              down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    return embeds, added["text_embeds"], eps


def same_weights(first, second) -> None:
    for name in ("unet", "controlnet", "vae", "text_encoder", "text_encoder_2"):
        ours, theirs = getattr(first, name).state_dict(), getattr(second, name).state_dict()
        assert ours.keys() == theirs.keys(), name
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), (name, key)


# ------------------------------------------------------------------------- the tiny SDXL


def test_tiny_sdxl_has_sdxl_shape(tiny_sdxl):
    assert tiny_sdxl.family == "sdxl" and tiny_sdxl.pipeline_config == {"force_zeros_for_empty_prompt": True}
    assert type(tiny_sdxl.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    widths = tiny_sdxl.text_encoder.config.hidden_size, tiny_sdxl.text_encoder_2.config.hidden_size
    assert widths[0] != widths[1] and tiny_sdxl.unet.config.cross_attention_dim == sum(widths)
    assert tiny_sdxl.unet.config.addition_embed_type == tiny_sdxl.controlnet.config.addition_embed_type == "text_time"
    assert tiny_sdxl.unet.down_blocks[0].__class__.__name__ == "DownBlock2D"  # no attention at full latent size
    assert tiny_sdxl.tokenizer_2.pad_token == "!" and tiny_sdxl.tokenizer.pad_token == tiny_sdxl.tokenizer.eos_token
    embeds, pooled, _ = outputs(tiny_sdxl)
    assert embeds.shape == (2, 77, sum(widths)) and pooled.shape == (2, tiny_sdxl.text_encoder_2.config.projection_dim)
    assert torch.equal(embeds[0], torch.zeros_like(embeds[0]))  # empty negative prompt: zeros (SDXL base)


def test_prompt_encoding_is_diffusers_own(tiny_sdxl):
    """Embeddings, pooled embeddings and time ids equal what diffusers' SDXL pipeline makes."""
    pipeline = StableDiffusionXLControlNetPipeline(
        vae=tiny_sdxl.vae, text_encoder=tiny_sdxl.text_encoder, text_encoder_2=tiny_sdxl.text_encoder_2,
        tokenizer=tiny_sdxl.tokenizer, tokenizer_2=tiny_sdxl.tokenizer_2, unet=tiny_sdxl.unet,
        controlnet=tiny_sdxl.controlnet, scheduler=tiny_sdxl.scheduler, add_watermarker=False)
    for negative in ("blurry, low quality", ""):
        embeds, added = sampler.encode_prompt(tiny_sdxl, "a stone wall", negative, True, (48, 80))
        stock = pipeline.encode_prompt("a stone wall", device="cpu", negative_prompt=negative or None)
        torch.testing.assert_close(embeds, torch.cat([stock[1], stock[0]]), rtol=0, atol=1e-6)
        torch.testing.assert_close(added["text_embeds"], torch.cat([stock[3], stock[2]]), rtol=0, atol=1e-6)
    time_ids = pipeline._get_add_time_ids((48, 80), (0, 0), (48, 80), torch.float32,
                                          tiny_sdxl.text_encoder_2.config.projection_dim)
    torch.testing.assert_close(added["time_ids"], time_ids.repeat(2, 1))
    alone, added_alone = sampler.encode_prompt(tiny_sdxl, "a stone wall", "", False, (48, 80))
    assert alone.shape[0] == added_alone["time_ids"].shape[0] == 1 and torch.equal(alone[0], embeds[1])


# ------------------------------------------------------------------- formats and detection


def test_saved_folder_is_detected_and_loads_identically(tiny_sdxl, sdxl_dir):
    assert families.detect(str(sdxl_dir)) is families.SDXL
    assert families.inspect(str(sdxl_dir / "controlnet")).kind == families.CONTROLNET
    info = models.check_available(str(sdxl_dir), str(sdxl_dir / "controlnet"))
    assert info.family == "sdxl" and info.model.form == "folder" and info.to_download == ()
    loaded = models.load(str(sdxl_dir), str(sdxl_dir / "controlnet"), device="cpu")
    assert loaded.family == "sdxl" and loaded.pipeline_config == tiny_sdxl.pipeline_config
    same_weights(tiny_sdxl, loaded)
    for ours, theirs in zip(outputs(tiny_sdxl), outputs(loaded)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_single_files_are_told_apart_by_contents_not_names(single_files):
    model, controlnet = single_files
    for path, kind in ((model, families.PIPELINE), (controlnet, families.CONTROLNET)):
        found = families.inspect(str(path))
        assert (found.family, found.kind, found.form) == (families.SDXL, kind, families.SINGLE_FILE)
    names = families.tensor_names(model)
    assert any(n.startswith("conditioner.embedders.1.model.transformer.resblocks.") for n in names)
    assert any(n.startswith("model.diffusion_model.label_emb.") for n in names)


def test_single_files_load_with_a_config_folder_or_from_the_hub_cache(tiny_sdxl, sdxl_dir, single_files, tmp_path):
    """Offline, a single file needs its family's configs: a folder given as ``config``, or
    the family's reference repositories' configs (no weights) in the hub cache."""
    model, controlnet = single_files
    with_folder = models.load(str(model), str(sdxl_dir / "controlnet"), device="cpu", config=str(sdxl_dir))
    same_weights(tiny_sdxl, with_folder)
    put_in_hub_cache(tmp_path, families.SDXL.single_file_config, sdxl_dir, configs_only=True)
    put_in_hub_cache(tmp_path, families.SDXL.default_controlnet, sdxl_dir / "controlnet", configs_only=True)
    info = models.check_available(str(model), str(controlnet), cache_dir=tmp_path)
    assert info.model.config.startswith(str(tmp_path)) and info.controlnet.config.startswith(str(tmp_path))
    from_cache = models.load(str(model), str(controlnet), device="cpu", cache_dir=tmp_path)
    same_weights(tiny_sdxl, from_cache)
    assert from_cache.pipeline_config == {"force_zeros_for_empty_prompt": True}


def test_single_file_without_configs_names_them_and_the_command(single_files, tmp_path):
    model, controlnet = single_files
    with pytest.raises(models.ModelLoadError) as error:
        models.check_available(str(model), str(controlnet), cache_dir=tmp_path)
    message = str(error.value)
    repo = families.SDXL.single_file_config
    assert message.startswith("model:") and "\ncontrolnet:" in message
    assert f"hf download {repo} model_index.json unet/config.json" in message
    assert "text_encoder_2/config.json" in message and "tokenizer_2/vocab.json" in message
    assert f"hf download {families.SDXL.default_controlnet} config.json" in message
    assert "huggingface-cli" not in message


def test_hub_id_loads_through_the_cache(tiny_sdxl, sdxl_dir, tmp_path):
    put_in_hub_cache(tmp_path, "zs-test/tiny-sdxl", sdxl_dir)
    put_in_hub_cache(tmp_path, "zs-test/tiny-sdxl-depth", sdxl_dir / "controlnet")
    assert families.detect("zs-test/tiny-sdxl", cache_dir=tmp_path) is families.SDXL
    loaded = models.load("zs-test/tiny-sdxl", "zs-test/tiny-sdxl-depth", device="cpu", cache_dir=tmp_path)
    assert loaded.family == "sdxl" and loaded.name == "zs-test/tiny-sdxl"
    same_weights(tiny_sdxl, loaded)


def test_an_sd15_controlnet_for_an_sdxl_model_is_named(sdxl_dir, tiny_dir):
    with pytest.raises(models.ModelLoadError, match=r"^controlnet: .* Stable Diffusion 1.5 ControlNet but the model "
                                                    r"is Stable Diffusion XL"):
        models.check_available(str(sdxl_dir), str(tiny_dir / "controlnet"))
    with pytest.raises(models.ModelLoadError, match=r"^model: .* is a sdxl ControlNet, not a model"):
        models.check_available(str(sdxl_dir / "controlnet"))


def test_sdxl_default_controlnet_missing_offline_is_named(sdxl_dir, tmp_path):
    with pytest.raises(models.ModelLoadError) as error:
        models.check_available(str(sdxl_dir), cache_dir=tmp_path)
    message = str(error.value)
    assert message.startswith("controlnet:") and "\n" not in message
    assert (f"hf download {families.SDXL.default_controlnet} config.json diffusion_pytorch_model.safetensors"
            in message)


# --------------------------------------------------------------------------- the oracle


def stock_pipeline(components, scheduler, force_zeros: bool = True) -> StableDiffusionXLControlNetPipeline:
    pipeline = StableDiffusionXLControlNetPipeline(
        vae=components.vae, text_encoder=components.text_encoder, text_encoder_2=components.text_encoder_2,
        tokenizer=components.tokenizer, tokenizer_2=components.tokenizer_2, unet=components.unet,
        controlnet=components.controlnet, scheduler=scheduler, force_zeros_for_empty_prompt=force_zeros,
        add_watermarker=False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def stock_images(components, req: Request, passes, latents, scheduler, force_zeros: bool = True, **extra):
    """diffusers' SDXL ControlNet pipeline on the job's batch, the stochastic schedulers' step
    noise drawn as the sampler draws it (the job's noise model at the step's seed)."""
    def supply():
        seeded = dataclasses.replace(req, seed=step_noise.step_seed(req.seed, scheduler.step_index))
        return sampler.initial_noise(seeded, passes, 4, 8)

    pipeline = stock_pipeline(components, scheduler, force_zeros)
    with step_noise.drawn_from(scheduler, supply):
        return pipeline(
            prompt=[req.prompt] * passes.views,
            negative_prompt=[req.negative_prompt] * passes.views if req.negative_prompt else None,
            image=sampler.control_images(passes.depth), height=passes.height, width=passes.width,
            num_inference_steps=req.steps, guidance_scale=req.guidance_scale,
            controlnet_conditioning_scale=req.controlnet_scale, control_guidance_start=req.control_start,
            control_guidance_end=req.control_end, latents=latents.clone(), output_type="np",
            eta=TCD_ETA if req.scheduler == "tcd" else 0.0, **extra).images


@pytest.mark.parametrize("name", protocol.SCHEDULERS)
def test_equals_diffusers_sdxl_controlnet_pipeline_with_every_scheduler(tiny_sdxl, passes, name):
    req = request(scheduler=name, controlnet_scale=0.8, control_end=0.75)
    latents = noise.iid(VIEWS, (4, SIZE // 8, SIZE // 8), seed=11)
    ours = sampler.sample(tiny_sdxl, req, passes, latents=latents)
    stock = stock_images(tiny_sdxl, req, passes, latents, sampler.make_scheduler(tiny_sdxl, name))
    assert ours.images.shape == stock.shape == (VIEWS, SIZE, SIZE, 3)
    np.testing.assert_allclose(ours.images, stock, atol=5e-5, rtol=0)
    assert ours.images.std() > 1e-3


def test_empty_negative_prompt_and_size_ids_as_diffusers(tiny_sdxl, passes):
    """An empty negative prompt is diffusers' None (zeros with force_zeros_for_empty_prompt,
    else the encoded empty text); the size ids name the view size: other ids change the result."""
    req = request(negative_prompt="", steps=2)
    latents = noise.iid(VIEWS, (4, SIZE // 8, SIZE // 8), seed=12)
    zeros = sampler.sample(tiny_sdxl, req, passes, latents=latents)
    np.testing.assert_allclose(zeros.images, stock_images(tiny_sdxl, req, passes, latents,
                                                          sampler.make_scheduler(tiny_sdxl, "ddim")), atol=5e-5)
    encoded = dataclasses.replace(tiny_sdxl, pipeline_config={"force_zeros_for_empty_prompt": False})
    empty_text = sampler.sample(encoded, req, passes, latents=latents)
    np.testing.assert_allclose(empty_text.images, stock_images(tiny_sdxl, req, passes, latents,
                                                               sampler.make_scheduler(tiny_sdxl, "ddim"),
                                                               force_zeros=False), atol=5e-5)
    assert np.abs(zeros.latents - empty_text.latents).mean() > 1e-4
    other_size = stock_images(tiny_sdxl, req, passes, latents, sampler.make_scheduler(tiny_sdxl, "ddim"),
                              original_size=(4 * SIZE, 4 * SIZE))
    assert np.abs(other_size - zeros.images).max() > 1e-3


# ------------------------------------------------------------------ every mode at SDXL


def test_grid_size_ids_name_the_grid_image(tiny_sdxl, passes):
    grid = request(layout="grid")
    assert sampler.model_image_size(grid, passes) == (SIZE, 2 * SIZE)  # 2 views: 1 x 2 cells
    conditioning = sampler.condition(tiny_sdxl, grid, passes)
    assert conditioning.added["time_ids"].tolist() == [[SIZE, 2 * SIZE, 0, 0, SIZE, 2 * SIZE]] * 2
    result = sampler.sample(tiny_sdxl, grid, passes)
    assert result.images.shape == (VIEWS, SIZE, SIZE, 3) and np.isfinite(result.images).all()


@pytest.fixture(scope="module")
def self_attention_run(tiny_sdxl, passes):
    latents = noise.iid(VIEWS, (4, SIZE // 8, SIZE // 8), seed=3)
    return latents, sampler.sample(tiny_sdxl, request(steps=2), passes, latents=latents)


@pytest.mark.parametrize("attention", ["extended", "neighbors", "keyframes", "tma"])
def test_cross_view_attention_modes_run_on_sdxl(tiny_sdxl, passes, self_attention_run, attention):
    latents, stock = self_attention_run
    crossed = sampler.sample(tiny_sdxl, request(steps=2, attention=attention), passes, latents=latents)
    assert np.isfinite(crossed.images).all()
    assert np.abs(stock.latents - crossed.latents).mean() > 1e-5


@pytest.mark.parametrize("noise_mode", protocol.NOISE_MODES)
def test_every_noise_model_runs_on_sdxl(tiny_sdxl, passes, noise_mode):
    result = sampler.sample(tiny_sdxl, request(steps=1, noise=noise_mode), passes)
    assert result.initial_noise.shape == (VIEWS, tiny_sdxl.unet.config.in_channels, SIZE // 8, SIZE // 8)
    assert np.isfinite(result.images).all()


@pytest.mark.slow
def test_surface_noise_extended_attention_and_uv_sync_at_sdxl_resolution(tiny_sdxl):
    """Views of 1024 x 1024 (latents 128 x 128), two cameras a quarter turn apart: the
    surface noise, extended attention over 2 x 16384 latent pixels and UV sync run end to
    end, and the synced views agree on the surface they share better than their (already
    shared) starting noise did; without sync one step leaves that agreement as it was."""
    world_to_camera, projection = scene.ring_cameras(4, 3.2, 20.0, 50.0, 1024, 1024)
    passes = scene.render_sphere(world_to_camera[:2], projection[:2], 1024, 1024)
    req = Request(prompt="a brass lamp", steps=1, seed=5, noise="surface", attention="extended",
                  sync_strength=1.0, guidance_scale=1.0).validate()
    seen = []
    result = sampler.sample(tiny_sdxl, req, passes, progress=seen.append)
    assert result.images.shape == (2, 1024, 1024, 3) and result.latents.shape == (2, 4, 128, 128)
    assert np.isfinite(result.images).all() and seen[-1].step == 1
    uv, mask = metrics.downsample_correspondence(passes.uv, passes.mask, 8)

    def disagreement(latents: torch.Tensor) -> float:
        return metrics.cross_view_disagreement(latents.permute(0, 2, 3, 1).numpy(), uv, mask, texels=128)

    start, iid = disagreement(result.initial_noise), disagreement(noise.iid(2, (4, 128, 128), seed=1))
    assert start < 0.85 * iid  # surface noise: shared through UV
    assert disagreement(result.latents) < 0.85 * start  # and UV sync fused the views further
