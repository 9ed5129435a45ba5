"""Model loading: built-in tiny, local folders, hub ids offline, single files, devices."""

from __future__ import annotations

import pytest
import torch

from zs_core import models


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
    assert "model_index.json" in message and "unet/diffusion_pytorch_model.safetensors" in message
    assert "huggingface-cli download zs-texturing-test/not-a-cached-model" in message


def test_offline_hub_controlnet_is_a_clear_error(monkeypatch, tiny_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelLoadError, match=r"^controlnet: .*config.json"):
        models.load(str(tiny_dir), controlnet="zs-texturing-test/no-controlnet", device="cpu")


def test_folder_without_model_index_is_rejected(tmp_path):
    with pytest.raises(models.ModelLoadError, match="model_index.json"):
        models.load(str(tmp_path), device="cpu")


def test_unknown_model_name_is_rejected():
    with pytest.raises(models.ModelLoadError, match="neither"):
        models.load("no such model", device="cpu")


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
