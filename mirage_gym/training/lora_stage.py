"""LoRA fine-tuning of a real Wan2.2 checkpoint: ``mirage-gym train lora --base path/to/Wan2.2-folder``.

The Wan2.2 transformer(s) learn to read the latent cache through the same recipe as the
CPU default's stage 2 (:mod:`.generator_stage`): chunks of ground-truth trajectories behind
their clean context, a :class:`~mirage_gym.memory.LatentCache` filled from a random part
of the clip's other frames with predicted depth and the token filter's decisions, random
cache dropout, and the flow-matching loss (``make_chunk_batch`` and ``flow_matching_loss``
are reused as they are). What differs:

* **Base** -- a Wan2.2 diffusers folder (TI2V-5B or A14B), loaded by
  :func:`~mirage_gym.model.pretrained.load_components`: the patch embedding is widened
  (zero-initialised), the VAE stays frozen, the text encoder is not needed (the empty
  prompt is trained, as :class:`~mirage_gym.model.MirageGenerator` samples by default).
* **Trained** -- a peft LoRA (adapter ``"mirage"``) on the attention projections and
  optionally the FFN, and the widened input channels. ``lora.patch_embedding``:
  ``"extra"`` (default) trains only the ``C + 7`` new conditioning channels -- the
  checkpoint's own input weights and bias stay bit for bit, so the base's reading of the
  noisy latents changes only through the LoRA; ``"all"`` trains the whole patch
  embedding. The patch embedding is never weight-decayed (decay would pull pretrained
  weights to zero). Nothing else of the base changes.
* **A14B** -- both experts get a LoRA (and their own widened channels), and each sample
  trains the expert the sampler uses at its noise level (timestep ``>= boundary_ratio *
  num_train_timesteps``: the high-noise ``transformer``, else ``transformer_2``). Noise
  levels follow the sampler's shifted schedule, so each expert sees the share of steps it
  serves at inference; one step may run both experts on their parts of the batch.
* **Data** -- the Wan VAE compresses time 4-fold: clips are encoded chunk by chunk and
  kept per *latent* frame (:mod:`.video_clips`), and training chunks are whole encoded
  chunks (``align``).
* **Depth head** -- Wan has none, so a :class:`~mirage_gym.model.DepthHead` (``model.depth_head``,
  trained by ``training.lora_depth``) is first trained on the clips' Wan latents against ground-truth depth (at the latent cell
  centres and at the pixels, ``|log d - log d_gt|``, with a little latent noise as in
  stage 1). It is then frozen, and the clips are annotated with *its* depth and filter
  decisions before the LoRA trains, so training caches are built as at inference.
* **Precision** -- on CUDA the frozen base weights are bfloat16 and the trained
  parameters float32 (AdamW on fp32 master weights), the forward under bf16 autocast; on
  CPU everything is float32. ``precision="bf16"`` runs the GPU recipe anywhere.

Run folder ``out/``::

    raw_clips/ raw_val_clips/   Wan latents + ground-truth depth (encoded once)
    depth/checkpoint.pt         the depth-head phase (resumable), depth/depth_head/ its export,
                                depth/tb/ its tensorboard (train/loss, val/abs_rel, train/lr)
    clips/ val_clips/           latents with predicted depth and keep masks (LatentClips)
    checkpoint.pt, config.json  the LoRA phase: trained parameters, optimiser (resumable)
    tb/                         tensorboard: train/loss, val/loss, train/lr
    lora/                       the result: MirageGenerator.from_pretrained(base, lora=out / "lora")
    run.json                    what the stored data depends on; another base or setting is refused
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from mirage_gym.config import VALIDATION_ROOM_SEEDS, Config, LoraConfig, LoraTraining, build_generator, load_config
from mirage_gym.geometry import scale_intrinsics
from mirage_gym.metrics import abs_rel
from mirage_gym.model import DepthHead, MirageGenerator, VideoVAE
from mirage_gym.model.pretrained import MIRAGE_CONFIG, LoadedComponents, add_lora, load_components, lora_parameters
from mirage_gym.training.depth_stage import depth_loss
from mirage_gym.training.generator_stage import ChunkBatch, flow_matching_loss, flow_matching_stage, schedule_of
from mirage_gym.training.latent_clips import LatentClips, shard_streams
from mirage_gym.training.loop import RunOptions, Stage, add_common_arguments, fit, print_final, stage_settings
from mirage_gym.training.vae_stage import with_latent_noise
from mirage_gym.training.video_clips import RawVideoClips, annotate_video_clips, encode_video_clips

__all__ = ["LoraRun", "load_lora_config", "train_lora", "expert_flow_loss", "add_arguments", "run"]

PRECISIONS = ("auto", "bf16", "fp32")
RUN_FILE = "run.json"
EXPERTS = ("transformer", "transformer_2")


@dataclass
class LoraRun:
    """What :func:`train_lora` leaves: the trained generator (in memory, eval mode), its folder, statistics."""

    generator: MirageGenerator
    folder: Path
    stats: dict[str, float]


# ---------------------------------------------------------------------- configuration


def load_lora_config(name_or_path: str | Path) -> Config:
    """A LoRA config by shipped name (``"lora_default"``) or JSON path, checked to be one."""
    config = load_config(name_or_path, shipped="lora*.json")
    _check_is_lora(config, f"config {str(name_or_path)!r}")
    return config


def _check_is_lora(config: Config, source: str) -> None:
    missing = [key for key, value in (("model.lora", config.model.lora), ("training.lora", config.training.lora),
                                      ("training.lora_depth", config.training.lora_depth)) if value is None]
    if missing:
        raise ValueError(f"{source} is not a LoRA config: it has no {', '.join(missing)}")


def _check_against_base(config: Config, parts: LoadedComponents) -> int:
    """Checks that need the base; returns the latent frames per chunk."""
    vae, model = parts.vae, config.model
    if not vae.is_temporal:
        raise ValueError(f"base {parts.base_model_path}: its VAE {type(vae.vae).__name__} is not a Wan (temporal) VAE")
    try:
        t = vae.num_latent_frames(model.chunk_frames)
    except ValueError as err:
        raise ValueError(f"chunk_frames: {err}") from err
    _, p_h, p_w = parts.transformer.config.patch_size
    cell = vae.spatial_factor * max(p_h, p_w)
    if model.resolution % cell:
        raise ValueError(f"resolution {model.resolution} must be a multiple of {cell} for this base (VAE x patch)")
    k, chunks = model.context_frames, config.training.lora.chunks_per_clip
    if k > (chunks - 1) * t:
        raise ValueError(f"context_frames {k} exceed the {(chunks - 1) * t} latent frames before a clip's last chunk")
    return t


def _load_base(base: Path, device: torch.device, precision: str) -> tuple[LoadedComponents, bool]:
    """The Wan2.2 base; ``mixed`` tells whether its transformers are bf16 (trained under autocast)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not (base / "model_index.json").is_file():
        kind = (
            "a Mirage folder, not its Wan2.2 base" if (base / MIRAGE_CONFIG).is_file()
            else "missing" if not base.exists() else "without model_index.json"
        )
        raise ValueError(
            f"base {base} is not a Wan2.2 folder ({kind}): give a diffusers WanPipeline folder such as "
            "Wan-AI/Wan2.2-TI2V-5B-Diffusers or Wan-AI/Wan2.2-T2V-A14B-Diffusers, downloaded beforehand"
        )
    mixed = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    parts = load_components(base, torch_dtype=torch.bfloat16 if mixed else torch.float32, device=device)
    return parts, mixed


def _run_signature(config: Config, base: Path, seed: int) -> dict[str, Any]:
    """Everything the stored clips, depth head and LoRA checkpoint depend on."""
    model, training = config.to_dict()["model"], config.to_dict()["training"]
    clips = {k: training["lora"][k] for k in ("num_clips", "val_clips", "chunks_per_clip", "clips_per_shard")}
    keys = ("resolution", "fov_deg", "chunk_frames", "context_frames", "depth_head", "lora")
    return {"base": str(base.resolve()), "seed": seed, **{k: model[k] for k in keys}, "clips": clips,
            "data": training["data"], "lora_depth": training["lora_depth"]}


def _check_run_folder(out: Path, signature: dict[str, Any]) -> None:
    path = out / RUN_FILE
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}): is {out} a LoRA run folder?") from err
    diff = sorted(k for k in set(previous) | set(signature) if previous.get(k) != signature.get(k))
    if diff:
        raise ValueError(
            f"{out} holds a LoRA run with other settings ({', '.join(diff)}; see {path}): its clips and "
            "checkpoints do not fit this run. Use another --out"
        )


# ---------------------------------------------------------------------- data and depth head


def _train_depth_head(
    config: Config, out: Path, raw: RawVideoClips, val: RawVideoClips, vae: VideoVAE, run: RunOptions,
) -> tuple[DepthHead, bool, float]:
    """Train (or finish training) ``model.depth_head`` on the Wan latents, in ``out``.

    ``run``'s seed, device, resume and progress apply; its steps and batch size are the LoRA's, not the head's
    (``training.lora_depth`` sets those). Returns the head frozen, whether this call changed it, and its
    token-depth abs-rel on the validation clips.
    """
    run = dataclasses.replace(run, steps=None, batch_size=None)
    hp, device = stage_settings(config, "lora_depth", run), run.device
    head = DepthHead(latent_channels=vae.latent_channels, spatial_factor=vae.spatial_factor,
                     **dataclasses.asdict(config.model.depth_head)).to(device)

    def batch(step: int, rng: torch.Generator) -> tuple[Tensor, ...]:
        return tuple(x.to(device) for x in raw.frames(torch.randint(raw.num_latent_frames, (hp.batch_size,), generator=rng)))

    def loss(batch: tuple[Tensor, ...], rng: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        latents, depth_token, depth_pixel = batch
        value = depth_loss(head, with_latent_noise(latents, hp.latent_noise, rng, scale=latents.std()), depth_pixel,
                           depth_token)
        return value, {"loss": value.item()}

    def validate() -> dict[str, float]:
        errors = []
        for index in torch.arange(val.num_latent_frames).split(hp.batch_size):
            latents, depth_token, _ = (x.to(device) for x in val.frames(index))
            errors.append(abs_rel(head(latents).token_depth, depth_token))
        return {"abs_rel": torch.cat(errors).mean().item()}

    stage = Stage("depth head", {"depth_head": head}, batch, loss, validate=validate)
    fitted = fit(stage, hp, out, config=config, run=run)
    head.eval().requires_grad_(False)
    with torch.no_grad():
        abs_rel_val = validate()["abs_rel"]
    head.save_pretrained(out / "depth_head")
    return head, fitted.first_step < fitted.step, abs_rel_val


def _prepare_data(
    config: Config, out: Path, vae: VideoVAE, run: RunOptions, *, seed: int,
) -> tuple[LatentClips, LatentClips, DepthHead, float]:
    """Encode the clips (streams seeded from ``seed``), train the depth head on them (:func:`_train_depth_head`
    with ``run``), annotate them with it (each step resumable).

    Returns the training and validation clips, the frozen depth head and its validation abs-rel.
    """
    hp = config.training.lora
    chunk_args = dict(chunk_frames=config.model.chunk_frames, chunks=hp.chunks_per_clip, progress=run.progress)
    sources = {
        "clips": (shard_streams(config, vae.spatial_factor, config.training.data.train_room_seeds, seed), hp.num_clips),
        "val_clips": (shard_streams(config, vae.spatial_factor, VALIDATION_ROOM_SEEDS, seed + 1), hp.val_clips),
    }
    for name, (streams, count) in sources.items():
        encode_video_clips(out / f"raw_{name}", streams, vae, num_clips=count, clips_per_shard=hp.clips_per_shard,
                           **chunk_args)
    head, head_changed, depth_abs_rel = _train_depth_head(
        config, out / "depth", RawVideoClips(out / "raw_clips"), RawVideoClips(out / "raw_val_clips"), vae, run,
    )
    for name, (streams, _) in sources.items():
        if head_changed:  # annotations made with an earlier depth head are stale
            shutil.rmtree(out / name, ignore_errors=True)
        annotate_video_clips(out / f"raw_{name}", out / name, streams, vae, head, **chunk_args)
    return LatentClips(out / "clips"), LatentClips(out / "val_clips"), head, depth_abs_rel


# ---------------------------------------------------------------------- LoRA


def _subset(batch: ChunkBatch, rows: Tensor) -> ChunkBatch:
    return ChunkBatch(batch.context[rows], batch.target[rows], batch.cache[rows], batch.mask[rows], batch.poses[rows])


def expert_flow_loss(
    experts: list[nn.Module], boundary: float | None, batch: ChunkBatch, latent_intrinsics: Tensor, sigmas: Tensor,
    noise: Tensor, num_train_timesteps: int,
) -> Tensor:
    """The flow-matching loss, each sample scored by the expert the sampler uses at its noise level.

    With one expert this is ``flow_matching_loss``. With two (A14B), samples whose timestep
    ``sigma * num_train_timesteps`` is at least ``boundary * num_train_timesteps`` go to
    ``experts[0]`` (high noise), the others to ``experts[1]``; the result is the mean over the
    whole batch, as one expert's loss would be.
    """
    if len(experts) == 1:
        return flow_matching_loss(experts[0], batch, latent_intrinsics, sigmas, noise, num_train_timesteps)
    high = sigmas * num_train_timesteps >= boundary * num_train_timesteps
    total = sigmas.new_zeros(())
    for expert, rows in zip(experts, (high, ~high)):
        if rows.any():
            rows = rows.nonzero()[:, 0]
            loss = flow_matching_loss(
                expert, _subset(batch, rows), latent_intrinsics, sigmas[rows], noise[rows], num_train_timesteps
            )
            total = total + loss * (rows.numel() / sigmas.numel())
    return total


def _keep_base_channels(expert: nn.Module) -> RemovableHandle:
    """In ``extra`` mode the checkpoint's own input channels stay as they are: their gradient is zeroed
    as it is computed (AdamW moves nothing with zero gradients, and the patch embedding is never decayed)."""
    c = expert.patch_embedding.base_channels

    def zero_base(grad: Tensor) -> Tensor:
        grad = grad.clone()
        grad[:, :c] = 0
        return grad

    return expert.patch_embedding.weight.register_hook(zero_base)


def _prepare_experts(
    parts: LoadedComponents, lora: LoraConfig, *, gradient_checkpointing: bool, mixed: bool
) -> tuple[list[nn.Module], nn.ParameterDict, list[nn.Parameter], list[RemovableHandle]]:
    """Add the LoRA to every expert; returns the experts, the trained parameters (float32), the patch
    embeddings' and the gradient hooks that keep the base's input channels.

    With ``mixed``, each expert's forward runs under bf16 autocast (as accelerate wraps a
    model's forward): only the transformer computes in bf16, while the cache, the Plücker
    rays and the loss around it stay float32. :func:`_release_experts` undoes it.
    """
    experts = [m for m in (parts.transformer, parts.transformer_2) if m is not None]
    trainable = nn.ParameterDict()
    patch, hooks = [], []
    for name, expert in zip(EXPERTS, experts):
        expert.requires_grad_(False)
        add_lora(expert, rank=lora.rank, alpha=lora.alpha, ffn=lora.ffn, dropout=lora.dropout)
        for key, param in lora_parameters(expert, patch_embedding=lora.patch_embedding).items():
            param.data = param.data.float()  # fp32 master weights, whatever the frozen base's dtype
            trainable[f"{name}/{key}".replace(".", "/")] = param
            if key.startswith("patch_embedding."):
                patch.append(param)
        if lora.patch_embedding == "extra":
            hooks.append(_keep_base_channels(expert))
        if gradient_checkpointing:
            expert.enable_gradient_checkpointing()
        if mixed:
            device_type = next(expert.parameters()).device.type
            expert.forward = torch.autocast(device_type, dtype=torch.bfloat16)(expert.forward)
    return experts, trainable, patch, hooks


def _release_experts(
    experts: list[nn.Module], trainable: nn.ParameterDict, hooks: list[RemovableHandle], mixed: bool
) -> None:
    """Back to sampling: eval mode, no checkpointing, autocast or gradient hooks, trained weights in the base's
    bf16 when mixed."""
    for hook in hooks:
        hook.remove()
    for expert in experts:
        expert.eval()
        if expert.is_gradient_checkpointing:
            expert.disable_gradient_checkpointing()
        if mixed:
            del expert.forward  # the class's forward again
    if mixed:  # the in-memory generator then samples exactly like the saved folder loaded in bf16
        for param in trainable.values():
            param.data = param.data.to(torch.bfloat16)


def _count(experts: list[nn.Module], trainable: nn.ParameterDict, extra_only: bool) -> tuple[int, int]:
    """Parameters the optimiser can change (the base input channels excluded in ``extra`` mode), and all of them."""
    total = sum(p.numel() for e in experts for p in e.parameters())
    count = sum(p.numel() for p in trainable.values())
    if extra_only:
        count -= sum(e.patch_embedding.weight[:, : e.patch_embedding.base_channels].numel() for e in experts)
    return count, total


def train_lora(
    config: Config,
    base: str | Path,
    out: str | Path,
    *,
    rank: int | None = None,
    precision: str = "auto",
    run: RunOptions = RunOptions(),
) -> LoraRun:
    """Fine-tune a Wan2.2 folder ``base`` into ``out`` (see the module docs); the LoRA ends in ``out/lora``.

    Args:
        config: a LoRA config (:func:`load_lora_config`).
        rank: overrides ``config.model.lora.rank``.
        precision: ``"auto"`` (bf16 base + fp32 trained weights on CUDA, fp32 on CPU), ``"bf16"`` or ``"fp32"``.
        run: ``steps`` and ``batch_size`` override ``config.training.lora``'s; ``seed`` is the LoRA's and the
            depth head's; ``resume`` continues from ``out``'s checkpoints (depth head and LoRA) when they exist.

    Everything is checked -- the config, the base, ``out``'s earlier run -- before anything is written.
    """
    base, out, device = Path(base), Path(out), run.device
    _check_is_lora(config, f"config {config.name!r}")
    if rank is not None:
        if rank < 1:
            raise ValueError(f"lora.rank must be a positive integer, got {rank!r}")
        lora_config = dataclasses.replace(config.model.lora, rank=rank)
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, lora=lora_config))
    hp: LoraTraining = stage_settings(config, "lora", run)
    parts, mixed = _load_base(base, device, precision)
    t = _check_against_base(config, parts)
    signature = _run_signature(config, base, hp.seed)
    _check_run_folder(out, signature)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_FILE).write_text(json.dumps(signature, indent=2) + "\n")

    vae = parts.vae.requires_grad_(False)
    clips, val, head, depth_abs_rel = _prepare_data(config, out, vae, run, seed=hp.seed)
    latent_k = scale_intrinsics(clips.intrinsics, 1.0 / vae.spatial_factor).to(device)

    lora = config.model.lora
    torch.manual_seed(hp.seed)  # the LoRA's initial weights, whether the data and depth phase ran now or before
    experts, trainable, patch, hooks = _prepare_experts(
        parts, lora, gradient_checkpointing=hp.gradient_checkpointing, mixed=mixed
    )
    patch_ids = {id(p) for p in patch}
    groups = [
        {"params": [p for p in trainable.values() if id(p) not in patch_ids]},
        {"params": patch, "weight_decay": 0.0},  # never decay (pretrained) input weights towards zero
    ]
    shift, num_train_timesteps = schedule_of(parts.scheduler)

    def score(batch: ChunkBatch, sigmas: Tensor, noise: Tensor) -> Tensor:
        return expert_flow_loss(experts, parts.boundary_ratio, batch, latent_k, sigmas, noise, num_train_timesteps)

    stage = flow_matching_stage(
        "lora", {"lora": trainable}, clips, val, hp, score, latent_intrinsics=latent_k,
        context_frames=config.model.context_frames, chunk=t, align=t, voxel_size=config.model.memory.voxel_size,
        interpolation=config.model.memory.interpolation, shift=shift, val_batch_size=2 * hp.batch_size, param_groups=groups,
    )
    stage.base_modules = tuple(experts)
    fitted = fit(stage, hp, out, config=config, run=run)  # leaves them in eval mode
    generator = build_generator(
        config, transformer=parts.transformer, vae=vae, depth_head=head, scheduler=parts.scheduler,
        transformer_2=parts.transformer_2, boundary_ratio=parts.boundary_ratio,
    )
    generator.base_model_path = parts.base_model_path
    folder = generator.save_pretrained(out / "lora")  # float32 values, whatever the base's dtype
    _release_experts(experts, trainable, hooks, mixed)
    trained, total = _count(experts, trainable, lora.patch_embedding == "extra")
    stats = {"params/trainable": trained, "params/total": total, "depth_head/val_abs_rel": depth_abs_rel,
             **fitted.stats, "wall_time_s": fitted.wall_time_s}
    return LoraRun(generator=generator.eval(), folder=folder, stats=stats)


# ---------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, default_out="runs/lora")
    parser.set_defaults(config="lora_default")
    parser.add_argument("--base", required=True, help="a Wan2.2 diffusers folder (TI2V-5B or A14B), already downloaded")
    parser.add_argument("--rank", type=int, default=None, help="LoRA rank (default: the config's)")
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="auto",
        help="auto: bf16 base with fp32 trained weights on CUDA, fp32 on CPU",
    )


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    result = train_lora(
        load_lora_config(args.config), args.base, args.out, rank=args.rank, precision=args.precision,
        run=RunOptions.from_args(args),
    )
    print_final(result.stats)
    print(f"lora: {result.folder}  (MirageGenerator.from_pretrained({args.base!r}, lora={str(result.folder)!r}))")
    return 0
