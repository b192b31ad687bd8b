"""Stage 2: the widened Wan transformer, trained with the flow-matching loss.

``mirage-gym train generator --config default --vae runs/default_vae --out runs/default_generator``

One training example is one chunk of a ground-truth trajectory, set up exactly as the
sampler (:class:`~mirage_gym.model.MirageGenerator`) sets it up at inference:

* the ``model.context_frames`` latent frames before the chunk are the clean context (sometimes
  one frame repeated, as after ``start()``). **Context noise**: every context latent gets
  Gaussian noise of std ``training.generator.context_noise`` (the context keeps timestep 0, as
  in the sampler): at inference the context is the model's own previous chunk, never a clean
  encoding, so the model learns to continue from an imperfect history. The self-forcing
  fine-tune (:mod:`.rollout_stage`) then replaces this stand-in with the model's real history;
* a :class:`~mirage_gym.memory.LatentCache` is filled from a random subset of the other
  frames of the clip -- with **predicted** depth and the token filter's decisions, as at
  inference -- and read at the chunk's cameras. Random cache dropout (an empty cache) and
  partial histories teach the model both to copy what is cached and to invent what is not;
* flow matching: ``x_s = (1 - s) x0 + s n`` with target ``v = n - x0``; ``s`` follows the
  shifted schedule the sampler uses, so training covers the few noise levels the sampler visits;
* depth (``training.generator.depth_weight > 0``): the predicted clean latents
  ``x0_hat = x_s - s v_hat`` (the flow convention above; the sampler's last Euler step lands
  exactly there) go through the **frozen** depth head, and the log-L1 of their token depth
  against the ground truth rendered at the latent cells (:func:`.depth_stage.depth_loss`) is
  added, weighted ``depth_weight (1 - s) ** depth_sigma_power``. Gradients reach the
  transformer, never the head: what it paints where nothing is cached must carry geometry.

Before training, the clips are rendered and encoded once (:mod:`.latent_clips`).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import Tensor, nn

from mirage_gym.config import VALIDATION_ROOM_SEEDS, Config, FlowMatchingTraining, GeneratorTraining, build_generator, load_config
from mirage_gym.geometry import scale_intrinsics
from mirage_gym.memory import LatentCache
from mirage_gym.model import DepthHead, VideoVAE
from mirage_gym.model.transformer import build_transformer, chunk_inputs, empty_prompt_embeds, predict_flow
from mirage_gym.training.latent_clips import LatentClips, encode_clips, shard_streams
from mirage_gym.training.loop import RunOptions, Stage, add_common_arguments, fit, print_final, stage_settings
from mirage_gym.training.vae_stage import load_stage1

__all__ = [
    "ChunkBatch", "make_chunk_batch", "sample_sigmas", "flow_matching_loss", "predict_clean", "generator_loss",
    "chunk_loss", "schedule_of", "flow_matching_stage", "train_generator", "export", "frozen_head",
]

# Validation examples are the same at every validation: drawn from this seed.
VALIDATION_SEED = 1234


class ChunkBatch:
    """Everything one flow-matching step needs, built from whole clips.

    ``target_depth`` ``[B, t, h, w]``: the ground-truth token depth of the chunk's frames (for the
    depth loss; ``None`` when not asked for).
    """

    def __init__(self, context: Tensor, target: Tensor, cache: Tensor, mask: Tensor, poses: Tensor,
                 target_depth: Tensor | None = None) -> None:
        self.context, self.target, self.cache, self.mask, self.poses = context, target, cache, mask, poses
        self.target_depth = target_depth


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
    rng: torch.Generator,
    align: int = 1,
    gt_token_depth: Tensor | None = None,
    interpolation: str = "nearest",
) -> ChunkBatch:
    """Pick a chunk, its context and a cache history in every clip, and read the cache for the chunk.

    Args:
        latents: ``[B, C, L, h, w]``; token_depth, keep: ``[B, L, h, w]``; cam_to_world: ``[B, L, 4, 4]``.
        interpolation: the cache's read (:class:`LatentCache`), as the generator's.
        gt_token_depth: ``[B, L, h, w]`` ground-truth token depth; its chunk frames become the
            batch's ``target_depth`` (no random draw depends on it).
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
    start = align * int(torch.randint(first, last + 1, (1,), generator=rng))
    chunk_frames = torch.arange(start, start + t, device=device)
    context_idx = torch.arange(start - k, start, device=device)
    context = latents[:, :, context_idx]
    context_poses = cam_to_world[:, context_idx]
    # As after start(): the context is one frame repeated.
    repeated = torch.rand(b, generator=rng) < 0.15
    context[repeated] = latents[repeated][:, :, start - 1 : start].expand(-1, -1, k, -1, -1)
    context_poses[repeated] = cam_to_world[repeated][:, start - 1 : start].expand(-1, k, -1, -1)
    context = context + context_noise * torch.randn(context.shape, generator=rng).to(device)

    # History: every frame outside the chunk, each kept with a per-clip probability; some clips get none.
    lo, hi = history_keep
    p = lo + (hi - lo) * torch.rand(b, 1, generator=rng)
    history = torch.rand(b, n, generator=rng) < p
    history[:, start : start + t] = False
    history[torch.rand(b, generator=rng) < cache_dropout] = False
    cache = LatentCache(channels=c, voxel_size=voxel_size, capacity=n * h * w, num_scenes=b, device=device,
                        interpolation=interpolation)
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
        target_depth=None if gt_token_depth is None else gt_token_depth[:, chunk_frames],
    )


def sample_sigmas(batch: int, shift: float, rng: torch.Generator) -> Tensor:
    """Noise levels ``s`` in ``(0, 1)``: logit-normal, then the scheduler's shift ``shift s / (1 + (shift - 1) s)``."""
    u = torch.sigmoid(torch.randn(batch, generator=rng))
    return shift * u / (1 + (shift - 1) * u)


def _chunk_flow(
    transformer, batch: ChunkBatch, latent_intrinsics: Tensor, sigmas: Tensor, noise: Tensor, num_train_timesteps: int
) -> tuple[Tensor, Tensor]:
    """The noisy chunk ``x_s = (1 - s) x0 + s n`` and the transformer's flow on it ``[B, C, t, h, w]``."""
    b, _, k = batch.context.shape[:3]
    t = batch.target.shape[2]
    s = sigmas.view(b, 1, 1, 1, 1)
    noisy = (1 - s) * batch.target + s * noise
    latents, conditioning = chunk_inputs(batch.context, noisy, batch.cache, batch.mask, batch.poses, latent_intrinsics)
    frame_t = torch.cat([sigmas.new_zeros(b, k), (sigmas * num_train_timesteps)[:, None].expand(b, t)], dim=1)
    prompt = empty_prompt_embeds(transformer, b, device=latents.device)
    flow = predict_flow(transformer, latents, conditioning, frame_t.to(latents.device), prompt)
    return noisy, flow[:, :, k:]


def flow_matching_loss(
    transformer, batch: ChunkBatch, latent_intrinsics: Tensor, sigmas: Tensor, noise: Tensor, num_train_timesteps: int
) -> Tensor:
    """MSE between the predicted flow and ``noise - x0`` on the chunk's frames (the context is not scored)."""
    _, flow = _chunk_flow(transformer, batch, latent_intrinsics, sigmas, noise, num_train_timesteps)
    return F.mse_loss(flow, noise - batch.target)


def predict_clean(noisy: Tensor, flow: Tensor, sigmas: Tensor) -> Tensor:
    """The clean latents the flow points at: ``x0_hat = x_s - s v_hat`` (``x_s = (1 - s) x0 + s n``, ``v = n - x0``)."""
    return noisy - sigmas.view(-1, 1, 1, 1, 1) * flow


def generator_loss(
    transformer,
    batch: ChunkBatch,
    latent_intrinsics: Tensor,
    sigmas: Tensor,
    noise: Tensor,
    num_train_timesteps: int,
    *,
    depth_head: nn.Module | None = None,
    depth_weight: float = 0.0,
    depth_sigma_power: float = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    """The flow-matching loss, plus with ``depth_weight > 0`` the depth loss on ``x0_hat`` through ``depth_head``.

    The depth term is :func:`~mirage_gym.training.depth_stage.depth_loss` on the token depth of
    every latent frame of the chunk against ``batch.target_depth``, each example weighted
    ``(1 - s) ** depth_sigma_power``. The head must be frozen (its parameters get no gradient
    here only if they do not require one: see :func:`frozen_head`). With ``depth_weight == 0``
    this is :func:`flow_matching_loss`, bit for bit.
    """
    if depth_weight == 0:
        value = flow_matching_loss(transformer, batch, latent_intrinsics, sigmas, noise, num_train_timesteps)
        return value, {"loss": value.item()}
    from mirage_gym.training.depth_stage import depth_loss

    if depth_head is None or batch.target_depth is None:
        raise ValueError("a depth loss needs a depth head and the batch's ground-truth token depth")
    noisy, flow = _chunk_flow(transformer, batch, latent_intrinsics, sigmas, noise, num_train_timesteps)
    flow_loss = F.mse_loss(flow, noise - batch.target)
    clean = predict_clean(noisy, flow, sigmas)
    b, _, t = clean.shape[:3]
    weights = ((1 - sigmas) ** depth_sigma_power)[:, None].expand(b, t).flatten()
    depth = depth_loss(depth_head, clean.transpose(1, 2).flatten(0, 1), None, batch.target_depth.flatten(0, 1), weights)
    value = flow_loss + depth_weight * depth
    return value, {"loss": value.item(), "flow": flow_loss.item(), "depth": depth.item()}


def frozen_head(head: nn.Module) -> nn.Module:
    """``head`` in eval mode with no parameter requiring a gradient (what the depth loss scores through)."""
    return head.eval().requires_grad_(False)


def chunk_loss(
    score: Callable[[ChunkBatch, Tensor, Tensor], Tensor | tuple[Tensor, dict[str, float]]], shift: float,
    device: torch.device,
) -> Callable[[ChunkBatch, torch.Generator], tuple[Tensor, dict[str, float]]]:
    """A stage's ``loss``: noise levels on the sampler's shifted schedule, then noise, both from ``rng``, then
    ``score(batch, sigmas, noise)`` (a loss, or a loss and its statistics)."""

    def loss(chunks: ChunkBatch, rng: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        sigmas = sample_sigmas(chunks.target.shape[0], shift, rng).to(device)
        noise = torch.randn(chunks.target.shape, generator=rng).to(device)
        value = score(chunks, sigmas, noise)
        if isinstance(value, tuple):
            return value
        return value, {"loss": value.item()}

    return loss


def schedule_of(scheduler: Any) -> tuple[float, int]:
    """The flow shift and ``num_train_timesteps`` of a sampler's scheduler: the schedule training follows."""
    config = scheduler.config
    return float(config.get("flow_shift") or config.get("shift") or 1.0), int(config.num_train_timesteps)


def flow_matching_stage(
    name: str,
    modules: dict[str, nn.Module],
    clips: LatentClips,
    val: LatentClips,
    hp: FlowMatchingTraining,
    score: Callable[[ChunkBatch, Tensor, Tensor], Tensor | tuple[Tensor, dict[str, float]]],
    *,
    latent_intrinsics: Tensor,
    context_frames: int,
    chunk: int,
    voxel_size: float,
    shift: float,
    interpolation: str = "nearest",
    align: int = 1,
    val_batch_size: int | None = None,
    param_groups: list[dict[str, Any]] | None = None,
    gt_depth: bool = False,
) -> Stage:
    """A flow-matching stage over encoded clips (stage 2, a LoRA): ``score(batch, sigmas, noise)`` is its loss
    (a loss, or a loss and its statistics).

    A batch is ``hp.batch_size`` clips, each with a chunk, its context and a cache history
    (:func:`make_chunk_batch`; with ``gt_depth`` the chunk's ground-truth token depth too); noise
    levels follow the sampler's shifted schedule. Validation scores ``val_batch_size`` validation
    examples drawn from :data:`VALIDATION_SEED` (every statistic of the loss).
    """
    device = latent_intrinsics.device
    batch_args = dict(
        context_frames=context_frames, chunk=chunk, align=align, voxel_size=voxel_size, cache_dropout=hp.cache_dropout,
        history_keep=hp.history_keep, context_noise=hp.context_noise, interpolation=interpolation,
    )

    def batch(source: LatentClips, n: int, rng: torch.Generator) -> ChunkBatch:
        index = source.indices(n, rng)
        latents, depth, keep, poses = (x.to(device) for x in source.take(index))
        gt = source.ground_truth_depth(index).to(device) if gt_depth else None
        return make_chunk_batch(latents, depth, keep, poses, latent_intrinsics, rng=rng, gt_token_depth=gt, **batch_args)

    loss = chunk_loss(score, shift, device)

    def validate() -> dict[str, float]:
        rng = torch.Generator().manual_seed(VALIDATION_SEED)
        return loss(batch(val, val_batch_size or hp.batch_size, rng), rng)[1]

    return Stage(name, modules, lambda step, rng: batch(clips, hp.batch_size, rng), loss,
                 param_groups=param_groups, validate=validate)


def train_generator(
    config: Config,
    out: Path,
    stage1: Path,
    *,
    run: RunOptions = RunOptions(),
    depth_head: Path | None = None,
) -> dict[str, float]:
    """Train stage 2 into ``out`` and export the whole generator to ``out/model``; returns the last statistics.

    ``depth_head``: the folder of the frozen head the depth loss scores through (default: stage 1's
    ``depth_head/``; only read when ``training.generator.depth_weight > 0``).
    """
    hp: GeneratorTraining = stage_settings(config, "generator", run)
    device = run.device
    model = config.model
    vae, head = load_stage1(stage1, device)
    with_depth = hp.depth_weight > 0
    for folder, seeds, count, stream_seed in (("clips", config.training.data.train_room_seeds, hp.num_clips, hp.seed),
                                              ("val_clips", VALIDATION_ROOM_SEEDS, hp.val_clips, hp.seed + 1)):
        encode_clips(out / folder, shard_streams(config, vae.spatial_factor, seeds, stream_seed), vae, head,
                     num_clips=count, clip_frames=hp.clip_frames, chunk=model.chunk_frames, progress=run.progress,
                     require=("gt_token_depth",) if with_depth else ())
    clips, val = LatentClips(out / "clips"), LatentClips(out / "val_clips")
    latent_k = scale_intrinsics(clips.intrinsics, 1.0 / vae.spatial_factor).to(device)

    torch.manual_seed(hp.seed)  # the transformer's initial weights
    transformer = build_transformer(vae.latent_channels, **dataclasses.asdict(model.transformer)).to(device)
    shift, num_train_timesteps = schedule_of(FlowMatchEulerDiscreteScheduler(shift=model.sampling.shift))

    scored_head = None
    if with_depth:  # frozen: the depth loss moves the transformer only
        scored_head = frozen_head(DepthHead.from_pretrained(depth_head).to(device) if depth_head is not None else head)

    def score(batch: ChunkBatch, sigmas: Tensor, noise: Tensor) -> tuple[Tensor, dict[str, float]]:
        return generator_loss(transformer, batch, latent_k, sigmas, noise, num_train_timesteps, depth_head=scored_head,
                              depth_weight=hp.depth_weight, depth_sigma_power=hp.depth_sigma_power)

    stage = flow_matching_stage(
        "generator", {"transformer": transformer}, clips, val, hp, score, latent_intrinsics=latent_k,
        context_frames=model.context_frames, chunk=model.chunk_frames, voxel_size=model.memory.voxel_size,
        interpolation=model.memory.interpolation, shift=shift, val_batch_size=4 * hp.batch_size, gt_depth=with_depth,
    )
    fitted = fit(stage, hp, out, config=config, run=run)
    # Stage 1 may have gone on refining its decoder and depth head on the frozen encoder while
    # this stage trained (the latents are the same): ship its parts as they are now.
    vae, head = load_stage1(stage1, device)
    export(config, transformer, vae, head, out / "model")
    return {**fitted.stats, "wall_time_s": fitted.wall_time_s}


def export(config: Config, transformer: nn.Module, vae: VideoVAE, head: DepthHead, folder: Path) -> Path:
    """Save the trained parts as one Mirage folder that ``MirageGenerator.from_pretrained`` loads."""
    return build_generator(config, transformer=transformer, vae=vae, depth_head=head).save_pretrained(folder)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, default_out="runs/generator")
    parser.add_argument("--vae", default="runs/vae", help="run folder of `mirage-gym train vae` (its vae/ and depth_head/)")
    parser.add_argument("--depth-head", default=None,
                        help="depth_head/ folder the depth loss scores through, frozen (default: the --vae folder's); "
                             "only used with training.generator.depth_weight > 0")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    stats = train_generator(
        load_config(args.config), Path(args.out), Path(args.vae), run=RunOptions.from_args(args),
        depth_head=Path(args.depth_head) if args.depth_head else None,
    )
    print_final(stats)
    print(f"model: {Path(args.out) / 'model'}")
    return 0
