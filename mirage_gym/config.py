"""Typed model and training configs, the room-seed splits, and ``build_generator``.

A config is one JSON file (shipped in ``mirage_gym/configs``, by name, or any path) with one
schema for every model, the CPU default and a Wan2.2 LoRA alike::

    {"name": ..., "description": ...,
     "model":    {resolution, fov_deg, chunk_frames, context_frames, vae, depth_head, transformer, lora,
                  sampling, memory},          # the architecture: what a trained folder is
     "training": {data, vae, depth, generator, self_forcing, lora_depth, lora}}   # how each stage trains it

``model`` is what :func:`build_generator` builds; ``training`` holds one section per stage
(absent: the config does not train that stage). Every field is documented on its dataclass
below. An unknown or missing key is a ``ValueError`` naming the file and the key; a file in
the old flat schema (``chunk``, ``train_vae``, ... at the top level) is read with a warning
that lists what to rename.

Seed splits: procedural houses with seeds below :data:`EVAL_ROOM_SEED_OFFSET` are for
training, :data:`VALIDATION_ROOM_SEEDS` for the training runs' validation, and the rest from
:data:`EVAL_ROOM_SEED_OFFSET` on for held-out evaluation.

This module sits above ``model`` (it builds one) and below ``training``, ``eval``, ``bench``
and the agents, which all read it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from diffusers import FlowMatchEulerDiscreteScheduler

from mirage_gym.memory.latent_cache import INTERPOLATIONS
from mirage_gym.model import DepthHead, MirageGenerator, VideoVAE
from mirage_gym.model.transformer import build_transformer
from mirage_gym.model.vae import build_autoencoder

__all__ = [
    "CONFIG_DIR",
    "DEPTH_LOSSES",
    "EVAL_ROOM_SEED_OFFSET",
    "UPSAMPLE_FNS",
    "VALIDATION_ROOM_SEEDS",
    "VaeConfig",
    "DepthHeadConfig",
    "TransformerConfig",
    "LoraConfig",
    "SamplingConfig",
    "MemoryConfig",
    "ModelConfig",
    "DataConfig",
    "StageTraining",
    "VaeTraining",
    "DepthTraining",
    "FlowMatchingTraining",
    "GeneratorTraining",
    "SelfForcingTraining",
    "LoraDepthTraining",
    "LoraTraining",
    "TrainingConfig",
    "Config",
    "load_config",
    "config_from_dict",
    "build_generator",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
# Room seeds at or above this offset are never used in training (held out for evaluation).
EVAL_ROOM_SEED_OFFSET = 1_000_000
# Held out from training and apart from the evaluation rooms: the training runs' validation clips.
VALIDATION_ROOM_SEEDS = (EVAL_ROOM_SEED_OFFSET + 500_000, EVAL_ROOM_SEED_OFFSET + 600_000)


# ---------------------------------------------------------------------- the architecture


UPSAMPLE_FNS = ("nearest", "bilinear", "bicubic")
DEPTH_LOSSES = ("log", "log+relative")  # the depth stage's error per cell: training.depth.loss


@dataclass(frozen=True)
class VaeConfig:
    """A per-frame ``AutoencoderTiny`` (the CPU models; a Wan2.2 base brings its own VAE).

    Levels: ``n`` entries in each tuple give ``n - 1`` halvings, a spatial factor of ``2 ** (n - 1)``
    (4 entries: 8x, a 16x16 latent grid at 128x128; 3 entries: 4x, 32x32). ``AutoencoderTiny``'s
    stride-2 convolutions and its upsampling keep the width of a level, so all encoder levels have one
    width and all decoder levels another: capacity is placed with the number of residual blocks per
    level (``num_decoder_blocks``; the first entry is the lowest resolution, where blocks are cheap).
    Unset block counts follow ``AutoencoderTiny``'s pattern for ``n`` levels: encoder ``(1, 3, ..., 3)``,
    decoder ``(3, ..., 3, 1)`` -- for 4 levels exactly its defaults.
    """

    latent_channels: int  # channels of a latent token
    encoder_block_out_channels: tuple[int, ...]  # encoder width per level; len - 1 halvings of the frame
    decoder_block_out_channels: tuple[int, ...]  # decoder width per level (its cost dominates a step)
    num_encoder_blocks: tuple[int, ...] | None = None  # residual blocks per encoder level (None: 1, 3, ..., 3)
    num_decoder_blocks: tuple[int, ...] | None = None  # per decoder level, lowest resolution first (None: 3, ..., 3, 1)
    upsample_fn: str = "nearest"  # the decoder's x2 upsampling (torch.nn.Upsample mode): one of UPSAMPLE_FNS

    def __post_init__(self) -> None:
        n_enc, n_dec = len(self.encoder_block_out_channels), len(self.decoder_block_out_channels)
        if self.num_encoder_blocks is None:
            object.__setattr__(self, "num_encoder_blocks", (1,) + (3,) * (n_enc - 1))
        if self.num_decoder_blocks is None:
            object.__setattr__(self, "num_decoder_blocks", (3,) * (n_dec - 1) + (1,))

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent cell along each side."""
        return 2 ** (len(self.decoder_block_out_channels) - 1)

    def problems(self) -> list[str]:
        """What is wrong with this design (empty: it builds), as ``key: reason`` lines."""
        out = []
        enc, dec = self.encoder_block_out_channels, self.decoder_block_out_channels
        if self.latent_channels < 1:
            out.append(f"latent_channels: must be positive, got {self.latent_channels}")
        if len(enc) < 2 or len(enc) != len(dec):
            out.append(f"encoder_block_out_channels / decoder_block_out_channels: need as many levels (>= 2) in both "
                       f"(the encoder's halvings must match the decoder's doublings), got {len(enc)} and {len(dec)}")
        for key, widths in (("encoder_block_out_channels", enc), ("decoder_block_out_channels", dec)):
            if len(set(widths)) != 1 or min(widths) < 1:
                out.append(f"{key}: AutoencoderTiny keeps one width across levels (place capacity with the block "
                           f"counts), got {list(widths)}")
        for key, blocks, widths in (("num_encoder_blocks", self.num_encoder_blocks, enc),
                                    ("num_decoder_blocks", self.num_decoder_blocks, dec)):
            if len(blocks) != len(widths) or min(blocks) < 0:
                out.append(f"{key}: one count >= 0 per level ({len(widths)}), got {list(blocks)}")
        if self.upsample_fn not in UPSAMPLE_FNS:
            out.append(f"upsample_fn: one of {list(UPSAMPLE_FNS)}, got {self.upsample_fn!r}")
        return out


@dataclass(frozen=True)
class DepthHeadConfig:
    """The depth head the model ships (:class:`~mirage_gym.model.DepthHead`)."""

    hidden_channels: int  # width of the trunk at latent resolution
    num_blocks: int  # residual blocks in the trunk
    min_depth: float  # metres: the head's output range is [min_depth, max_depth]
    max_depth: float
    context_levels: int = 0  # stride-2 levels of the U-Net context path (0: none)
    context_blocks: int = 1  # residual blocks at each context level


@dataclass(frozen=True)
class TransformerConfig:
    """The widened Wan transformer of the CPU models (:func:`~mirage_gym.model.transformer.build_transformer`)."""

    patch_size: tuple[int, int, int]  # (t, h, w) latent cells per token
    num_attention_heads: int
    attention_head_dim: int  # width = heads x head dim
    text_dim: int  # width of the (empty) prompt embedding
    freq_dim: int  # width of the timestep embedding
    ffn_dim: int  # hidden width of each block's feed-forward layer
    num_layers: int
    rope_max_seq_len: int  # longest token axis the rotary embedding covers


@dataclass(frozen=True)
class LoraConfig:
    """The peft LoRA put on a Wan2.2 base's transformer(s)."""

    rank: int
    alpha: int | None = None  # LoRA scale numerator (None: the rank)
    ffn: bool = False  # also on the feed-forward layers, not only attention
    dropout: float = 0.0
    patch_embedding: str = "extra"  # "extra": train only the new conditioning channels; "all": the whole layer


@dataclass(frozen=True)
class SamplingConfig:
    """How the generator denoises a chunk."""

    num_inference_steps: int
    shift: float | None = None  # flow-matching schedule shift (None: the base scheduler's)
    cache_guidance: float = 0.0  # 0-1: how hard cached cells are held to the cache while denoising


@dataclass(frozen=True)
class MemoryConfig:
    """The latent cache."""

    voxel_size: float  # metres per voxel of the hashed store
    capacity: int  # voxels kept per scene
    interpolation: str = "nearest"  # how a read places tokens in a moved view: "nearest" cell or "bilinear"
    footprint: int = 1  # cells a side a token covers at most when seen from nearer than it was written
    observed_margin: float | None = None  # keep generated tokens out of the start frames' observed space (None: off)
    anchor_depth: bool = False  # a chunk's depth in cached cells is the remembered surface's, not a fresh estimate
    filter_history: int = 0  # frames before a chunk the token filter also projects it into (0: the chunk alone)


@dataclass(frozen=True)
class ModelConfig:
    """The architecture: everything :func:`build_generator` needs, nothing about training."""

    resolution: int  # frames are resolution x resolution pixels
    fov_deg: float  # horizontal field of view of the camera
    chunk_frames: int  # pixel frames generated per chunk (per env step); 1 + 4k for a Wan VAE
    context_frames: int  # clean latent frames before each chunk
    depth_head: DepthHeadConfig
    sampling: SamplingConfig
    memory: MemoryConfig
    vae: VaeConfig | None = None  # None: the Wan2.2 base's VAE
    transformer: TransformerConfig | None = None  # None: the Wan2.2 base's transformer(s)
    lora: LoraConfig | None = None  # set for a LoRA on a Wan2.2 base


# ---------------------------------------------------------------------- training


@dataclass(frozen=True)
class DataConfig:
    """The procedural houses training draws from."""

    train_room_seeds: tuple[int, int] = (0, 100_000)  # [low, high) house seeds; high <= EVAL_ROOM_SEED_OFFSET
    rooms_in_pool: int = 32  # houses live at once in a frame stream (stage 1, depth stage)
    rooms_per_shard: int = 8  # houses behind one shard of encoded clips
    moving_objects_prob: float = 0.3  # chance that a house gets moving objects


@dataclass(frozen=True)
class StageTraining:
    """What every stage's loop (:func:`~mirage_gym.training.loop.fit`) needs."""

    steps: int  # optimisation steps of the whole run
    batch_size: int
    lr: float  # peak learning rate (AdamW), after a linear warm-up, then cosine decay
    warmup: int  # warm-up steps
    log_every: int  # steps between tensorboard/tqdm updates and validations
    checkpoint_every: int  # steps between checkpoints (and one at the end)
    seed: int = 0  # every random draw of step s comes from (seed, s)


@dataclass(frozen=True)
class VaeTraining(StageTraining):
    """Stage 1: the autoencoder and an auxiliary depth head on ground-truth renders."""

    crop: int | None = None  # pixels of the random square crop trained on (None: whole frames)
    freeze_encoder_at: int | None = None  # from this step on the encoder is final (stage 2 can encode)
    latent_noise: float = 0.1  # relative std of the noise on the latents the decoder and head see
    depth_weight: float = 0.1  # weight of the depth loss (small: depth must not crowd colour out)
    ssim_weight: float = 0.5
    chroma_weight: float = 1.0  # weight of the chroma terms of the colour L1
    depth_head_context_levels: int = 0  # stage 1's own head: model.depth_head with these context levels
    # Sharpness: L1 between the finite-difference image gradients (x and y) of reconstruction and target.
    # Pixel L1 and SSIM are content with a blur that is right on average; this term asks for the edges.
    grad_weight: float = 0.0
    # Adversarial term: a small spectral-norm PatchGAN (vae_stage.PatchDiscriminator), trained from scratch
    # with the hinge loss against the decoder; the decoder gets gan_weight * (-D(reconstruction)).mean().
    gan_weight: float = 0.0  # 0: no discriminator at all
    gan_start: float = 0.3  # when the discriminator starts: < 1, a fraction of the run's steps; >= 1, a step
    gan_lr: float = 2e-4  # the discriminator's AdamW learning rate (constant; betas 0.5, 0.99)
    gan_width: int = 32  # the discriminator's first-layer width (doubled twice)

    def gan_start_step(self) -> int:
        """The first step with the adversarial term (``gan_start`` read as a fraction or as a step)."""
        return round(self.gan_start * self.steps) if self.gan_start < 1 else int(self.gan_start)


@dataclass(frozen=True)
class DepthTraining(StageTraining):
    """The depth stage: ``model.depth_head`` alone on the frozen stage-1 latents (and generated ones)."""

    frames: int = 8192  # encoded training frames, rendered once
    generated_frames: int = 2048  # frames generated by a stage-2 model (with --generator)
    latent_noise: float = 0.1
    loss: str = "log"  # "log": |log d - log d_gt|; "log+relative": plus |d - d_gt| / d_gt, the abs-rel figure


@dataclass(frozen=True)
class FlowMatchingTraining(StageTraining):
    """What stage 2 and a LoRA share: encoded clips, and chunks over a cache built from their history."""

    num_clips: int = 768  # training clips, encoded once
    val_clips: int = 64  # validation clips (houses in VALIDATION_ROOM_SEEDS)
    cache_dropout: float = 0.2  # share of examples with an empty cache
    history_keep: tuple[float, float] = (0.3, 1.0)  # range of the share of history frames written to the cache
    context_noise: float = 0.05  # std of the noise on the context latents


@dataclass(frozen=True)
class GeneratorTraining(FlowMatchingTraining):
    """Stage 2: the transformer, flow matching over the cache.

    ``context_noise`` (inherited) is the std of Gaussian noise added to the clean context latents
    of every training example (ground-truth encodings): at inference the context is the model's
    own previous chunk, never a clean encoding, so the model learns to take its history as
    imperfect. The context keeps timestep 0 (the sampler gives it 0 too).

    The depth loss (``depth_weight > 0``) puts the transformer's predicted clean latents
    ``x0_hat = x_s - s * v_hat`` through the frozen depth head and scores the token depth against
    the ground truth rendered at the latent cells (log-L1, :func:`~mirage_gym.training.depth_stage.depth_loss`),
    so what the transformer paints where nothing is cached carries geometry. Gradients reach the
    transformer only; the head is frozen.
    """

    clip_frames: int = 16  # frames per encoded training clip
    # Weight of the depth loss on x0_hat (0: none, the flow-matching loss alone; stage 2 as before it existed).
    depth_weight: float = 0.0
    # The depth loss of an example with noise level s is weighted (1 - s) ** depth_sigma_power (0: the same at
    # every level). At high noise x0_hat is the posterior mean, a blur over every plausible chunk: its depth through
    # a head trained on sharp encodings means little, and d x0_hat / d v = -s makes its gradient largest there.
    depth_sigma_power: float = 1.0


@dataclass(frozen=True)
class SelfForcingTraining(StageTraining):
    """The self-forcing fine-tune: the transformer on its own multi-chunk rollouts.

    Each example is a clip started from its first frame (``MirageGenerator.start``); the sampler
    generates ``r - 1`` chunks (no gradient), reading and writing its latent cache exactly as at
    inference, and the flow-matching loss is scored on chunk ``r`` against the clip's encoded
    ground truth, conditioned on the model's own context and cache (``r`` drawn in
    ``[2, rollout_chunks]`` per step). Errors the model makes in its history become part of
    what it learns to continue from, so they do not compound over a trajectory.
    """

    num_clips: int = 256  # training clips, encoded once (with their start image)
    val_clips: int = 32  # validation clips (houses in VALIDATION_ROOM_SEEDS)
    clip_frames: int = 13  # frames per clip: the start frame, then chunks; >= 1 + rollout_chunks * chunk_frames
    rollout_chunks: int = 2  # most chunks of a rollout, the scored one included (>= 2)
    rollout_steps: int | None = None  # denoising steps per generated chunk (None: the model's sampling steps)
    depth_weight: float = 0.0  # as GeneratorTraining.depth_weight, on the scored chunk
    depth_sigma_power: float = 1.0  # as GeneratorTraining.depth_sigma_power


@dataclass(frozen=True)
class LoraDepthTraining(StageTraining):
    """A LoRA run's first phase: ``model.depth_head`` on the Wan latents of the clips."""

    latent_noise: float = 0.1


@dataclass(frozen=True)
class LoraTraining(FlowMatchingTraining):
    """A LoRA run's second phase: the LoRA and the widened input channels, flow matching over the cache."""

    chunks_per_clip: int = 4  # chunks of model.chunk_frames per clip (>= 2: the first gives context)
    clips_per_shard: int = 8
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class TrainingConfig:
    """One section per stage; a stage a config does not train is absent (None)."""

    data: DataConfig = field(default_factory=DataConfig)
    vae: VaeTraining | None = None
    depth: DepthTraining | None = None
    generator: GeneratorTraining | None = None
    self_forcing: SelfForcingTraining | None = None  # after stage 2, before the depth stage's generated pass
    lora_depth: LoraDepthTraining | None = None
    lora: LoraTraining | None = None


@dataclass(frozen=True)
class Config:
    """A whole config file."""

    name: str
    model: ModelConfig
    training: TrainingConfig = field(default_factory=TrainingConfig)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (what checkpoints and run folders store)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def stage(self, name: str) -> Any:
        """The training section of stage ``name``; a ``ValueError`` when the config does not train it."""
        section = getattr(self.training, name)
        if section is None:
            raise ValueError(f"config {self.name!r} has no 'training.{name}' section: it does not train this stage")
        return section


# ---------------------------------------------------------------------- loading

T = TypeVar("T")

# The old flat schema: top-level key -> where it lives now.
_OLD_KEYS = {
    "resolution": "model.resolution", "fov_deg": "model.fov_deg", "chunk": "model.chunk_frames",
    "chunk_frames": "model.chunk_frames", "context_frames": "model.context_frames", "vae": "model.vae",
    "depth_head": "model.depth_head", "transformer": "model.transformer", "lora": "model.lora",
    "sampling": "model.sampling", "memory": "model.memory", "data": "training.data", "train_vae": "training.vae",
    "train_depth": "training.depth", "train_generator": "training.generator", "train_lora": "training.lora",
    "clips": "training.lora",
}


def _migrate(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """An old flat-schema config in the new schema, with a warning that says what was renamed."""
    new: dict[str, Any] = {k: raw[k] for k in ("name", "description") if k in raw}
    model: dict[str, Any] = new.setdefault("model", {})
    training: dict[str, Any] = new.setdefault("training", {})
    moved = []
    for key, value in raw.items():
        if key in ("name", "description"):
            continue
        if key not in _OLD_KEYS:
            raise ValueError(f"config file {path}: unknown key {key!r} (old schema)")
        moved.append(f"{key} -> {_OLD_KEYS[key]}")
        section, name = _OLD_KEYS[key].split(".")
        target = model if section == "model" else training
        if key == "depth_head" and "steps" in value:  # the LoRA config mixed head and head training
            arch = ("hidden_channels", "num_blocks", "min_depth", "max_depth", "context_levels", "context_blocks")
            model["depth_head"] = {**model.get("depth_head", {}), **{k: v for k, v in value.items() if k in arch}}
            training["lora_depth"] = {k: v for k, v in value.items() if k not in arch}
            moved[-1] = "depth_head -> model.depth_head (architecture) and training.lora_depth (its training)"
        elif key == "train_depth" and "head" in value:  # the shipped head's architecture was a depth-stage override
            training["depth"] = {k: v for k, v in value.items() if k != "head"}
            model["depth_head"] = {**model.get("depth_head", {}), **value["head"]}
            moved[-1] = "train_depth -> training.depth; train_depth.head -> model.depth_head"
        elif key == "clips":
            training["lora"] = {**training.get("lora", {}), **value}
        else:
            target[name] = {**target.get(name, {}), **value} if isinstance(value, dict) and name in target else value
    warnings.warn(
        f"config file {path} uses the old flat schema; rename: {'; '.join(moved)}", FutureWarning, stacklevel=3
    )
    return new


def _is_optional(tp: Any) -> tuple[bool, Any]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _convert(tp: Any, value: Any, where: str, source: str) -> Any:
    optional, tp = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{source}: {where} must not be null")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{source}: {where} must be an object, got {value!r}")
        return _build(tp, value, where, source)
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or (args[-1] is not Ellipsis and len(value) != len(args)):
            raise ValueError(f"{source}: {where} must be a list of {len(args)} values, got {value!r}")
        items = args[:1] * len(value) if args[-1] is Ellipsis else args
        return tuple(_convert(t, v, f"{where}[{i}]", source) for i, (t, v) in enumerate(zip(items, value)))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ValueError(f"{source}: {where} must be {tp.__name__}, got {value!r}")
    return value


def _build(cls: type[T], data: dict[str, Any], where: str, source: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{source}: unknown key {prefix}{unknown[0]} (known: {sorted(fields)})")
    missing = [n for n, f in fields.items()
               if n not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{source}: missing key {prefix}{missing[0]}")
    return cls(**{n: _convert(hints[n], v, f"{prefix}{n}", source) for n, v in data.items()})


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """A :class:`Config` from JSON data (new schema, or the old flat one with a warning), checked."""
    if "model" not in data and set(data) & set(_OLD_KEYS):  # the old flat schema; else "missing key model" below
        data = _migrate(data, Path(source))
    config = _build(Config, data, "", source)
    _check(config, source)
    return config


def _check(config: Config, source: str) -> None:
    model, training = config.model, config.training

    def positive(value: int, name: str) -> None:
        if value < 1:
            raise ValueError(f"{source}: {name} must be a positive integer, got {value!r}")

    for key in ("resolution", "chunk_frames", "context_frames"):
        positive(getattr(model, key), f"model.{key}")
    if model.memory.interpolation not in INTERPOLATIONS:
        raise ValueError(f"{source}: model.memory.interpolation must be one of {INTERPOLATIONS}, got "
                         f"{model.memory.interpolation!r}")
    footprint = model.memory.footprint
    if isinstance(footprint, bool) or not isinstance(footprint, int) or footprint < 1:
        raise ValueError(f"{source}: model.memory.footprint must be an integer >= 1, got {footprint!r}")
    margin = model.memory.observed_margin
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin < 0):
        raise ValueError(f"{source}: model.memory.observed_margin must be a number >= 0 or null, got {margin!r}")
    if isinstance(model.memory.filter_history, bool) or not isinstance(model.memory.filter_history, int) \
            or model.memory.filter_history < 0:
        raise ValueError(f"{source}: model.memory.filter_history must be an integer >= 0, got "
                         f"{model.memory.filter_history!r}")
    if not isinstance(model.memory.anchor_depth, bool):
        raise ValueError(f"{source}: model.memory.anchor_depth must be true or false, got "
                         f"{model.memory.anchor_depth!r}")
    if model.vae is not None:
        problems = model.vae.problems()
        if problems:
            raise ValueError(f"{source}: model.vae." + problems[0])
        cell = model.vae.spatial_factor * (math.lcm(*model.transformer.patch_size[1:]) if model.transformer else 1)
        if model.resolution % cell:
            raise ValueError(f"{source}: model.resolution must be a multiple of {cell} (the autoencoder's "
                             f"{model.vae.spatial_factor}x times the transformer's patch), got {model.resolution}")
    vae = training.vae
    if vae is not None:
        if vae.grad_weight < 0 or vae.gan_weight < 0 or vae.gan_start < 0:
            raise ValueError(f"{source}: training.vae.grad_weight, gan_weight and gan_start must be >= 0, got "
                             f"{vae.grad_weight}, {vae.gan_weight}, {vae.gan_start}")
        if vae.gan_weight > 0 and (vae.gan_lr <= 0 or vae.gan_width < 1):
            raise ValueError(f"{source}: training.vae.gan_lr and gan_width must be positive, got {vae.gan_lr}, "
                             f"{vae.gan_width}")
    lo, hi = training.data.train_room_seeds
    if not 0 <= lo < hi <= EVAL_ROOM_SEED_OFFSET:
        raise ValueError(f"{source}: training.data.train_room_seeds must lie in [0, {EVAL_ROOM_SEED_OFFSET}) "
                         f"(held out above), got {[lo, hi]}")
    if model.lora is not None:
        positive(model.lora.rank, "model.lora.rank")
        if model.lora.patch_embedding not in ("extra", "all"):
            raise ValueError(f"{source}: model.lora.patch_embedding must be 'extra' or 'all', "
                             f"got {model.lora.patch_embedding!r}")
    for f in dataclasses.fields(training):  # what every stage's loop needs, checked before any data is made
        section = getattr(training, f.name)
        if isinstance(section, StageTraining):
            for key in ("steps", "batch_size", "log_every", "checkpoint_every"):
                positive(getattr(section, key), f"training.{f.name}.{key}")
            if section.warmup < 0 or not section.lr > 0:
                raise ValueError(f"{source}: training.{f.name} needs warmup >= 0 and lr > 0, got "
                                 f"{section.warmup}, {section.lr}")
    if training.depth is not None and training.depth.loss not in DEPTH_LOSSES:
        raise ValueError(f"{source}: training.depth.loss must be one of {DEPTH_LOSSES}, got {training.depth.loss!r}")
    for name in ("generator", "self_forcing"):
        section = getattr(training, name)
        if section is not None and section.depth_weight < 0:
            raise ValueError(f"{source}: training.{name}.depth_weight must be >= 0, got {section.depth_weight}")
    if training.self_forcing is not None:
        sf = training.self_forcing
        for key in ("num_clips", "val_clips", "clip_frames"):
            positive(getattr(sf, key), f"training.self_forcing.{key}")
        if sf.rollout_chunks < 2:
            raise ValueError(f"{source}: training.self_forcing.rollout_chunks must be >= 2 (the scored chunk needs a "
                             f"generated one before it), got {sf.rollout_chunks}")
        if sf.rollout_steps is not None:
            positive(sf.rollout_steps, "training.self_forcing.rollout_steps")
        if sf.clip_frames < 1 + sf.rollout_chunks * model.chunk_frames:
            raise ValueError(f"{source}: training.self_forcing.clip_frames must be >= 1 + rollout_chunks x "
                             f"model.chunk_frames = {1 + sf.rollout_chunks * model.chunk_frames}, got {sf.clip_frames}")
    if training.lora is not None:
        for key in ("num_clips", "val_clips", "chunks_per_clip", "clips_per_shard"):
            positive(getattr(training.lora, key), f"training.lora.{key}")
        if training.lora.chunks_per_clip < 2:
            raise ValueError(f"{source}: training.lora.chunks_per_clip must be >= 2 (a chunk needs one before it "
                             "as context)")


def load_config(name_or_path: str | Path, *, shipped: str = "*.json") -> Config:
    """A config by shipped name (``"default"``) or JSON path; a missing file lists the shipped configs matching ``shipped``."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.json"
    if not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob(shipped))
        raise ValueError(f"config {str(name_or_path)!r} not found (no file {path}); shipped configs: {names}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"config file {path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a JSON object")
    return config_from_dict(data, f"config file {path}")


# ---------------------------------------------------------------------- building


def build_generator(
    model: ModelConfig | Config,
    *,
    transformer: Any = None,
    vae: VideoVAE | None = None,
    depth_head: DepthHead | None = None,
    scheduler: Any = None,
    transformer_2: Any = None,
    boundary_ratio: float | None = None,
) -> MirageGenerator:
    """The :class:`~mirage_gym.model.MirageGenerator` of a model config, with every sampling and memory setting.

    Parts given (trained ones, or a Wan2.2 base's from ``load_components``) are used as they
    are; parts not given are built from the config with fresh (random) weights, in the order
    VAE, transformer, depth head. Returned in train mode, on the CPU unless the parts are elsewhere.
    """
    model = model.model if isinstance(model, Config) else model
    if vae is None:
        if model.vae is None:
            raise ValueError("the model config has no 'vae' section: pass the base's VAE")
        vae = VideoVAE(build_autoencoder(**dataclasses.asdict(model.vae)))
    if transformer is None:
        if model.transformer is None:
            raise ValueError("the model config has no 'transformer' section: pass the base's transformer")
        transformer = build_transformer(vae.latent_channels, **dataclasses.asdict(model.transformer))
    if depth_head is None:
        depth_head = DepthHead(latent_channels=vae.latent_channels, spatial_factor=vae.spatial_factor,
                               **dataclasses.asdict(model.depth_head))
    sampling = model.sampling
    shift = sampling.shift  # applied to a given scheduler; a new one is built with it
    if scheduler is None:
        if shift is None:
            raise ValueError("the model config's sampling has no shift: pass the base's scheduler")
        scheduler, shift = FlowMatchEulerDiscreteScheduler(shift=shift), None
    return MirageGenerator(
        transformer, vae, depth_head, scheduler, transformer_2=transformer_2, boundary_ratio=boundary_ratio,
        num_inference_steps=sampling.num_inference_steps, shift=shift,
        voxel_size=model.memory.voxel_size, cache_capacity=model.memory.capacity,
        cache_interpolation=model.memory.interpolation, cache_footprint=model.memory.footprint,
        observed_margin=model.memory.observed_margin,
        anchor_depth=model.memory.anchor_depth, filter_history=model.memory.filter_history,
        context_frames=model.context_frames, cache_guidance=sampling.cache_guidance,
    )
