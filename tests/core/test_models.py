"""Model loading: built-in tiny, local folders, hub ids offline, single files, devices; the
check before loading that names every missing file; the family told from the contents."""

from __future__ import annotations

import pytest
import torch

from zs_core import families, models


def unet_and_controlnet_outputs(components, seed=0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 16, 16, generator=generator)
    tokens = components.tokenizer(["a red stone wall", ""], padding="max_length",
                                  max_length=77, return_tensors="pt").input_ids
    control = torch.rand(2, 3, 128, 128, generator=generator)
    with torch.inference_mode():
        text = components.text_encoder(tokens)[0]
        down, mid = components.controlnet(latents, 500, encoder_hidden_states=text, controlnet_cond=control,
                                          return_dict=False)
        eps = components.unet(latents, 500, encoder_hidden_states=text, down_block_additional_residuals=down,
                              mid_block_additional_residual=mid).sample
        image = components.vae.decode(latents).sample
    return text, eps, image


def test_tiny_is_deterministic_and_uses_real_classes(tiny):
    again = models.load("tiny", device="cpu")
    for first, second in zip(unet_and_controlnet_outputs(tiny), unet_and_controlnet_outputs(again)):
        assert torch.equal(first, second)
    assert type(tiny.unet).__name__ == "UNet2DConditionModel"
    assert type(tiny.controlnet).__name__ == "ControlNetModel"
    assert type(tiny.vae).__name__ == "AutoencoderKL"
    assert type(tiny.text_encoder).__name__ == "CLIPTextModel"
    assert type(tiny.tokenizer).__name__ == "CLIPTokenizer"
    assert type(tiny.scheduler).__name__ == "DDIMScheduler"
    assert tiny.vae_scale_factor == 8
    assert tiny.tokenizer.model_max_length == 77


def test_tiny_controlnet_responds_to_the_control_image(tiny):
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    text = torch.zeros(1, 77, 32)
    ramp = torch.linspace(0.0, 1.0, 128)
    outputs = []
    # Two depth-like ramps in different directions: a working control path tells them apart.
    for control in (ramp.view(1, 1, 1, 128).expand(1, 3, 128, 128), ramp.view(1, 1, 128, 1).expand(1, 3, 128, 128)):
        with torch.inference_mode():
            _, mid = tiny.controlnet(latents, 10, encoder_hidden_states=text, controlnet_cond=control,
                                     return_dict=False)
        outputs.append(mid)
    assert (outputs[0] - outputs[1]).abs().mean() > 1e-2 * outputs[0].abs().mean()


def test_tokenizer_round_trip_and_merges(tiny):
    ids = tiny.tokenizer("a red stone texture").input_ids
    assert ids[0] == tiny.tokenizer.bos_token_id and ids[-1] == tiny.tokenizer.eos_token_id
    assert tiny.tokenizer.decode(ids, skip_special_tokens=True).strip() == "a red stone texture"
    # whole-word merges: "stone" is one token, an unknown word is split into characters
    assert len(tiny.tokenizer("stone").input_ids) == 3
    assert len(tiny.tokenizer("zyx").input_ids) == 5


def test_saved_folder_loads_back_with_identical_outputs(tiny, tiny_dir):
    loaded = models.load(str(tiny_dir), str(tiny_dir / "controlnet"), device="cpu")
    assert loaded.name == str(tiny_dir)
    for first, second in zip(unet_and_controlnet_outputs(tiny), unet_and_controlnet_outputs(loaded)):
        torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert loaded.tokenizer("a red stone").input_ids == tiny.tokenizer("a red stone").input_ids


def test_offline_hub_id_names_missing_files_and_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelLoadError) as error:
        models.load("zs-texturing-test/not-a-cached-model", device="cpu")
    message = str(error.value)
    assert message.startswith("model:")
    assert "model_index.json" in message and "unet/" in message and "text_encoder_2/" in message
    assert 'hf download zs-texturing-test/not-a-cached-model --include "*.json"' in message
    assert "huggingface-cli" not in message  # the installed huggingface_hub ships `hf`


def test_check_names_every_missing_file_of_model_and_controlnet(monkeypatch, tiny_dir, tmp_path):
    """Offline, before anything loads: one error with the model's and the ControlNet's
    missing files, each with the command that fetches exactly those. A model whose
    model_index.json is cached (a download that stopped early) is known to be SD 1.5."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = tmp_path / "models--zs-texturing-test--some-model" / "snapshots" / ("0" * 40)
    (snapshot / "unet").mkdir(parents=True)
    (snapshot / "model_index.json").write_text((tiny_dir / "model_index.json").read_text())
    (snapshot / "unet" / "config.json").write_text((tiny_dir / "unet" / "config.json").read_text())
    (tmp_path / "models--zs-texturing-test--some-model" / "refs").mkdir()
    (tmp_path / "models--zs-texturing-test--some-model" / "refs" / "main").write_text("0" * 40)
    with pytest.raises(models.ModelLoadError) as error:
        models.check_available("zs-texturing-test/some-model", "zs-texturing-test/no-depth", cache_dir=tmp_path)
    model_line, controlnet_line = str(error.value).split("\n")
    assert model_line.startswith("model: the Stable Diffusion 1.5 model") and controlnet_line.startswith("controlnet:")
    missing = [f for f in families.SD15.pipeline_files() if f not in ("model_index.json", "unet/config.json")]
    assert f"Missing: {', '.join(missing)}." in model_line
    assert f"`hf download zs-texturing-test/some-model {' '.join(missing)}`" in model_line
    assert "`hf download zs-texturing-test/no-depth config.json diffusion_pytorch_model.safetensors`" in controlnet_line


def test_an_unreachable_hub_is_offline_at_once(monkeypatch, tmp_path):
    """Without HF_HUB_OFFLINE but without a network, the check asks the hub once (one TCP
    connection) instead of huggingface_hub's retries, and names the files."""
    import time

    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused
    started = time.perf_counter()
    with pytest.raises(models.ModelLoadError) as error:
        models.check_available("zs-texturing-test/some-model", "zs-texturing-test/no-depth", cache_dir=tmp_path)
    assert time.perf_counter() - started < 5
    message = str(error.value)
    assert "the hub (http://127.0.0.1:9) cannot be reached" in message
    assert "model_index.json" in message and "hf download zs-texturing-test/no-depth config.json" in message


def test_check_resolves_a_complete_folder_and_names_what_a_folder_lacks(tiny_dir, tmp_path):
    info = models.check_available(str(tiny_dir), str(tiny_dir / "controlnet"))
    assert (info.family, info.model.form, info.controlnet.form) == ("sd15", "folder", "folder")
    assert models.check_available("tiny").controlnet.form == "builtin"
    partial = tmp_path / "partial"
    (partial / "unet").mkdir(parents=True)
    (partial / "model_index.json").write_text((tiny_dir / "model_index.json").read_text())
    (partial / "unet" / "config.json").write_text((tiny_dir / "unet" / "config.json").read_text())
    with pytest.raises(models.ModelLoadError) as error:
        models.check_available(str(partial), str(tiny_dir / "controlnet"))
    message = str(error.value)
    assert message.startswith(f"model: the diffusers folder {partial} lacks unet/diffusion_pytorch_model.safetensors")
    assert "text_encoder/model.safetensors" in message and "unet/config.json" not in message


def test_sd15_single_file_round_trips_and_is_detected_from_contents(tiny, tiny_dir, tmp_path):
    path = tmp_path / "sdxl-looking-name.safetensors"
    models.save_single_file(tiny, path)
    assert families.inspect(str(path)).family is families.SD15
    names = families.tensor_names(path)
    assert any(n.startswith("cond_stage_model.transformer.text_model.") for n in names)
    loaded = models.load(str(path), str(tiny_dir / "controlnet"), device="cpu", config=str(tiny_dir))
    for first, second in zip(unet_and_controlnet_outputs(tiny), unet_and_controlnet_outputs(loaded)):
        torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_ckpt_family_is_read_without_unpickling(tmp_path):
    """A .ckpt's tensor names come from its pickle's opcodes: nothing in it is executed."""
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.label_emb.0.0.weight": torch.zeros(1),
                               "conditioner.embedders.1.model.positional_embedding": torch.zeros(1)}}, path)
    assert families.detect(str(path)) is families.SDXL
    (tmp_path / "old.ckpt").write_bytes(b"not a zip")
    with pytest.raises(models.ModelLoadError, match="old.ckpt: not a readable .ckpt"):
        families.detect(str(tmp_path / "old.ckpt"))


@pytest.mark.parametrize("names, expected", [
    (["cond_stage_model.model.token_embedding.weight"], "Stable Diffusion 2.x"),
    (["conditioner.embedders.0.model.text_projection"], "SDXL refiner"),
    (["lora_unet_down_blocks_0.alpha"], "neither a Stable Diffusion 1.5 / SDXL checkpoint nor a ControlNet"),
])
def test_unsupported_checkpoints_are_named(tmp_path, names, expected):
    from safetensors.torch import save_file

    path = tmp_path / "file.safetensors"
    save_file({name: torch.zeros(1) for name in names}, str(path))
    with pytest.raises(models.ModelLoadError, match=expected):
        families.detect(str(path))


def test_offline_hub_controlnet_is_a_clear_error(monkeypatch, tiny_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelLoadError, match=r"^controlnet: .*config.json"):
        models.load(str(tiny_dir), controlnet="zs-texturing-test/no-controlnet", device="cpu")


def test_folder_without_model_index_is_rejected(tmp_path):
    with pytest.raises(models.ModelLoadError, match="model_index.json"):
        models.load(str(tmp_path), device="cpu")


def test_unknown_model_name_is_rejected():
    with pytest.raises(models.ModelLoadError, match="^model: 'no such model' is neither"):
        models.load("no such model", device="cpu")
    with pytest.raises(models.ModelLoadError, match="unknown model family 'sd3'"):
        families.get("sd3")


def test_broken_single_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from safetensors.torch import save_file

    path = tmp_path / "broken.safetensors"
    save_file({"not.a.checkpoint": torch.zeros(2)}, str(path))
    with pytest.raises(models.ModelLoadError, match="broken.safetensors"):
        models.load(str(path), device="cpu")


def test_device_and_dtype_choice():
    assert models.choose_device("cpu") == (torch.device("cpu"), torch.float32)
    assert models.choose_device("cpu", "bf16") == (torch.device("cpu"), torch.bfloat16)
    if not torch.cuda.is_available():
        assert models.choose_device("auto")[0].type in ("cpu", "mps")
        with pytest.raises(ValueError, match="^device: CUDA"):
            models.choose_device("cuda")
    with pytest.raises(ValueError, match="^dtype: fp16 is not supported on the CPU"):
        models.choose_device("cpu", "fp16")
    with pytest.raises(ValueError, match="^device: unknown"):
        models.choose_device("tpu")
    with pytest.raises(ValueError, match="^dtype: unknown"):
        models.choose_device("cpu", "int8")


def test_bf16_on_cpu_casts_every_module():
    components = models.load("tiny", device="cpu", dtype="bf16")
    for module in components.modules().values():
        assert next(module.parameters()).dtype == torch.bfloat16


def test_a_vae_that_asks_to_be_upcast_stays_fp32_and_decodes_in_its_own_dtype(tiny):
    """SDXL's VAE overflows in fp16 (its config says force_upcast): it stays fp32 when the
    model runs in fp16, and decoding feeds it latents in its own dtype."""
    import dataclasses

    import torch

    from zs_core import sampler

    upcast = type("Config", (), {"force_upcast": True})
    plain = type("Config", (), {"force_upcast": False})
    assert models.vae_dtype(type("Vae", (), {"config": upcast})(), torch.float16) == torch.float32
    assert models.vae_dtype(type("Vae", (), {"config": plain})(), torch.float16) == torch.float16
    assert models.vae_dtype(type("Vae", (), {"config": upcast})(), torch.bfloat16) == torch.bfloat16
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = sampler.decode(tiny, latents)
    half_model = dataclasses.replace(tiny, dtype=torch.float16)  # the VAE itself stays fp32
    assert (sampler.decode(half_model, latents) == expected).all()
