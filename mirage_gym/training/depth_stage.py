"""Stage 1b: the depth head alone, trained on the frozen stage-1 encoder's latents.

Stage 1 trains its depth head with a small weight (``train_vae.depth_weight``): there the
head's job is to make the latents carry some geometry without crowding colour out. The
depth the cache lifts tokens with deserves a head of its own, with whole-view context
(``context_levels``) and more steps than stage 1 can give it. The encoder is frozen, so
its latents never change: the frames are rendered and encoded once (``frames`` of them,
kept in ``OUT/frames.pt`` so a resumed run does not render them again) and the head
trains on them for many epochs, which on a 2-core CPU is ten times faster than rendering
fresh frames every step.

The head reads latents exactly as the generator hands them over (normalised by
:class:`~mirage_gym.model.VideoVAE`), so it needs no ``latent_shift`` / ``latent_scale``.

``OUT`` ends as a complete stage-1 export: ``vae/`` (copied from the stage-1 run) and the
new ``depth_head/``, so ``mirage-gym train generator --vae OUT`` builds its clips with it.

    mirage-gym train depth --config default --vae runs/vae --out runs/depth
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from mirage_gym.model.depth_head import DepthHead
from mirage_gym.training.config import load_config
from mirage_gym.training.data import RoomStream
from mirage_gym.training.loop import (
    TrainState, add_common_arguments, load_checkpoint, make_optimizer, resolve_device, save_checkpoint, stage_settings,
)
from mirage_gym.training.vae_stage import evaluate_stage1, load_stage1

__all__ = ["train_depth", "depth_loss"]

FRAMES_FILE = "frames.pt"


def depth_loss(head: DepthHead, latents: torch.Tensor, depth: torch.Tensor, token_depth: torch.Tensor) -> torch.Tensor:
    """``|log d - log d_gt|`` at the latent cells plus the same at the pixels."""
    out = head(latents)
    return (out.token_depth.log() - token_depth.log()).abs().mean() + (out.pixel_depth.log() - depth.log()).abs().mean()


@torch.no_grad()
def _encoded_frames(config: dict, stage1: Path, out: Path, count: int, seed: int, device: torch.device) -> dict:
    """``count`` training frames encoded by the frozen stage-1 encoder, rendered once and kept in ``out``."""
    path = out / FRAMES_FILE
    if path.exists():
        frames = torch.load(path, map_location="cpu")
        if frames["latents"].shape[0] == count and frames.get("stage1") == str(stage1.resolve()):
            return frames
    vae, _ = load_stage1(stage1, device)
    data = config.get("data", {})
    stream = RoomStream(
        resolution=config["resolution"], fov_deg=config["fov_deg"], latent_factor=vae.spatial_factor,
        room_seeds=tuple(data.get("train_room_seeds", (0, 100_000))), pool_size=data.get("rooms_in_pool", 32),
        moving_objects_prob=data.get("moving_objects_prob", 0.3), seed=seed,
    )
    parts: dict[str, list[torch.Tensor]] = {"latents": [], "depth": [], "token_depth": []}
    for start in tqdm(range(0, count, 64), desc="encode frames", dynamic_ncols=True):
        batch = stream.frames(min(64, count - start))
        parts["latents"].append(vae.encode(batch.rgb.to(device))[:, :, 0].half().cpu())
        parts["depth"].append(batch.depth[:, 0].half())
        parts["token_depth"].append(batch.token_depth[:, 0].half())
    frames = {k: torch.cat(v) for k, v in parts.items()} | {"stage1": str(stage1.resolve())}
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(frames, tmp)
    tmp.replace(path)
    return frames


def train_depth(
    config: dict,
    stage1: Path,
    out: Path,
    *,
    steps: int | None = None,
    batch_size: int | None = None,
    device: torch.device = torch.device("cpu"),
    seed: int | None = None,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, float]:
    """Train the depth head of ``config`` (with ``train_depth.head`` on top) into ``out``; returns the last statistics."""
    hp, steps, batch_size, seed = stage_settings(config, "train_depth", steps, batch_size, seed)
    if not (stage1 / "vae" / "config.json").is_file():
        raise ValueError(f"{stage1} has no stage-1 export vae/ (run `mirage-gym train vae --out {stage1}` first)")
    frames = _encoded_frames(config, stage1, out, hp["frames"], seed, device)
    latents, depth, token_depth = frames["latents"], frames["depth"], frames["token_depth"]
    head = DepthHead(
        latent_channels=latents.shape[1], spatial_factor=depth.shape[-1] // latents.shape[-1],
        **{**config["depth_head"], **hp.get("head", {})},
    ).to(device)
    optimizer, scheduler = make_optimizer(head.parameters(), hp["lr"], hp["warmup"], steps)
    state = TrainState()
    if resume and load_checkpoint(out, state, {"depth_head": head}, optimizer, scheduler):
        print(f"resumed {out} at step {state.step}")
    draw = torch.Generator().manual_seed(seed * 1_000_003 + state.step)
    writer = SummaryWriter(str(out / "tb"))
    stats: dict[str, float] = {}
    bar = tqdm(total=steps, initial=state.step, desc="train depth", disable=not progress, dynamic_ncols=True)
    head.train()
    while state.step < steps:
        index = torch.randint(0, latents.shape[0], (batch_size,), generator=draw)
        z = latents[index].float().to(device)
        # Generated latents are not exact encodings: a little noise keeps the head robust to them.
        sigma = hp["latent_noise"] * torch.rand(z.shape[0], 1, 1, 1, generator=draw).to(device)
        z = z + sigma * torch.randn(z.shape, generator=draw).to(device)
        loss = depth_loss(head, z, depth[index].float().to(device), token_depth[index].float().to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        state.step += 1
        bar.update(1)
        stats = {"loss/depth": loss.item()}
        if state.step % hp["log_every"] == 0 or state.step == steps:
            writer.add_scalar("loss/depth", stats["loss/depth"], state.step)
            writer.add_scalar("lr", scheduler.get_last_lr()[0], state.step)
            bar.set_postfix(loss=f"{stats['loss/depth']:.3f}")
        if state.step % hp["checkpoint_every"] == 0 or state.step == steps:
            save_checkpoint(out, state, {"depth_head": head}, optimizer, scheduler, config)
    bar.close()
    writer.close()
    head.eval()
    if (out / "vae").exists():
        shutil.rmtree(out / "vae")
    shutil.copytree(stage1 / "vae", out / "vae")
    head.save_pretrained(out / "depth_head")
    stats["wall_time_s"] = state.elapsed()
    held_out = evaluate_stage1(config, out)
    (out / "stage1_eval.json").write_text(json.dumps({**held_out, "steps": state.step, "wall_time_s": stats["wall_time_s"]}, indent=2))
    stats.update({f"held_out/{k}": v for k, v in held_out.items()})
    return stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, default_out="runs/depth")
    parser.add_argument("--vae", default="runs/vae", help="run folder of `mirage-gym train vae` (its frozen vae/)")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config)
    stats = train_depth(
        config, Path(args.vae), Path(args.out), steps=args.steps, batch_size=args.batch_size,
        device=resolve_device(args.device), seed=args.seed, resume=args.resume,
    )
    print("final:", ", ".join(f"{k}={v:.4g}" for k, v in stats.items()))
    print(f"weights: {Path(args.out) / 'vae'} and {Path(args.out) / 'depth_head'} (pass --vae {args.out} to `train generator`)")
    return 0
