"""(T) LoRAs on the model: any number per job, each with its weight, through diffusers' LoRA
loading (PEFT), swapped between jobs without reloading the base model.

:func:`apply` puts a job's LoRAs ``[(file, weight), ...]`` on a
:class:`~zs_core.models.Components`. Each file is loaded once, by diffusers'
``load_lora_weights`` on a transient pipeline of the model's family
(:attr:`zs_core.families.Family.pipeline_class`, :func:`transient_pipeline`) built around
the Components' own modules: PEFT wraps the UNet's and text encoders' linear layers in
place (the ControlNet keeps its weights, as in diffusers' pipelines). The adapter's name
comes from the file's path, size and modification time, so a later job naming the same
file only runs ``set_adapters``; a changed file is a new adapter. LoRAs a job does not
name stay loaded but inactive (they add nothing); beyond :data:`MAX_LOADED` the least
recently used are deleted. A job without LoRAs disables them all: the model then computes
exactly what it did before any was loaded (tested).

Formats: what diffusers reads. Diffusers / PEFT keys (``unet.<layer>.lora_A.weight``,
``text_encoder.…``), the older diffusers keys, and the kohya / A1111 single files artists
download (``lora_unet_…``, ``lora_te_…``; SDXL's ``lora_te1_`` / ``lora_te2_`` and SGM
block names), as ``.safetensors`` (or pickled ``.bin``: read with torch's weights-only
loader). Before any weight is applied every LoRA of the job is read and checked against
the model (:func:`check_fits`): each layer it changes must exist with the shapes it
expects. A LoRA for the other family is a ``ProtocolError("loras", ...)`` naming the file
and both families; a missing or unreadable file one naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import families, tiny
from .models import Components
from .protocol import ProtocolError, Request, parse_loras

FIELD = "loras"
STATE_KEY = "loras"  # components.extras[STATE_KEY]: the LoraState
MAX_LOADED = 4  # adapters kept loaded; an inactive one costs memory only (rank x width per layer)
LORA_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# diffusers' own file name in a folder written by save_lora_weights
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
# The parts of a model diffusers puts LoRAs on, as the converted state dict's key prefixes.
PARTS = ("unet", "text_encoder", "text_encoder_2")
# The cross-attention (text) width of the families' real models; a LoRA's or IP-Adapter's
# width says which family it was made for. The built-in tiny models' widths join at runtime.
TEXT_WIDTHS = {768: "sd15", 2048: "sdxl"}
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<which>lora_A|lora_B)\.(weight|bias)$")


@dataclass
class Loaded:
    """One LoRA file loaded into the model under PEFT adapter name ``adapter``."""

    adapter: str
    path: str
    last_job: int  # the job counter when it was last named


@dataclass
class LoraState:
    """What :func:`apply` keeps in ``components.extras``."""

    loaded: dict[str, Loaded] = field(default_factory=dict)  # adapter name -> Loaded
    jobs: int = 0
    active: tuple[tuple[str, float], ...] = ()  # (adapter, weight) of the last job


def state(components: Components) -> LoraState:
    """The Components' LoRA state (empty until a LoRA is loaded)."""
    return components.extras.get(STATE_KEY) or LoraState()


# ------------------------------------------------------------------ the transient pipeline


def transient_pipeline(components: Components):
    """diffusers' text-to-image pipeline of the Components' family around their own modules
    (nothing is copied; loaders called on it change the Components' modules in place)."""
    cls = families.get(components.family).pipeline_class
    accepted = inspect.signature(cls.__init__).parameters
    offered = dict(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        text_encoder_2=components.text_encoder_2, tokenizer_2=components.tokenizer_2, unet=components.unet,
        scheduler=components.scheduler, image_encoder=components.image_encoder,
        feature_extractor=components.feature_extractor,
        safety_checker=None, requires_safety_checker=False, add_watermarker=False,
    )
    return cls(**{name: value for name, value in offered.items() if name in accepted})


# ------------------------------------------------------------------ reading and checking


def resolve_file(name: str | Path) -> Path:
    """The LoRA file ``name`` names: the file itself, or in a folder diffusers'
    ``pytorch_lora_weights.safetensors`` or its only weights file. ProtocolError otherwise."""
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / DIFFUSERS_WEIGHT_NAME).is_file():
            return path / DIFFUSERS_WEIGHT_NAME
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in LORA_SUFFIXES)
        if len(found) != 1:
            names = ", ".join(p.name for p in found)
            what = f"{len(found)} weights files ({names})" if found else "no weights file"
            raise ProtocolError(FIELD, f"{path} is a folder with {what}; name the LoRA file itself")
        return found[0]
    if not path.is_file():
        raise ProtocolError(FIELD, f"{name}: no such LoRA file")
    if path.suffix.lower() not in LORA_SUFFIXES:
        raise ProtocolError(FIELD, f"{path}: not a LoRA file (expected {', '.join(LORA_SUFFIXES)})")
    return path


def adapter_name(path: Path) -> str:
    """The PEFT adapter name of a LoRA file: its stem plus a hash of its resolved path, size
    and modification time (a rewritten file is a new adapter). Letters, digits and _ only:
    PEFT keeps adapters in module dictionaries."""
    stat = path.stat()
    digest = hashlib.sha1(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)[:40]}_{digest}"


def read(components: Components, path: Path) -> dict[str, torch.Tensor]:
    """A LoRA file as diffusers reads it (kohya / A1111 keys converted to diffusers')."""
    cls = families.get(components.family).pipeline_class
    try:
        state_dict, _alphas = cls.lora_state_dict(str(path), unet_config=components.unet.config)
    except Exception as exc:  # safetensors, torch.load and the converters raise many kinds
        raise ProtocolError(FIELD, f"{path}: not a readable LoRA file ({type(exc).__name__}: "
                                   f"{_first_line(exc)})") from None
    if not state_dict:
        raise ProtocolError(FIELD, f"{path}: holds no tensors")
    return state_dict


def layer_shapes(components: Components, state_dict: dict[str, torch.Tensor], path: Path
                 ) -> dict[str, dict[str, dict[str, tuple[int, ...]]]]:
    """``{part: {layer: {"lora_A": shape, "lora_B": shape}}}`` of a LoRA as diffusers' loaders
    will see it (PEFT key names, text encoders without the old ``text_model.`` prefix when
    the model has none)."""
    from diffusers.utils.state_dict_utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    by_part: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        part, _, rest = key.partition(".")
        by_part.setdefault(part, {})[rest] = value
    unknown = sorted(set(by_part) - set(PARTS))
    if unknown:
        raise ProtocolError(FIELD, f"{path}: has layers for {', '.join(unknown)}, which diffusers does not put LoRAs "
                                   f"on (it loads {', '.join(PARTS)})")
    shapes = {}
    for part, tensors in by_part.items():
        if part == "unet":  # as UNet2DConditionModel.load_lora_adapter converts
            if "lora_A" not in next(iter(tensors)):
                tensors = convert_unet_state_dict_to_peft(tensors)
        else:  # as diffusers' text-encoder loader converts
            tensors = convert_state_dict_to_peft(convert_state_dict_to_diffusers(tensors))
            encoder = getattr(components, part)
            if encoder is not None and not hasattr(encoder, "text_model"):
                tensors = {key.removeprefix("text_model."): value for key, value in tensors.items()}
        layers: dict[str, dict[str, tuple[int, ...]]] = {}
        for key, value in tensors.items():
            match = _LORA_KEY.match(key)
            if match and key.endswith(".weight"):
                layers.setdefault(match["module"], {})[match["which"]] = tuple(value.shape)
        shapes[part] = layers
    return shapes


def known_text_widths() -> dict[int, str]:
    """Cross-attention width -> family, for the real models and the built-in tiny ones."""
    widths = dict(TEXT_WIDTHS)
    widths.setdefault(tiny.unet_config()["cross_attention_dim"], "sd15")
    if hasattr(tiny, "sdxl_unet_config"):
        widths.setdefault(tiny.sdxl_unet_config()["cross_attention_dim"], "sdxl")
    return widths


def guess_family(shapes: dict) -> str | None:
    """The family a LoRA was made for, from its layers: the text width its cross-attention
    keys and values read, else a second text encoder / SDXL-only layers (sdxl) or attention
    in the first UNet level (sd15; SDXL has none there). None when nothing tells."""
    unet = shapes.get("unet", {})
    for layer, pair in unet.items():
        if layer.endswith(("attn2.to_k", "attn2.to_v")) and "lora_A" in pair:
            width = pair["lora_A"][1]
            if width in known_text_widths():
                return known_text_widths()[width]
    if "text_encoder_2" in shapes or any("add_embedding" in layer for layer in unet):
        return "sdxl"
    if any(layer.startswith("down_blocks.0.attentions.") for layer in unet):
        return "sd15"
    return None


def mismatches(components: Components, shapes: dict) -> list[str]:
    """Why a LoRA's layers do not fit the model (empty when they all do): a layer it changes
    that the model lacks, or whose input / output width differs."""
    problems = []
    for part, layers in shapes.items():
        model = getattr(components, part, None)
        if model is None:
            problems.append(f"it changes {part}, which this model does not have")
            continue
        for layer, pair in layers.items():
            try:
                module = model.get_submodule(layer)
            except AttributeError:
                problems.append(f"{part}.{layer} does not exist")
                continue
            base = getattr(module, "base_layer", module)  # already wrapped by an earlier LoRA
            if isinstance(base, torch.nn.Linear):
                fan_in, fan_out = base.in_features, base.out_features
            elif isinstance(base, torch.nn.Conv2d):
                fan_in, fan_out = base.in_channels // base.groups, base.out_channels
            else:
                problems.append(f"{part}.{layer} is a {type(base).__name__}, not a linear or convolution layer")
                continue
            if "lora_A" in pair and pair["lora_A"][1] != fan_in:
                problems.append(f"{part}.{layer} takes {fan_in} inputs, the LoRA's {pair['lora_A'][1]}")
            if "lora_B" in pair and pair["lora_B"][0] != fan_out:
                problems.append(f"{part}.{layer} gives {fan_out} outputs, the LoRA's {pair['lora_B'][0]}")
    return problems


def family_title(name: str | None) -> str:
    return f"{families.get(name).title} ({name})" if name in families.FAMILIES else "another model family"


def check_fits(components: Components, path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """ProtocolError("loras") unless the LoRA fits the model: made for the model's family
    and every layer it changes present with the widths it expects."""
    shapes = layer_shapes(components, state_dict, path)
    if not any(shapes.values()):
        raise ProtocolError(FIELD, f"{path}: holds no LoRA layers (no lora_A / lora_B or lora_down / lora_up "
                                   f"weights)")
    made_for = guess_family(shapes)
    problems = mismatches(components, shapes)
    model = f"the model {components.name!r} is {family_title(components.family)}"
    if made_for is not None and made_for != components.family:
        raise ProtocolError(FIELD, f"{path} is a LoRA for {family_title(made_for)}; {model}")
    if problems:
        shown = "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
        hint = "" if made_for else "; is it a LoRA for another model family?"
        raise ProtocolError(FIELD, f"{path} does not fit {model}: {shown}{hint}")


# ------------------------------------------------------------------ before a job


def header_shapes(path: Path, field_name: str = FIELD) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a ``.safetensors`` file, from its header (no weight is read);
    ``{}`` for other files. A file that is not one: ProtocolError for ``field_name``."""
    if path.suffix.lower() != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except Exception as exc:  # a truncated or foreign file
        raise ProtocolError(field_name, f"{path}: not a readable .safetensors file ({type(exc).__name__}: "
                                        f"{_first_line(exc)})") from None


def file_family(path: Path) -> str | None:
    """The family a LoRA file was made for, from its header alone, in any of the formats: a
    second text encoder's layers (sdxl), the text width of a cross-attention key's down
    matrix, attention in the first UNet level (sd15). None when the header does not say."""
    shapes = header_shapes(path)
    if any(name.startswith(("text_encoder_2.", "lora_te2_")) for name in shapes):
        return "sdxl"
    widths = known_text_widths()
    for name, shape in shapes.items():
        down = any(marker in name for marker in ("lora_A", "lora_down", "lora.down", "lora_linear_layer.down"))
        if "attn2" in name and "to_k" in name and down and len(shape) == 2 and shape[1] in widths:
            return widths[shape[1]]
    if any(marker in name for name in shapes for marker in ("down_blocks.0.attentions.", "down_blocks_0_attentions_")):
        return "sd15"
    return None


def preflight(family: str, entries: Sequence[tuple[str | Path, float]]) -> None:
    """What can be known of a job's LoRAs before a model is loaded (and before any render or
    upload): each file exists and, as far as its header tells, is for ``family``."""
    for name, _ in entries:
        path = resolve_file(name)
        made_for = file_family(path)
        if made_for is not None and made_for != family:
            raise ProtocolError(FIELD, f"{path} is a LoRA for {family_title(made_for)}; the model is "
                                       f"{family_title(family)}")


# ------------------------------------------------------------------ applying


def apply(components: Components, entries: Sequence[tuple[str | Path, float]]) -> tuple[str, ...]:
    """Make ``entries`` ``[(file, weight), ...]`` the model's active LoRAs; returns their
    adapter names. Every new file is read and checked before any is loaded, so a bad entry
    leaves the model as the previous job had it; the ones loaded before are reused."""
    current = components.extras.setdefault(STATE_KEY, LoraState())
    current.jobs += 1
    wanted: dict[str, tuple[Path, float]] = {}
    for name, weight in entries:
        path = resolve_file(name)
        adapter = adapter_name(path)
        if adapter in wanted:
            raise ProtocolError(FIELD, f"{path} is listed twice; give it once with the summed weight")
        wanted[adapter] = (path, float(weight))
    if not wanted and not current.loaded:
        current.active = ()
        return ()  # nothing to load, nothing to switch off
    new = {adapter: read(components, path) for adapter, (path, _) in wanted.items() if adapter not in current.loaded}
    for adapter, state_dict in new.items():
        check_fits(components, wanted[adapter][0], state_dict)
    pipeline = transient_pipeline(components)
    for adapter in new:
        path = wanted[adapter][0]
        try:
            with quiet_loading():
                pipeline.load_lora_weights(str(path), adapter_name=adapter)
        except Exception as exc:
            _forget(pipeline, [adapter])
            raise ProtocolError(FIELD, f"{path}: diffusers could not load it ({type(exc).__name__}: "
                                       f"{_first_line(exc)})") from None
        current.loaded[adapter] = Loaded(adapter, str(path), current.jobs)
    for adapter in wanted:
        current.loaded[adapter].last_job = current.jobs
    _evict(pipeline, current, keep=set(wanted))
    if wanted:
        pipeline.enable_lora()
        pipeline.set_adapters(list(wanted), [weight for _, weight in wanted.values()])
    elif current.loaded:
        pipeline.disable_lora()  # the base model exactly: PEFT layers return their base layer's output
    current.active = tuple((adapter, weight) for adapter, (_, weight) in wanted.items())
    return tuple(wanted)


def apply_request(components: Components, request: Request,
                  resolve: Callable[[str], str | Path] = lambda name: name) -> tuple[str, ...]:
    """:func:`apply` with the request's ``loras`` (``FILE_OR_NAME[:WEIGHT]|...``); ``resolve``
    turns a name (e.g. one from a server's list) into its file."""
    return apply(components, [(resolve(name), weight) for name, weight in parse_loras(request.loras)])


def clear(components: Components) -> None:
    """Remove every LoRA: PEFT's wrappers are taken off, the modules are the base model's."""
    current = components.extras.pop(STATE_KEY, None)
    if current is not None and current.loaded:
        transient_pipeline(components).unload_lora_weights()


def _evict(pipeline, current: LoraState, keep: set[str]) -> None:
    """Delete the least recently named adapters beyond MAX_LOADED (never one in ``keep``)."""
    spare = sorted((item for item in current.loaded.values() if item.adapter not in keep), key=lambda x: x.last_job)
    excess = len(current.loaded) - MAX_LOADED
    doomed = [item.adapter for item in spare[:max(excess, 0)]]
    if doomed:
        _forget(pipeline, doomed)
        for adapter in doomed:
            del current.loaded[adapter]


def _forget(pipeline, adapters: list[str]) -> None:
    """Delete ``adapters`` from every part that holds them (a failed load may have reached
    only some parts)."""
    from diffusers.utils.peft_utils import delete_adapter_layers

    for part, names in pipeline.get_list_adapters().items():
        model = getattr(pipeline, part)
        for adapter in (adapter for adapter in adapters if adapter in names):
            if hasattr(model, "delete_adapters"):  # diffusers' models
                model.delete_adapters(adapter)
            else:  # transformers' text encoders
                delete_adapter_layers(model, adapter)


@contextlib.contextmanager
def quiet_loading():
    """Silence the false alarms of loading adapters: PEFT's "multiple adapters" warning;
    transformers' load report listing a text encoder's earlier adapters as missing from a
    new file (they are left as they were; tests/core/test_loras.py); diffusers' "modules that
    should be kept in float32: []" when the IP-Adapter loader casts the UNet to its own dtype."""
    loggers = [logging.getLogger(name) for name in ("transformers.integrations.peft",
                                                    "diffusers.models.modeling_utils")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
