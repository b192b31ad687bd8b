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
* **Depth head** -- Wan has none, so a :class:`~mirage_gym.model.DepthHead` is first
  trained on the clips' Wan latents against ground-truth depth (at the latent cell
  centres and at the pixels, ``|log d - log d_gt|``, with a little latent noise as in
  stage 1). It is then frozen, and the clips are annotated with *its* depth and filter
  decisions before the LoRA trains, so training caches are built as at inference.
* **Precision** -- on CUDA the frozen base weights are bfloat16 and the trained
  parameters float32 (AdamW on fp32 master weights), the forward under bf16 autocast; on
  CPU everything is float32. ``precision="bf16"`` runs the GPU recipe anywhere.

Run folder ``out/``::

    raw_clips/ raw_val_clips/   Wan latents + ground-truth depth (encoded once)
    depth/checkpoint.pt         the depth-head phase (resumable), depth/depth_head/ its export
    clips/ val_clips/           latents with predicted depth and keep masks (LatentClips)
    checkpoint.pt, config.json  the LoRA phase: trained parameters, optimiser (resumable)
    tb/                         tensorboard: depth_head/*, loss/train, loss/val, lr
    lora/                       the result: MirageGenerator.from_pretrained(base, lora=out / "lora")
    run.json                    what the stored data depends on; another base or setting is refused
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from mirage_gym.geometry import scale_intrinsics
from mirage_gym.metrics import abs_rel
from mirage_gym.model import DepthHead, MirageGenerator, VideoVAE
from mirage_gym.model.pretrained import MIRAGE_CONFIG, LoadedComponents, add_lora, load_components, lora_parameters
from mirage_gym.training.config import EVAL_ROOM_SEED_OFFSET, read_config_file
from mirage_gym.training.depth_stage import depth_loss
from mirage_gym.training.generator_stage import ChunkBatch, flow_matching_loss, make_chunk_batch, sample_sigmas
from mirage_gym.training.latent_clips import LatentClips, shard_streams
from mirage_gym.training.loop import (
    TrainState,
    add_common_arguments,
    load_checkpoint,
    make_optimizer,
    resolve_device,
    save_checkpoint,
    stage_settings,
)
from mirage_gym.training.video_clips import RawVideoClips, annotate_video_clips, encode_video_clips

__all__ = ["LoraRun", "load_lora_config", "train_lora", "expert_flow_loss", "add_arguments", "run"]

REQUIRED = (
    "resolution", "fov_deg", "chunk_frames", "context_frames", "lora", "depth_head", "clips", "sampling", "memory",
    "train_lora",
)
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


def load_lora_config(name_or_path: str | Path) -> dict[str, Any]:
    """A LoRA config by shipped name (``"lora_default"``) or JSON path, with its base-independent checks."""
    config, path = read_config_file(name_or_path, shipped="lora*.json", kind="LoRA ")
    _check_config(config, f"config file {path}")
    return config


def _check_config(config: dict[str, Any], source: str) -> None:
    missing = [key for key in REQUIRED if key not in config]
    if missing:
        raise ValueError(f"{source} lacks required keys {missing} (is it a LoRA config?)")

    def positive(value: Any, name: str) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{source}: {name} must be a positive integer, got {value!r}")

    for key in ("resolution", "chunk_frames", "context_frames"):
        positive(config[key], key)
    for key in ("num_clips", "val_clips", "chunks_per_clip", "clips_per_shard"):
        positive(config["clips"][key], f"clips.{key}")
    if config["clips"]["chunks_per_clip"] < 2:
        raise ValueError(f"{source}: clips.chunks_per_clip must be >= 2 (a chunk needs one before it as context)")
    positive(config["lora"]["rank"], "lora.rank")
    if config["lora"].get("patch_embedding", "extra") not in ("extra", "all"):
        mode = config["lora"]["patch_embedding"]
        raise ValueError(f"{source}: lora.patch_embedding must be 'extra' or 'all', got {mode!r}")
    _, hi = config.get("data", {}).get("train_room_seeds", [0, EVAL_ROOM_SEED_OFFSET])
    if hi > EVAL_ROOM_SEED_OFFSET:
        raise ValueError(f"{source}: train_room_seeds must stay below {EVAL_ROOM_SEED_OFFSET} (held out)")


def _check_against_base(config: dict[str, Any], parts: LoadedComponents) -> int:
    """Checks that need the base; returns the latent frames per chunk."""
    vae = parts.vae
    if not vae.is_temporal:
        raise ValueError(f"base {parts.base_model_path}: its VAE {type(vae.vae).__name__} is not a Wan (temporal) VAE")
    try:
        t = vae.num_latent_frames(config["chunk_frames"])
    except ValueError as err:
        raise ValueError(f"chunk_frames: {err}") from err
    _, p_h, p_w = parts.transformer.config.patch_size
    cell = vae.spatial_factor * max(p_h, p_w)
    if config["resolution"] % cell:
        raise ValueError(f"resolution {config['resolution']} must be a multiple of {cell} for this base (VAE x patch)")
    k, chunks = config["context_frames"], config["clips"]["chunks_per_clip"]
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


def _run_signature(config: dict[str, Any], base: Path, seed: int) -> dict[str, Any]:
    """Everything the stored clips, depth head and LoRA checkpoint depend on."""
    keys = ("resolution", "fov_deg", "chunk_frames", "context_frames", "clips", "data", "depth_head", "lora")
    return {"base": str(base.resolve()), "seed": seed, **{k: config.get(k) for k in keys}}


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


# ---------------------------------------------------------------------- data


# ---------------------------------------------------------------------- depth head


def _depth_loss(head: DepthHead, latents: Tensor, depth_token: Tensor, depth_pixel: Tensor, noise: float) -> Tensor:
    """``|log d - log d_gt|`` at the latent cells and at the pixels, on latents with a little noise."""
    sigma = noise * torch.rand(latents.shape[0], 1, 1, 1, device=latents.device) * latents.std()
    return depth_loss(head, latents + sigma * torch.randn_like(latents), depth_pixel, depth_token)


def _train_depth_head(
    config: dict[str, Any], out: Path, raw: RawVideoClips, val: RawVideoClips, vae: VideoVAE, *,
    device: torch.device, seed: int, resume: bool, progress: bool, writer: SummaryWriter,
) -> tuple[DepthHead, bool, float]:
    """Train (or finish training) the depth head on the Wan latents.

    Returns it frozen, whether this call changed it, and its token-depth abs-rel on the validation clips.
    """
    hp = config["depth_head"]
    architecture = {k: hp[k] for k in ("hidden_channels", "num_blocks", "min_depth", "max_depth") if k in hp}
    head = DepthHead(latent_channels=vae.latent_channels, spatial_factor=vae.spatial_factor, **architecture).to(device)
    optimizer, scheduler = make_optimizer(head.parameters(), hp["lr"], hp["warmup"], hp["steps"])
    state = TrainState()
    if resume:
        load_checkpoint(out, state, {"depth_head": head}, optimizer, scheduler)
    changed = state.step < hp["steps"]
    gen = torch.Generator().manual_seed(seed * 1_000_003 + state.step)
    bar = tqdm(total=hp["steps"], initial=state.step, desc="train depth head", disable=not progress, dynamic_ncols=True)
    head.train()
    while state.step < hp["steps"]:
        index = torch.randint(raw.num_latent_frames, (hp["batch_size"],), generator=gen)
        loss = _depth_loss(head, *(x.to(device) for x in raw.frames(index)), hp.get("latent_noise", 0.1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        state.step += 1
        bar.update(1)
        if state.step % hp["log_every"] == 0 or state.step == hp["steps"]:
            writer.add_scalar("depth_head/loss", loss.item(), state.step)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if state.step % hp["checkpoint_every"] == 0 or state.step == hp["steps"]:
            save_checkpoint(out, state, {"depth_head": head}, optimizer, scheduler, config)
    bar.close()
    head.eval().requires_grad_(False)
    errors = []
    with torch.no_grad():
        for index in torch.arange(val.num_latent_frames).split(hp["batch_size"]):
            latents, depth_token, _ = (x.to(device) for x in val.frames(index))
            errors.append(abs_rel(head(latents).token_depth, depth_token))
    abs_rel_val = torch.cat(errors).mean().item()
    writer.add_scalar("depth_head/abs_rel_val", abs_rel_val, state.step)
    head.save_pretrained(out / "depth_head")
    return head, changed, abs_rel_val


def _prepare_data(
    config: dict[str, Any], out: Path, vae: VideoVAE, *,
    device: torch.device, seed: int, resume: bool, progress: bool, writer: SummaryWriter,
) -> tuple[LatentClips, LatentClips, DepthHead, float]:
    """Encode the clips, train the depth head on them, annotate them with it (each step resumable).

    Returns the training and validation clips, the frozen depth head and its validation abs-rel.
    """
    clips_hp = config["clips"]
    chunk_args = dict(chunk_frames=config["chunk_frames"], chunks=clips_hp["chunks_per_clip"], progress=progress)
    train_seeds = tuple(config.get("data", {}).get("train_room_seeds", (0, 100_000)))
    val_seeds = (EVAL_ROOM_SEED_OFFSET + 500_000, EVAL_ROOM_SEED_OFFSET + 600_000)  # held out, apart from eval rooms
    sources = {
        "clips": (shard_streams(config, vae.spatial_factor, train_seeds, seed), clips_hp["num_clips"]),
        "val_clips": (shard_streams(config, vae.spatial_factor, val_seeds, seed + 1), clips_hp["val_clips"]),
    }
    for name, (streams, count) in sources.items():
        encode_video_clips(out / f"raw_{name}", streams, vae, num_clips=count,
                           clips_per_shard=clips_hp["clips_per_shard"], **chunk_args)
    head, head_changed, depth_abs_rel = _train_depth_head(
        config, out / "depth", RawVideoClips(out / "raw_clips"), RawVideoClips(out / "raw_val_clips"), vae,
        device=device, seed=seed, resume=resume, progress=progress, writer=writer,
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


def _prepare_experts(
    parts: LoadedComponents, lora: dict[str, Any], *, gradient_checkpointing: bool, mixed: bool
) -> tuple[list[nn.Module], nn.ParameterDict, list[nn.Parameter]]:
    """Add the LoRA to every expert; returns the experts, the trained parameters (float32) and the patch embeddings'.

    With ``mixed``, each expert's forward runs under bf16 autocast (as accelerate wraps a
    model's forward): only the transformer computes in bf16, while the cache, the Plücker
    rays and the loss around it stay float32. :func:`_release_experts` undoes it.
    """
    experts = [m for m in (parts.transformer, parts.transformer_2) if m is not None]
    trainable = nn.ParameterDict()
    patch = []
    for name, expert in zip(EXPERTS, experts):
        expert.requires_grad_(False)
        add_lora(expert, rank=lora["rank"], alpha=lora.get("alpha"), ffn=lora.get("ffn", False),
                 dropout=lora.get("dropout", 0.0))
        for key, param in lora_parameters(expert, patch_embedding=lora.get("patch_embedding", "extra")).items():
            param.data = param.data.float()  # fp32 master weights, whatever the frozen base's dtype
            trainable[f"{name}/{key}".replace(".", "/")] = param
            if key.startswith("patch_embedding."):
                patch.append(param)
        if gradient_checkpointing:
            expert.enable_gradient_checkpointing()
        if mixed:
            device_type = next(expert.parameters()).device.type
            expert.forward = torch.autocast(device_type, dtype=torch.bfloat16)(expert.forward)
    return experts, trainable, patch


def _release_experts(experts: list[nn.Module], trainable: nn.ParameterDict, mixed: bool) -> None:
    """Back to sampling: eval mode, no checkpointing or autocast, trained weights in the base's bf16 when mixed."""
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
    config: dict[str, Any],
    base: str | Path,
    out: str | Path,
    *,
    rank: int | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    precision: str = "auto",
    seed: int | None = None,
    resume: bool = True,
    progress: bool = True,
) -> LoraRun:
    """Fine-tune a Wan2.2 folder ``base`` into ``out`` (see the module docs); the LoRA ends in ``out/lora``.

    Args:
        config: a LoRA config (:func:`load_lora_config`).
        rank: overrides ``config["lora"]["rank"]``.
        steps, batch_size, seed: override ``config["train_lora"]``'s.
        precision: ``"auto"`` (bf16 base + fp32 trained weights on CUDA, fp32 on CPU), ``"bf16"`` or ``"fp32"``.
        resume: continue from ``out``'s checkpoints (depth head and LoRA) when they exist.

    Everything is checked -- the config, the base, ``out``'s earlier run -- before anything is written.
    """
    base, out, device = Path(base), Path(out), torch.device(device)
    if rank is not None:
        config = {**config, "lora": {**config["lora"], "rank": rank}}
    _check_config(config, "config")
    hp, steps, batch_size, seed = stage_settings(config, "train_lora", steps, batch_size, seed)
    parts, mixed = _load_base(base, device, precision)
    t = _check_against_base(config, parts)
    signature = _run_signature(config, base, seed)
    _check_run_folder(out, signature)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_FILE).write_text(json.dumps(signature, indent=2) + "\n")
    config = {**config, "base": signature["base"]}

    vae = parts.vae.requires_grad_(False)
    writer = SummaryWriter(str(out / "tb"))
    clips, val, head, depth_abs_rel = _prepare_data(
        config, out, vae, device=device, seed=seed, resume=resume, progress=progress, writer=writer
    )
    latent_k = scale_intrinsics(clips.intrinsics, 1.0 / vae.spatial_factor).to(device)

    lora = config["lora"]
    extra_only = lora.get("patch_embedding", "extra") == "extra"
    experts, trainable, patch = _prepare_experts(
        parts, lora, gradient_checkpointing=hp.get("gradient_checkpointing", False), mixed=mixed
    )
    patch_ids = {id(p) for p in patch}
    groups = [
        {"params": [p for p in trainable.values() if id(p) not in patch_ids]},
        {"params": patch, "weight_decay": 0.0},  # never decay (pretrained) input weights towards zero
    ]
    optimizer, scheduler = make_optimizer(groups, hp["lr"], hp["warmup"], steps)
    state = TrainState()
    if resume and load_checkpoint(out, state, {"lora": trainable}, optimizer, scheduler):
        print(f"resumed {out} at step {state.step}")

    k = config["context_frames"]
    num_train_timesteps = int(parts.scheduler.config.num_train_timesteps)
    scheduler_config = parts.scheduler.config
    shift = float(scheduler_config.get("flow_shift") or scheduler_config.get("shift") or 1.0)
    batch_args = dict(
        context_frames=k, chunk=t, align=t, voxel_size=config["memory"]["voxel_size"],
        cache_dropout=hp["cache_dropout"], history_keep=tuple(hp["history_keep"]), context_noise=hp["context_noise"],
    )

    def loss_on(source: LatentClips, gen: torch.Generator, n: int) -> Tensor:
        latents, depth, keep, poses = (x.to(device) for x in source.sample(n, gen))
        batch = make_chunk_batch(latents, depth, keep, poses, latent_k, generator=gen, **batch_args)
        sigmas = sample_sigmas(n, shift, gen).to(device)
        noise = torch.randn(batch.target.shape, generator=gen).to(device)
        return expert_flow_loss(experts, parts.boundary_ratio, batch, latent_k, sigmas, noise, num_train_timesteps)

    trained, total = _count(experts, trainable, extra_only)
    stats: dict[str, float] = {
        "params/trainable": trained, "params/total": total, "depth_head/abs_rel_val": depth_abs_rel,
    }
    gen = torch.Generator().manual_seed(seed * 1_000_003 + state.step)
    bar = tqdm(total=steps, initial=state.step, desc="train lora", disable=not progress, dynamic_ncols=True)
    for expert in experts:
        expert.train()
    while state.step < steps:
        loss = loss_on(clips, gen, batch_size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if extra_only:  # the checkpoint's own input channels stay as they are (Adam moves nothing with zero grads)
            for expert in experts:
                grad = expert.patch_embedding.weight.grad
                if grad is not None:
                    grad[:, : expert.patch_embedding.base_channels] = 0
        torch.nn.utils.clip_grad_norm_(trainable.values(), 1.0)
        optimizer.step()
        scheduler.step()
        state.step += 1
        bar.update(1)
        stats["loss/train"] = loss.item()
        if state.step % hp["log_every"] == 0 or state.step == steps:
            for expert in experts:
                expert.eval()
            with torch.no_grad():
                stats["loss/val"] = loss_on(val, torch.Generator().manual_seed(1234), 2 * batch_size).item()
            for expert in experts:
                expert.train()
            for key in ("loss/train", "loss/val"):
                writer.add_scalar(key, stats[key], state.step)
            writer.add_scalar("lr", scheduler.get_last_lr()[0], state.step)
            bar.set_postfix(loss=f"{stats['loss/train']:.3f}", val=f"{stats['loss/val']:.3f}")
        if state.step % hp["checkpoint_every"] == 0 or state.step == steps:
            save_checkpoint(out, state, {"lora": trainable}, optimizer, scheduler, config)
    bar.close()
    writer.close()

    for expert in experts:
        expert.eval()
    sampling, memory = config["sampling"], config["memory"]
    generator = MirageGenerator(
        parts.transformer, vae, head, parts.scheduler, transformer_2=parts.transformer_2,
        boundary_ratio=parts.boundary_ratio, num_inference_steps=sampling["num_inference_steps"],
        voxel_size=memory["voxel_size"], cache_capacity=memory["capacity"], context_frames=k,
    )
    generator.base_model_path = parts.base_model_path
    folder = generator.save_pretrained(out / "lora")  # float32 values, whatever the base's dtype
    _release_experts(experts, trainable, mixed)
    stats["wall_time_s"] = state.elapsed()
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
    config = load_lora_config(args.config)
    result = train_lora(
        config, args.base, args.out, rank=args.rank, steps=args.steps, batch_size=args.batch_size,
        device=resolve_device(args.device), precision=args.precision, seed=args.seed, resume=args.resume,
    )
    print("final:", ", ".join(f"{k}={v:.4g}" for k, v in result.stats.items()))
    print(f"lora: {result.folder}  (MirageGenerator.from_pretrained({args.base!r}, lora={str(result.folder)!r}))")
    return 0
