"""Stage 2: the widened Wan transformer, trained with the flow-matching loss.

``mirage-gym train generator --config default --vae runs/default_vae --out runs/default_generator``

One training example is one chunk of a ground-truth trajectory, set up exactly as the
sampler (:class:`~mirage_gym.model.MirageGenerator`) sets it up at inference:

* the ``context_frames`` latent frames before the chunk are the clean context (sometimes
  one frame repeated, as after ``start()``; with a little noise, since at inference they
  are generated, not encoded);
* a :class:`~mirage_gym.memory.LatentCache` is filled from a random subset of the other
  frames of the clip -- with **predicted** depth and the token filter's decisions, as at
  inference -- and read at the chunk's cameras. Random cache dropout (an empty cache) and
  partial histories teach the model both to copy what is cached and to invent what is not;
* flow matching: ``x_s = (1 - s) x0 + s n`` with target ``n - x0``; ``s`` follows the
  shifted schedule the sampler uses, so training covers the few noise levels the sampler visits.

Before training, the clips are rendered and encoded once (:mod:`.latent_clips`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from mirage_gym.geometry import scale_intrinsics
from mirage_gym.memory import LatentCache
from mirage_gym.model import DepthHead, VideoVAE
from mirage_gym.model.generator import MirageGenerator
from mirage_gym.model.transformer import build_transformer, chunk_inputs, empty_prompt_embeds, predict_flow
from mirage_gym.training.config import EVAL_ROOM_SEED_OFFSET, load_config
from mirage_gym.training.latent_clips import LatentClips, encode_clips, shard_streams
from mirage_gym.training.vae_stage import load_stage1
from mirage_gym.training.loop import (
    TrainState,
    add_common_arguments,
    load_checkpoint,
    make_optimizer,
    resolve_device,
    save_checkpoint,
    stage_settings,
)

__all__ = ["ChunkBatch", "make_chunk_batch", "flow_matching_loss", "train_generator", "export"]


class ChunkBatch:
    """Everything one flow-matching step needs, built from whole clips."""

    def __init__(self, context: Tensor, target: Tensor, cache: Tensor, mask: Tensor, poses: Tensor) -> None:
        self.context, self.target, self.cache, self.mask, self.poses = context, target, cache, mask, poses


def make_chunk_batch(
    latents: Tensor,
    token_depth: Tensor,
    keep: Tensor,
    cam_to_world: Tensor,
    latent_intrinsics: Tensor,
    *,
    context_frames: int,
    chunk: int,
    voxel_size: float,
    cache_dropout: float,
    history_keep: tuple[float, float],
    context_noise: float,
    generator: torch.Generator,
    align: int = 1,
) -> ChunkBatch:
    """Pick a chunk, its context and a cache history in every clip, and read the cache for the chunk.

    Args:
        latents: ``[B, C, L, h, w]``; token_depth, keep: ``[B, L, h, w]``; cam_to_world: ``[B, L, 4, 4]``.
        align: chunks start at multiples of ``align`` latent frames. Clips encoded chunk by chunk
            with a temporal VAE (:mod:`.video_clips`) pass their chunk length, so a training chunk is
            always one whole encoded chunk, as the sampler generates and decodes it.
    """
    b, c, n, h, w = latents.shape
    k, t = context_frames, chunk
    if n < k + t:
        raise ValueError(f"clips of {n} frames cannot hold {k} context frames and a chunk of {t}")
    if align < 1:
        raise ValueError(f"align must be >= 1, got {align}")
    first, last = -(-k // align), (n - t) // align  # chunk starts first*align .. last*align
    if last < first:
        raise ValueError(f"clips of {n} frames hold no chunk of {t} aligned to {align} after {k} context frames")
    device = latents.device
    start = align * int(torch.randint(first, last + 1, (1,), generator=generator))
    chunk_frames = torch.arange(start, start + t, device=device)
    context_idx = torch.arange(start - k, start, device=device)
    context = latents[:, :, context_idx]
    context_poses = cam_to_world[:, context_idx]
    # As after start(): the context is one frame repeated.
    repeated = torch.rand(b, generator=generator) < 0.15
    context[repeated] = latents[repeated][:, :, start - 1 : start].expand(-1, -1, k, -1, -1)
    context_poses[repeated] = cam_to_world[repeated][:, start - 1 : start].expand(-1, k, -1, -1)
    context = context + context_noise * torch.randn(context.shape, generator=generator).to(device)

    # History: every frame outside the chunk, each kept with a per-clip probability; some clips get none.
    lo, hi = history_keep
    p = lo + (hi - lo) * torch.rand(b, 1, generator=generator)
    history = torch.rand(b, n, generator=generator) < p
    history[:, start : start + t] = False
    history[torch.rand(b, generator=generator) < cache_dropout] = False
    cache = LatentCache(channels=c, voxel_size=voxel_size, capacity=n * h * w, num_scenes=b, device=device)
    clip_idx, frame_idx = history.nonzero(as_tuple=True)
    if clip_idx.numel():
        cache.write(
            latents[clip_idx, :, frame_idx],
            token_depth[clip_idx, frame_idx],
            cam_to_world[clip_idx, frame_idx],
            latent_intrinsics,
            keep=keep[clip_idx, frame_idx],
            scene=clip_idx.to(device),
        )
    scene = torch.arange(b, device=device).repeat_interleave(t)
    read, mask = cache.read(cam_to_world[:, chunk_frames].flatten(0, 1), latent_intrinsics, height=h, width=w, scene=scene)
    return ChunkBatch(
        context=context,
        target=latents[:, :, chunk_frames],
        cache=read.unflatten(0, (b, t)).transpose(1, 2),
        mask=mask.unflatten(0, (b, t)),
        poses=torch.cat([context_poses, cam_to_world[:, chunk_frames]], dim=1),
    )


def sample_sigmas(batch: int, shift: float, generator: torch.Generator) -> Tensor:
    """Noise levels ``s`` in ``(0, 1)``: logit-normal, then the scheduler's shift ``shift s / (1 + (shift - 1) s)``."""
    u = torch.sigmoid(torch.randn(batch, generator=generator))
    return shift * u / (1 + (shift - 1) * u)


def flow_matching_loss(
    transformer, batch: ChunkBatch, latent_intrinsics: Tensor, sigmas: Tensor, noise: Tensor, num_train_timesteps: int
) -> Tensor:
    """MSE between the predicted flow and ``noise - x0`` on the chunk's frames (the context is not scored)."""
    b, _, k = batch.context.shape[:3]
    t = batch.target.shape[2]
    s = sigmas.view(b, 1, 1, 1, 1)
    noisy = (1 - s) * batch.target + s * noise
    latents, conditioning = chunk_inputs(batch.context, noisy, batch.cache, batch.mask, batch.poses, latent_intrinsics)
    frame_t = torch.cat([sigmas.new_zeros(b, k), (sigmas * num_train_timesteps)[:, None].expand(b, t)], dim=1)
    prompt = empty_prompt_embeds(transformer, b, device=latents.device)
    flow = predict_flow(transformer, latents, conditioning, frame_t.to(latents.device), prompt)
    return F.mse_loss(flow[:, :, k:], noise - batch.target)


def train_generator(
    config: dict,
    out: Path,
    stage1: Path,
    *,
    steps: int | None = None,
    batch_size: int | None = None,
    device: torch.device = torch.device("cpu"),
    seed: int | None = None,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, float]:
    """Train stage 2 into ``out`` and export the whole generator to ``out/model``; returns the last statistics."""
    hp, steps, batch_size, seed = stage_settings(config, "train_generator", steps, batch_size, seed)
    vae, head = load_stage1(stage1, device)
    clip_frames, chunk, k = hp["clip_frames"], config["chunk"], config["context_frames"]
    data = config.get("data", {})
    train_seeds = tuple(data.get("train_room_seeds", (0, 100_000)))
    encode_clips(out / "clips", shard_streams(config, vae.spatial_factor, train_seeds, seed), vae, head, num_clips=hp["num_clips"],
                 clip_frames=clip_frames, chunk=chunk, progress=progress)
    val_seeds = (EVAL_ROOM_SEED_OFFSET + 500_000, EVAL_ROOM_SEED_OFFSET + 600_000)  # held out, apart from eval rooms
    encode_clips(out / "val_clips", shard_streams(config, vae.spatial_factor, val_seeds, seed + 1), vae, head, num_clips=hp["val_clips"],
                 clip_frames=clip_frames, chunk=chunk, progress=progress)
    clips, val = LatentClips(out / "clips"), LatentClips(out / "val_clips")
    latent_k = scale_intrinsics(clips.intrinsics, 1.0 / vae.spatial_factor).to(device)

    transformer = build_transformer(vae.latent_channels, **config["transformer"]).to(device)
    modules = {"transformer": transformer}
    optimizer, scheduler = make_optimizer(transformer.parameters(), hp["lr"], hp["warmup"], steps)
    state = TrainState()
    if resume and load_checkpoint(out, state, modules, optimizer, scheduler):
        print(f"resumed {out} at step {state.step}")
    shift = config["sampling"]["shift"]
    batch_args = dict(
        context_frames=k, chunk=chunk, voxel_size=config["memory"]["voxel_size"], cache_dropout=hp["cache_dropout"],
        history_keep=tuple(hp["history_keep"]), context_noise=hp["context_noise"],
    )

    def loss_on(source: LatentClips, gen: torch.Generator, n: int) -> Tensor:
        latents, depth, keep, poses = (x.to(device) for x in source.sample(n, gen))
        batch = make_chunk_batch(latents, depth, keep, poses, latent_k, generator=gen, **batch_args)
        sigmas = sample_sigmas(n, shift, gen).to(device)
        noise = torch.randn(batch.target.shape, generator=gen).to(device)
        return flow_matching_loss(transformer, batch, latent_k, sigmas, noise, 1000)

    gen = torch.Generator().manual_seed(seed * 1_000_003 + state.step)
    writer = SummaryWriter(str(out / "tb"))
    stats: dict[str, float] = {}
    bar = tqdm(total=steps, initial=state.step, desc="train generator", disable=not progress, dynamic_ncols=True)
    transformer.train()
    while state.step < steps:
        loss = loss_on(clips, gen, batch_size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        state.step += 1
        bar.update(1)
        stats["loss/train"] = loss.item()
        if state.step % hp["log_every"] == 0 or state.step == steps:
            with torch.no_grad():
                transformer.eval()
                stats["loss/val"] = loss_on(val, torch.Generator().manual_seed(1234), 4 * batch_size).item()
                transformer.train()
            for key, value in stats.items():
                writer.add_scalar(key, value, state.step)
            writer.add_scalar("lr", scheduler.get_last_lr()[0], state.step)
            bar.set_postfix(loss=f"{stats['loss/train']:.3f}", val=f"{stats['loss/val']:.3f}")
        if state.step % hp["checkpoint_every"] == 0 or state.step == steps:
            save_checkpoint(out, state, modules, optimizer, scheduler, config)
    bar.close()
    writer.close()
    transformer.eval()
    # Stage 1 may have gone on refining its decoder and depth head on the frozen encoder while
    # this stage trained (the latents are the same): ship its parts as they are now.
    vae, head = load_stage1(stage1, device)
    export(config, transformer, vae, head, out / "model")
    stats["wall_time_s"] = state.elapsed()
    return stats


def export(config: dict, transformer, vae: VideoVAE, head: DepthHead, folder: Path) -> Path:
    """Save the trained parts as one Mirage folder that ``MirageGenerator.from_pretrained`` loads."""
    sampling, memory = config["sampling"], config["memory"]
    generator = MirageGenerator(
        transformer, vae, head, FlowMatchEulerDiscreteScheduler(shift=sampling["shift"]),
        num_inference_steps=sampling["num_inference_steps"], voxel_size=memory["voxel_size"],
        cache_capacity=memory["capacity"], context_frames=config["context_frames"],
        cache_guidance=sampling.get("cache_guidance", 0.0),
    )
    return generator.save_pretrained(folder)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, default_out="runs/generator")
    parser.add_argument("--vae", default="runs/vae", help="run folder of `mirage-gym train vae` (its vae/ and depth_head/)")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config)
    stats = train_generator(
        config, Path(args.out), Path(args.vae), steps=args.steps, batch_size=args.batch_size,
        device=resolve_device(args.device), seed=args.seed, resume=args.resume,
    )
    print("final:", ", ".join(f"{k}={v:.4g}" for k, v in stats.items()))
    print(f"model: {Path(args.out) / 'model'}")
    return 0
