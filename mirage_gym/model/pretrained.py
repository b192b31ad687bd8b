"""Loading and saving generators: real Wan2.2 folders, our own folders, and LoRA fine-tunes.

Three folder formats, all safetensors:

* **Wan2.2 (diffusers layout)** -- ``model_index.json``, ``transformer/``, ``vae/``
  (``AutoencoderKLWan``), ``scheduler/``, and for A14B ``transformer_2/`` with the
  pipeline's ``boundary_ratio`` (the MoE switch between the high- and low-noise
  experts); ``text_encoder/`` and ``tokenizer/`` are optional: they are loaded only to
  turn a prompt into embeddings once (:func:`encode_prompt`), otherwise precomputed
  ``prompt_embeds`` or the empty prompt are used. The transformers are widened
  on load (zero-initialised, see :mod:`~mirage_gym.model.transformer`) and a fresh
  depth head is made; both are untrained until a Mirage LoRA folder is applied.
* **Mirage full** (``mirage_config.json`` with ``"format": "mirage"``) -- what
  :func:`save_generator` writes for a model trained from scratch (the CPU default):
  ``transformer/`` (already widened), ``vae/``, ``depth_head/``, ``scheduler/``.
* **Mirage LoRA** (``"format": "mirage-lora"``) -- what :func:`save_generator` writes
  for a fine-tuned Wan2.2: ``pytorch_lora_weights.safetensors`` in diffusers' LoRA
  format (keys ``transformer.*``, peft config in the metadata, so ``WanPipeline.
  load_lora_weights`` reads it too), ``pytorch_lora_weights_transformer_2.safetensors``
  for A14B, ``patch_embedding.safetensors`` (the widened input layer(s)),
  ``depth_head/``, and in ``mirage_config.json`` the base it was trained on.

Every failure to load names the file and the mismatch.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLWan,
    AutoencoderTiny,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from diffusers.loaders import WanLoraLoaderMixin
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from mirage_gym.memory.latent_cache import INTERPOLATIONS
from mirage_gym.model.depth_head import DepthHead
from mirage_gym.model.transformer import input_layout, restore_widened_patch_embedding, widen_patch_embedding
from mirage_gym.model.vae import VideoVAE

__all__ = [
    "MIRAGE_CONFIG",
    "LORA_WEIGHTS",
    "LORA_WEIGHTS_2",
    "PATCH_EMBEDDING",
    "GENERATOR_SETTINGS",
    "LoadedComponents",
    "add_lora",
    "encode_prompt",
    "lora_parameters",
    "load_components",
    "save_components",
]

logger = logging.getLogger(__name__)

MIRAGE_CONFIG = "mirage_config.json"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
LORA_WEIGHTS_2 = "pytorch_lora_weights_transformer_2.safetensors"
PATCH_EMBEDDING = "patch_embedding.safetensors"
FORMAT_FULL, FORMAT_LORA = "mirage", "mirage-lora"
ADAPTER = "mirage"
# Generator keyword arguments recorded in mirage_config.json, so a folder reproduces its sampler.
GENERATOR_SETTINGS = (
    "memory", "num_inference_steps", "voxel_size", "cache_capacity", "cache_interpolation", "cache_footprint",
    "context_frames",
    "cache_guidance", "rewrite_cached", "observed_margin", "anchor_depth",
    "filter_history",
)
# Transformer config entries that a LoRA and a widened input layer depend on.
BASE_SIGNATURE = (
    "num_layers",
    "num_attention_heads",
    "attention_head_dim",
    "ffn_dim",
    "out_channels",
    "text_dim",
    "patch_size",
    "added_kv_proj_dim",
    "image_dim",
)
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
FFN_TARGETS = ("ffn.net.0.proj", "ffn.net.2")

_VAES = {cls.__name__: cls for cls in (AutoencoderKLWan, AutoencoderTiny, AutoencoderKL)}
_SCHEDULERS = {cls.__name__: cls for cls in (FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler)}


@dataclass
class LoadedComponents:
    """Everything :class:`~mirage_gym.model.generator.MirageGenerator` is built from."""

    transformer: WanTransformer3DModel
    vae: VideoVAE
    depth_head: DepthHead
    scheduler: FlowMatchEulerDiscreteScheduler | UniPCMultistepScheduler
    transformer_2: WanTransformer3DModel | None = None
    boundary_ratio: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # generator kwargs stored with the folder
    base_model_path: Path | None = None  # set for Wan2.2 bases (LoRA fine-tuning)


# ---------------------------------------------------------------------- small helpers


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# mirage_config.json: what each generator setting must be (a check and its description).
_SETTING_RULES: dict[str, tuple[Any, str]] = {
    "memory": (lambda v: v in ("latent", "pixel", "none"), "one of 'latent', 'pixel', 'none'"),
    "num_inference_steps": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "voxel_size": (lambda v: _is_number(v) and v > 0, "a number > 0 (metres)"),
    "cache_capacity": (lambda v: _is_int(v) and v >= 1, "an integer >= 1 (voxels)"),
    "cache_interpolation": (lambda v: v in INTERPOLATIONS, "one of " + ", ".join(map(repr, INTERPOLATIONS))),
    "cache_footprint": (lambda v: _is_int(v) and v >= 1, "an integer >= 1 (cells)"),
    "context_frames": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "cache_guidance": (lambda v: _is_number(v) and 0.0 <= v <= 1.0, "a number in [0, 1]"),
    "rewrite_cached": (lambda v: isinstance(v, bool), "true or false"),
    "observed_margin": (lambda v: v is None or (_is_number(v) and v >= 0), "null or a number >= 0"),
    "anchor_depth": (lambda v: isinstance(v, bool), "true or false"),
    "filter_history": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (frames)"),
    "boundary_ratio": (lambda v: v is None or (_is_number(v) and 0.0 < v < 1.0), "null or a number in (0, 1)"),
    "vae_class": (lambda v: v is None or isinstance(v, str), "a VAE class name"),
    "base_model": (lambda v: isinstance(v, str) and v != "", "the path of the Wan2.2 base folder"),
    "lora_weights": (lambda v: isinstance(v, dict) and all(k in ("transformer", "transformer_2") and isinstance(f, str)
                                                           and f != "" and "/" not in f and "\\" not in f
                                                           for k, f in v.items()),
                     "an object mapping 'transformer'/'transformer_2' to a file name in the folder"),
    "base_transformer": (lambda v: isinstance(v, dict) and all(k in ("transformer", "transformer_2")
                                                               and isinstance(x, dict) for k, x in v.items()),
                         "an object mapping 'transformer'/'transformer_2' to its config entries"),
}


def check_mirage_config(config: dict[str, Any], path: Path) -> None:
    """``ValueError`` naming ``path``, the key and what was expected, for a bad value in a ``mirage_config.json``."""
    for key, (ok, expected) in _SETTING_RULES.items():
        if key in config and not ok(config[key]):
            raise ValueError(f"{path}: {key!r} must be {expected}, got {_describe(config[key])}")


def _check_safetensors(path: Path) -> None:
    """Fail early, naming the file, when a safetensors file is missing or corrupt."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                f.get_slice(key)  # the header and offsets are checked against the file size
    except Exception as err:  # safetensors raises its own SafetensorError
        raise ValueError(f"{path} is not a valid safetensors file: {err}") from err


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    return files


def _describe(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, list, dict, type(None))) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _expected_kind(default: Any) -> tuple[str, Any] | None:
    """What a config value must be, judged by the constructor's default: (description, check) or None (anything)."""
    if isinstance(default, bool):
        return "true or false", lambda v: isinstance(v, bool)
    if isinstance(default, int):
        return "an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)
    if isinstance(default, float):
        return "a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if isinstance(default, str):
        return "a string", lambda v: isinstance(v, str)
    if isinstance(default, (tuple, list)):
        return "a list", lambda v: isinstance(v, (list, tuple))
    if isinstance(default, dict):
        return "an object", lambda v: isinstance(v, dict)
    return None


def check_config_types(cls: type, config: dict[str, Any], path: Path) -> None:
    """``ValueError`` naming ``path``, the key and what was expected, for a config value of the wrong type.

    The expected type of each key is that of the default of the same-named argument of
    ``cls.__init__`` (keys without a default, with a ``None`` default, or set to ``null`` are not checked).
    """
    try:
        parameters = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return
    for key, value in config.items():
        param = parameters.get(key)
        if key.startswith("_") or value is None or param is None or param.default in (inspect.Parameter.empty, None):
            continue
        kind = _expected_kind(param.default)
        if kind is not None and not kind[1](value):
            raise ValueError(f"{path}: {key!r} must be {kind[0]} (as {_describe(param.default)}), "
                             f"got {_describe(value)}")


def _safetensors_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        with safetensors.safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def _check_weights_fit_config(cls: type, folder: Path, config: dict[str, Any], files: list[Path]) -> None:
    """``ValueError`` naming the files and the first mismatching keys, unless the weights are the config's model.

    The model is built from ``config.json`` on the meta device (no memory), and its parameter
    names and shapes are compared with the safetensors headers: a missing tensor, an extra one
    (one more or one less layer, another component's weights) or another shape is refused here,
    instead of failing deep inside diffusers (``Cannot copy out of meta tensor``).
    """
    config_file = folder / "config.json"
    check_config_types(cls, config, config_file)
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = cls.from_config(config)
    except Exception as err:  # noqa: BLE001 -- any constructor error is the config's fault
        raise ValueError(f"{config_file}: cannot build a {cls.__name__} from it: {type(err).__name__}: {err}") from err
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    actual = _safetensors_shapes(files)
    ignored = [re.compile(p) for p in (getattr(cls, "_keys_to_ignore_on_load_unexpected", None) or [])]
    missing = sorted(k for k in expected if k not in actual)
    extra = sorted(k for k in actual if k not in expected and not any(p.search(k) for p in ignored))
    shapes = sorted(k for k in expected if k in actual and actual[k] != expected[k])
    if not (missing or extra or shapes):
        return
    weights = ", ".join(str(f) for f in files)
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) the config needs are not in the weights (e.g. {missing[:3]})")
    if extra:
        problems.append(f"{len(extra)} tensor(s) in the weights are not in the config's model (e.g. {extra[:3]})")
    if shapes:
        problems.append("; ".join(f"{k} is {list(actual[k])} in the weights, {list(expected[k])} by the config"
                                  for k in shapes[:3]))
    hint = ""
    if missing and extra and len(set(actual) & set(expected)) < len(expected) / 2:
        hint = " (these look like another component's weights)"
    raise ValueError(f"{config_file} does not match {weights}: {'; '.join(problems)}{hint}; expected the "
                     f"{cls.__name__} that config describes ({len(expected)} tensors)")


def _load_model(cls: type, folder: Path, **kwargs: Any):
    """``cls.from_pretrained(folder)`` with errors that name the folder and the file."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is missing")
    config = _read_json(folder / "config.json")
    files = _weight_files(folder)
    for file in files:
        _check_safetensors(file)
    _check_weights_fit_config(cls, folder, config, files)
    try:
        return cls.from_pretrained(str(folder), use_safetensors=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, NotImplementedError) as err:
        raise ValueError(f"could not load {cls.__name__} from {folder}: {err}") from err


def _load_scheduler(folder: Path):
    path = folder / "scheduler_config.json"
    config = _read_json(path)
    name = config.get("_class_name")
    if not isinstance(name, str) or name not in _SCHEDULERS:
        raise ValueError(f"{path}: scheduler {_describe(name)} is not one of {sorted(_SCHEDULERS)}")
    check_config_types(_SCHEDULERS[name], config, path)
    try:
        return _SCHEDULERS[name].from_pretrained(str(folder))
    except Exception as err:  # noqa: BLE001 -- a config diffusers cannot use
        raise ValueError(f"{path}: cannot build a {name} from it: {type(err).__name__}: {err}") from err


def _load_vae(folder: Path, class_name: str | None, source: Path) -> VideoVAE:
    if class_name is None:
        class_name = _read_json(folder / "config.json").get("_class_name")
    if class_name not in _VAES:
        raise ValueError(f"{source}: VAE class {class_name!r} is not one of {sorted(_VAES)}")
    return VideoVAE(_load_model(_VAES[class_name], folder, torch_dtype=torch.float32))


def _signature(transformer: WanTransformer3DModel) -> dict[str, Any]:
    config = transformer.config
    return {key: list(config[key]) if isinstance(config[key], (tuple, list)) else config[key] for key in BASE_SIGNATURE}


def _check_channels(transformer: WanTransformer3DModel, vae: VideoVAE, source: Path) -> None:
    layout = input_layout(transformer)
    if layout.latent_channels != vae.latent_channels:
        raise ValueError(
            f"{source}: the transformer works on {layout.latent_channels}-channel latents but the VAE has "
            f"z={vae.latent_channels}"
        )


# ---------------------------------------------------------------------- LoRA


def add_lora(
    transformer: WanTransformer3DModel,
    rank: int = 32,
    alpha: float | None = None,
    *,
    ffn: bool = False,
    dropout: float = 0.0,
) -> LoraConfig:
    """Add a peft LoRA adapter (named ``"mirage"``) on the attention projections (and FFN).

    The base weights are frozen by peft; the widened patch embedding stays trainable
    (the conditioning channels must be learnt in full).
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    targets = list(ATTENTION_TARGETS) + (list(FFN_TARGETS) if ffn else [])
    config = LoraConfig(
        r=rank, lora_alpha=alpha or rank, lora_dropout=dropout, target_modules=targets, init_lora_weights=True
    )
    transformer.add_adapter(config, adapter_name=ADAPTER)
    transformer.patch_embedding.requires_grad_(True)
    return config


def lora_parameters(
    transformer: WanTransformer3DModel, *, patch_embedding: str = "extra"
) -> dict[str, torch.nn.Parameter]:
    """The parameters a Mirage LoRA fine-tune trains, by name; every other parameter is frozen.

    They are the ``"mirage"`` adapter's LoRA matrices (see :func:`add_lora`) and the widened
    patch embedding: with ``patch_embedding="all"`` its whole weight and bias; with
    ``"extra"`` its weight only (the trainer keeps the checkpoint's own input channels,
    ``weight[:, :C]``, fixed by zeroing their gradients) and no bias, so the base model's
    response to the noisy latents is changed by the LoRA alone. Exactly these are saved in a
    Mirage LoRA folder (the patch embedding whole), so they are what a resumable
    checkpoint needs.
    """
    if patch_embedding not in ("extra", "all"):
        raise ValueError(f"patch_embedding must be 'extra' or 'all', got {patch_embedding!r}")
    if not _has_lora(transformer):
        raise ValueError(f"the transformer carries no {ADAPTER!r} LoRA adapter: call add_lora first")
    input_layout(transformer)  # the patch embedding must be widened
    trainable = {}
    for name, param in transformer.named_parameters():
        parts = name.split(".")
        is_lora = ADAPTER in parts and any(part.startswith("lora_") for part in parts)
        is_input = name == "patch_embedding.weight" or (name == "patch_embedding.bias" and patch_embedding == "all")
        param.requires_grad_(is_lora or is_input)
        if is_lora or is_input:
            trainable[name] = param
    return trainable


def _has_lora(transformer: WanTransformer3DModel) -> bool:
    return ADAPTER in getattr(transformer, "peft_config", {})


def _load_lora(transformer: WanTransformer3DModel, file: Path, base_signature: dict[str, Any]) -> None:
    _check_safetensors(file)
    try:
        transformer.load_lora_adapter(
            str(file.parent), weight_name=file.name, prefix="transformer", adapter_name=ADAPTER
        )
    except Exception as err:  # peft/diffusers raise various errors for shape or key mismatches
        raise ValueError(f"{file} does not fit this transformer (base {base_signature}): {err}") from err


# ---------------------------------------------------------------------- load


def load_components(
    folder: str | Path,
    *,
    lora: str | Path | None = None,
    torch_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> LoadedComponents:
    """Load a Wan2.2 folder, a Mirage full folder or a Mirage LoRA folder (see the module docs).

    Args:
        folder: the model folder. A Mirage LoRA folder given here loads its recorded base.
        lora: a Mirage LoRA folder to apply on top of a Wan2.2 base.
        torch_dtype: dtype of the transformer(s); default bfloat16 on CUDA, float32 otherwise.
            The VAE and the depth head stay float32.
        device: where to put everything (default CPU).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    device = torch.device(device or "cpu")
    if torch_dtype is None:
        torch_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    if (folder / MIRAGE_CONFIG).is_file():
        config = _read_json(folder / MIRAGE_CONFIG)
        check_mirage_config(config, folder / MIRAGE_CONFIG)
        fmt = config.get("format")
        if fmt == FORMAT_LORA:
            if lora is not None:
                raise ValueError(f"{folder} is itself a LoRA folder; give its base as folder and it as lora")
            base = config.get("base_model")
            if not base:
                raise ValueError(f"{folder / MIRAGE_CONFIG} records no base_model; pass the base folder explicitly")
            return load_components(base, lora=folder, torch_dtype=torch_dtype, device=device)
        if fmt != FORMAT_FULL:
            raise ValueError(
                f"{folder / MIRAGE_CONFIG}: unknown format {fmt!r} (expected {FORMAT_FULL!r} or {FORMAT_LORA!r})"
            )
        components = _load_mirage_full(folder, config, torch_dtype)
    elif (folder / "model_index.json").is_file():
        components = _load_wan(folder, torch_dtype)
    else:
        raise FileNotFoundError(f"{folder} has neither {MIRAGE_CONFIG} nor model_index.json")

    if lora is not None:
        _apply_lora_folder(components, Path(lora))
    for module in (components.transformer, components.transformer_2, components.vae, components.depth_head):
        if module is not None:
            module.to(device).eval()
    return components


def _load_mirage_full(folder: Path, config: dict[str, Any], torch_dtype: torch.dtype) -> LoadedComponents:
    transformers = []
    for name in ("transformer", "transformer_2"):
        if name == "transformer_2" and not (folder / name).exists():
            transformers.append(None)
            continue
        model = _load_model(WanTransformer3DModel, folder / name, torch_dtype=torch_dtype)
        try:
            restore_widened_patch_embedding(model)
        except ValueError as err:
            raise ValueError(f"{folder / name / 'config.json'}: {err}") from err
        transformers.append(model)
    vae = _load_vae(folder / "vae", config.get("vae_class"), folder / MIRAGE_CONFIG)
    depth_head = _load_model(DepthHead, folder / "depth_head", torch_dtype=torch.float32)
    scheduler = _load_scheduler(folder / "scheduler")
    for model in transformers:
        if model is not None:
            _check_channels(model, vae, folder)
    if (transformers[1] is not None) != (config.get("boundary_ratio") is not None):
        raise ValueError(f"{folder / MIRAGE_CONFIG}: 'boundary_ratio' must be set exactly when the folder has "
                         f"transformer_2/ (it has{'' if transformers[1] is not None else ' no'} transformer_2/, "
                         f"boundary_ratio is {_describe(config.get('boundary_ratio'))})")
    return LoadedComponents(
        transformer=transformers[0],
        transformer_2=transformers[1],
        boundary_ratio=config.get("boundary_ratio"),
        vae=vae,
        depth_head=depth_head,
        scheduler=scheduler,
        settings={key: config[key] for key in GENERATOR_SETTINGS if key in config},
    )


def _load_wan(folder: Path, torch_dtype: torch.dtype) -> LoadedComponents:
    index = _read_json(folder / "model_index.json")
    if index.get("_class_name") not in (None, "WanPipeline"):
        raise ValueError(
            f"{folder / 'model_index.json'}: pipeline {index.get('_class_name')!r} is not supported; "
            "Mirage builds on text-to-video / TI2V WanPipeline checkpoints"
        )

    def listed(name: str) -> bool:
        entry = index.get(name)
        return isinstance(entry, (list, tuple)) and entry[0] is not None

    transformers = {}
    for name in ("transformer", "transformer_2"):
        if listed(name):
            model = _load_model(WanTransformer3DModel, folder / name, torch_dtype=torch_dtype)
            try:
                widen_patch_embedding(model)
            except ValueError as err:
                raise ValueError(f"{folder / name / 'config.json'}: {err}") from err
            transformers[name] = model
    if "transformer" not in transformers:
        raise ValueError(f"{folder / 'model_index.json'} lists no transformer")
    boundary_ratio = index.get("boundary_ratio")
    if ("transformer_2" in transformers) != (boundary_ratio is not None):
        raise ValueError(
            f"{folder / 'model_index.json'}: transformer_2 and boundary_ratio go together (A14B), got "
            f"transformer_2={'transformer_2' in transformers}, boundary_ratio={boundary_ratio}"
        )
    vae_entry = index.get("vae")
    vae = _load_vae(folder / "vae", vae_entry[1] if listed("vae") else None, folder / "model_index.json")
    scheduler = _load_scheduler(folder / "scheduler")
    for name, model in transformers.items():
        try:
            _check_channels(model, vae, folder / name / "config.json")
        except ValueError as err:
            raise ValueError(f"{err} ({folder / 'vae' / 'config.json'})") from err
    logger.info(
        "loaded Wan2.2 base %s; the widened channels and the depth head are untrained until a LoRA folder is applied",
        folder,
    )
    depth_head = DepthHead(latent_channels=vae.latent_channels, spatial_factor=vae.spatial_factor)
    return LoadedComponents(
        transformer=transformers["transformer"],
        transformer_2=transformers.get("transformer_2"),
        boundary_ratio=boundary_ratio,
        vae=vae,
        depth_head=depth_head,
        scheduler=scheduler,
        base_model_path=folder.resolve(),
    )


def _apply_lora_folder(components: LoadedComponents, folder: Path) -> None:
    """Load a Mirage LoRA folder onto a Wan2.2 base: check everything first, then apply."""
    config = _read_json(folder / MIRAGE_CONFIG)
    check_mirage_config(config, folder / MIRAGE_CONFIG)
    if config.get("format") != FORMAT_LORA:
        raise ValueError(f"{folder / MIRAGE_CONFIG}: not a Mirage LoRA folder (format {config.get('format')!r})")
    experts = {"transformer": components.transformer, "transformer_2": components.transformer_2}
    recorded = config.get("base_transformer", {})
    for name, model in experts.items():
        if (name in recorded) != (model is not None):
            raise ValueError(
                f"{folder / MIRAGE_CONFIG} was trained for a base {'with' if name in recorded else 'without'} "
                f"{name}, this base is {'with' if model is not None else 'without'} it"
            )
    for name, model in experts.items():
        if model is None:
            continue
        actual = _signature(model)
        diff = {k: (recorded[name].get(k), actual[k]) for k in actual if recorded[name].get(k) != actual[k]}
        if diff:
            mismatch = ", ".join(f"{k}: LoRA {a} vs base {b}" for k, (a, b) in diff.items())
            raise ValueError(f"{folder / MIRAGE_CONFIG}: the LoRA was trained for another {name} ({mismatch})")

    # Patch embeddings and depth head: read and shape-check before touching the models.
    patch_file = folder / PATCH_EMBEDDING
    _check_safetensors(patch_file)
    tensors = safetensors.torch.load_file(str(patch_file))
    for name, model in experts.items():
        if model is None:
            continue
        for param in ("weight", "bias"):
            key = f"{name}.patch_embedding.{param}"
            expected = tuple(getattr(model.patch_embedding, param).shape)
            if key not in tensors:
                raise ValueError(f"{patch_file} has no {key}")
            if tuple(tensors[key].shape) != expected:
                raise ValueError(f"{patch_file}: {key} has shape {tuple(tensors[key].shape)}, expected {expected}")
    depth_head = _load_model(DepthHead, folder / "depth_head", torch_dtype=torch.float32)
    if (depth_head.config.latent_channels, depth_head.config.spatial_factor) != (
        components.vae.latent_channels,
        components.vae.spatial_factor,
    ):
        raise ValueError(
            f"{folder / 'depth_head' / 'config.json'}: depth head for {depth_head.config.latent_channels} channels "
            f"x{depth_head.config.spatial_factor}, the VAE has {components.vae.latent_channels} "
            f"x{components.vae.spatial_factor}"
        )
    for name, file in config.get("lora_weights", {}).items():
        if experts.get(name) is None:
            raise ValueError(f"{folder / MIRAGE_CONFIG} lists a LoRA for {name!r}, which this base does not have")
        _load_lora(experts[name], folder / file, recorded[name])  # a listed file that is missing is an error
    with torch.no_grad():
        for name, model in experts.items():
            if model is not None:
                for param in ("weight", "bias"):
                    target = getattr(model.patch_embedding, param)
                    target.copy_(tensors[f"{name}.patch_embedding.{param}"].to(target))
    components.depth_head = depth_head
    components.settings.update({key: config[key] for key in GENERATOR_SETTINGS if key in config})


def encode_prompt(
    folder: str | Path,
    prompt: str,
    *,
    max_sequence_length: int = 512,
    torch_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Prompt embeddings ``[1, max_sequence_length, text_dim]`` from a Wan2.2 folder's text encoder.

    Uses ``WanPipeline.encode_prompt`` (UMT5, zero-padded to ``max_sequence_length`` as
    Wan does); the encoder is loaded for this call only.
    """
    folder = Path(folder)
    index = _read_json(folder / "model_index.json")
    for name in ("text_encoder", "tokenizer"):
        entry = index.get(name)
        if not (isinstance(entry, (list, tuple)) and entry[0] is not None) or not (folder / name).is_dir():
            raise ValueError(f"{folder} has no {name}: pass prompt_embeds instead of a prompt")
    try:
        pipe = WanPipeline.from_pretrained(
            str(folder), transformer=None, transformer_2=None, vae=None, dtype=torch_dtype or torch.float32,
            use_safetensors=True,  # never a pickled (.bin) text encoder
        )
    except (OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"could not load the text encoder of {folder}: {err}") from err
    pipe.text_encoder.to(device or "cpu")
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(
            prompt,
            do_classifier_free_guidance=False,
            max_sequence_length=max_sequence_length,
            device=torch.device(device or "cpu"),
        )
    return embeds.float()


# ---------------------------------------------------------------------- save


def save_components(
    folder: str | Path,
    *,
    transformer: WanTransformer3DModel,
    vae: VideoVAE,
    depth_head: DepthHead,
    scheduler: FlowMatchEulerDiscreteScheduler | UniPCMultistepScheduler,
    transformer_2: WanTransformer3DModel | None = None,
    boundary_ratio: float | None = None,
    settings: dict[str, Any] | None = None,
    base_model_path: Path | None = None,
) -> Path:
    """Write a Mirage folder: full for models trained from scratch, LoRA for Wan2.2 bases.

    With ``base_model_path`` (a generator loaded from a Wan2.2 folder) only what differs
    from the base is written: the LoRA(s), the widened patch embedding(s) and the depth
    head. Otherwise the whole model.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    experts = {"transformer": transformer, "transformer_2": transformer_2}
    config: dict[str, Any] = dict(settings or {})
    if base_model_path is None:
        for name, model in experts.items():
            if model is not None and _has_lora(model):
                raise ValueError(
                    f"{name} carries a LoRA but has no Wan2.2 base folder to save it against; "
                    "fuse it (transformer.fuse_lora()) before saving a full model"
                )
        for name, model in experts.items():
            if model is not None:
                model.save_pretrained(folder / name, safe_serialization=True)
        vae.vae.save_pretrained(folder / "vae", safe_serialization=True)
        scheduler.save_pretrained(folder / "scheduler")
        config.update(format=FORMAT_FULL, vae_class=type(vae.vae).__name__, boundary_ratio=boundary_ratio)
    else:
        patch: dict[str, torch.Tensor] = {}
        lora_weights: dict[str, str] = {}
        for name, model in experts.items():
            if model is None:
                continue
            patch[f"{name}.patch_embedding.weight"] = model.patch_embedding.weight.detach().float().cpu().contiguous()
            patch[f"{name}.patch_embedding.bias"] = model.patch_embedding.bias.detach().float().cpu().contiguous()
            if _has_lora(model):
                lora_weights[name] = LORA_WEIGHTS if name == "transformer" else LORA_WEIGHTS_2
                WanLoraLoaderMixin.save_lora_weights(
                    folder,
                    transformer_lora_layers=get_peft_model_state_dict(model, adapter_name=ADAPTER),
                    transformer_lora_adapter_metadata=model.peft_config[ADAPTER].to_dict(),
                    weight_name=lora_weights[name],
                )
        safetensors.torch.save_file(patch, str(folder / PATCH_EMBEDDING))
        config.update(
            format=FORMAT_LORA,
            base_model=str(base_model_path),
            base_transformer={name: _signature(m) for name, m in experts.items() if m is not None},
            lora_weights=lora_weights,
        )
    depth_head.save_pretrained(folder / "depth_head", safe_serialization=True)
    (folder / MIRAGE_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder
