"""The depth stage: the depth head alone, trained on the frozen stage-1 encoder's latents.

Stage 1 trains its depth head with a small weight (``training.vae.depth_weight``): there the
head's job is to make the latents carry some geometry without crowding colour out. The
depth the cache lifts tokens with deserves a head of its own, with whole-view context
(``context_levels``) and more steps than stage 1 can give it. The encoder is frozen, so
its latents never change: the frames are rendered and encoded once (``frames`` of them,
kept in ``OUT/frames.pt`` with the encoder's digest, so a resumed run does not render them again
and a changed encoder gets fresh ones) and the head
trains on them for many epochs, which on a 2-core CPU is ten times faster than rendering
fresh frames every step.

The head reads latents exactly as the generator hands them over (normalised by
:class:`~mirage_gym.model.VideoVAE`), so it needs no ``latent_shift`` / ``latent_scale``.

At inference the head reads *generated* latents, which are not encodings of any real frame.
A head trained on encodings alone does worse on them (the default model's context head:
abs-rel 0.29 on encoded frames but 0.70 on generated ones, where stage 1's head had 0.63). With ``--generator MODEL`` (a trained stage 2)
the stage also rolls that model out over training trajectories (``generated_frames`` frames,
kept in ``OUT/generated.pt`` with the model's file hashes) and every batch is half encoded, half generated latents, each
paired with the ground-truth depth at its pose: the head learns the depth of the scene the
memory holds from the latents the generator really produces.

``OUT`` ends as a complete stage-1 export: ``vae/`` (copied from the stage-1 run) and the
new ``depth_head/``, so ``mirage-gym train generator --vae OUT`` builds its clips with it.

    mirage-gym train depth --config default --vae runs/vae --out runs/depth
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mirage_gym.config import DEPTH_LOSSES, Config, DepthTraining, load_config
from mirage_gym.model.depth_head import DepthHead
from mirage_gym.provenance import folder_hashes
from mirage_gym.training.data import RoomStream
from mirage_gym.training.loop import (
    RunOptions, Stage, add_common_arguments, fit, load_tensors, print_final, save_tensors, stage_settings,
)
from mirage_gym.training.vae_stage import evaluate_stage1, load_stage1, with_latent_noise

__all__ = ["train_depth", "depth_loss"]

FRAMES_FILE = "frames.pt"
GENERATED_FILE = "generated.pt"


def depth_loss(
    head: DepthHead,
    latents: torch.Tensor,
    depth: torch.Tensor | None,
    token_depth: torch.Tensor,
    weights: torch.Tensor | None = None,
    kind: str = "log",
) -> torch.Tensor:
    """The head's depth error at the latent cells plus the same at the pixels (ground truth floored at 1 mm).

    The one home of the depth loss: the depth stage scores its head with it, stage 2 and the
    self-forcing fine-tune score the transformer's predicted clean latents through a frozen head.
    ``kind`` (:data:`~mirage_gym.config.DEPTH_LOSSES`): ``"log"``, ``|log d - log d_gt|``, whose best
    guess under doubt is the median depth; ``"log+relative"`` adds ``|d - d_gt| / d_gt``, the abs-rel
    figure, whose best guess under doubt is nearer (a guess too far costs more than one too near). The
    relative term alone would stall a head that guesses too near (its gradient in log depth is
    ``d / d_gt``), so it comes with the log term, never alone.
    ``depth`` ``None``: the token term alone (encoded clips keep no pixel depth). ``weights`` ``[N]``:
    each latent's terms weighted (the mean of ``weights * per-latent error``).
    """
    if kind not in DEPTH_LOSSES:
        raise ValueError(f"kind must be one of {DEPTH_LOSSES}, got {kind!r}")

    def error(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        truth = truth.clamp(min=1e-3)
        per_cell = (pred.log() - truth.log()).abs()
        if kind == "log+relative":
            per_cell = per_cell + (pred - truth).abs() / truth
        return per_cell.mean() if weights is None else (weights * per_cell.flatten(1).mean(dim=1)).mean()

    out = head(latents)
    token = error(out.token_depth, token_depth)
    return token if depth is None else token + error(out.pixel_depth, depth)


@torch.no_grad()
def _encoded_frames(config: Config, stage1: Path, out: Path, count: int, seed: int, device: torch.device, progress: bool) -> dict:
    """``count`` training frames encoded by the frozen stage-1 encoder, rendered once and kept in ``out``."""
    path = out / FRAMES_FILE
    vae, _ = load_stage1(stage1, device)
    source = {"encoder": vae.encoder_digest(), "count": count, "seed": seed}
    if path.exists():
        frames = load_tensors(path)
        if frames.get("source") == source:
            return frames
        print(f"{path} holds frames of another encoder or count: encoding them again")
    stream = RoomStream.for_training(config, vae.spatial_factor, seed)
    parts: dict[str, list[torch.Tensor]] = {"latents": [], "depth": [], "token_depth": []}
    for start in tqdm(range(0, count, 64), desc="encode frames", disable=not progress, dynamic_ncols=True):
        batch = stream.frames(min(64, count - start))
        parts["latents"].append(vae.encode(batch.rgb.to(device))[:, :, 0].half().cpu())
        parts["depth"].append(batch.depth[:, 0].half())
        parts["token_depth"].append(batch.token_depth[:, 0].half())
    frames = {k: torch.cat(v) for k, v in parts.items()} | {"source": source}
    save_tensors(path, frames)
    return frames


@torch.no_grad()
def _generated_frames(config: Config, model: Path, out: Path, count: int, seed: int, device: torch.device, progress: bool) -> dict:
    """``count`` frames generated by the stage-2 ``model`` along training trajectories, with ground-truth depth."""
    from mirage_gym.model.generator import MirageGenerator

    path = out / GENERATED_FILE
    source = {"model": folder_hashes(model), "count": count, "seed": seed}
    if path.exists():
        frames = load_tensors(path)
        if frames.get("source") == source:
            return frames
        print(f"{path} holds frames of another model or count: generating them again")
    generator = MirageGenerator.from_pretrained(model).to(device)
    chunk, scenes = config.model.chunk_frames, 8
    length = 1 + 4 * chunk  # the start frame (given) and four generated chunks
    stream = RoomStream.for_training(config, generator.vae.spatial_factor, seed + 1)
    noise_generator = torch.Generator(device=device).manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {"latents": [], "depth": [], "token_depth": []}
    per_round = scenes * (length - 1)
    for _ in tqdm(range(-(-count // per_round)), desc="generate frames", disable=not progress, dynamic_ncols=True):
        clips = stream.clips(scenes, length)
        images = ((clips.rgb[:, 0].permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        generator.start(images, clips.cam_to_world[:, 0], clips.intrinsics)
        for c in range(4):
            frames = slice(1 + c * chunk, 1 + (c + 1) * chunk)
            latents = generator.step(clips.cam_to_world[:, frames], generator=noise_generator).latents  # [S, C, t, h, w]
            parts["latents"].append(latents.transpose(1, 2).flatten(0, 1).half().cpu())
            parts["depth"].append(clips.depth[:, frames].flatten(0, 1).half())
            parts["token_depth"].append(clips.token_depth[:, frames].flatten(0, 1).half())
    frames = {k: torch.cat(v)[:count] for k, v in parts.items()} | {"source": source}
    save_tensors(path, frames)
    return frames


def train_depth(
    config: Config,
    stage1: Path,
    out: Path,
    *,
    generator: Path | None = None,
    init: Path | None = None,
    run: RunOptions = RunOptions(),
) -> dict[str, float]:
    """Train ``config.model.depth_head`` into ``out``; returns the last statistics and the held-out evaluation.

    With ``generator`` (a stage-2 model folder over the same stage 1), half of every batch is
    that model's own generated latents. With ``init`` (a saved ``depth_head/`` folder, or a model
    folder holding one) the head starts from those weights instead of fresh ones: a fine-tune on
    the stage's own schedule. A checkpoint in ``out`` still takes precedence, so a fine-tune resumes.
    """
    hp: DepthTraining = stage_settings(config, "depth", run)
    device, progress = run.device, run.progress
    if not (stage1 / "vae" / "config.json").is_file():
        raise ValueError(f"{stage1} has no stage-1 export vae/ (run `mirage-gym train vae --out {stage1}` first)")
    if init is not None and (init / "depth_head").is_dir():
        init = init / "depth_head"
    init_head = None
    if init is not None:  # checked before any frames are made
        if not (init / "config.json").is_file():
            raise ValueError(f"{init} is not a saved depth head (no config.json; pass a depth_head/ folder or a model folder)")
        init_head = DepthHead.from_pretrained(init)
        saved = init_head.config
        wanted = dataclasses.asdict(config.model.depth_head) | {
            "latent_channels": json.loads((stage1 / "vae" / "config.json").read_text())["latent_channels"]}
        differ = sorted(k for k, v in wanted.items() if saved.get(k) != v)
        if differ:
            raise ValueError(f"the head in {init} is not the config's model.depth_head over {stage1}'s vae "
                             f"(differs in {', '.join(differ)})")
    encoded = _encoded_frames(config, stage1, out, hp.frames, hp.seed, device, progress)
    generated = None
    if generator is not None:
        generated = _generated_frames(config, generator, out, hp.generated_frames, hp.seed, device, progress)
    latents, depth = encoded["latents"], encoded["depth"]
    torch.manual_seed(hp.seed)  # the head's initial weights, whether the frames were made now or read back
    head = DepthHead(latent_channels=latents.shape[1], spatial_factor=depth.shape[-1] // latents.shape[-1],
                     **dataclasses.asdict(config.model.depth_head)).to(device)
    if init_head is not None:
        head.load_state_dict(init_head.state_dict())

    def batch(step: int, rng: torch.Generator) -> tuple[torch.Tensor, ...]:
        index = torch.randint(0, latents.shape[0], (hp.batch_size,), generator=rng)
        parts = [tuple(encoded[k][index] for k in ("latents", "depth", "token_depth"))]
        if generated is not None:  # the second half of the batch: the generator's own latents
            half = hp.batch_size // 2
            pick = torch.randint(0, generated["latents"].shape[0], (half,), generator=rng)
            parts = [tuple(x[: hp.batch_size - half] for x in parts[0]),
                     tuple(generated[k][pick] for k in ("latents", "depth", "token_depth"))]
        return tuple(torch.cat(xs).float().to(device) for xs in zip(*parts))

    def loss(batch: tuple[torch.Tensor, ...], rng: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        z, d, t = batch
        value = depth_loss(head, with_latent_noise(z, hp.latent_noise, rng), d, t, kind=hp.loss)
        return value, {"loss": value.item()}

    fitted = fit(Stage("depth", {"depth_head": head}, batch, loss), hp, out, config=config, run=run)
    if (out / "vae").exists():
        shutil.rmtree(out / "vae")
    shutil.copytree(stage1 / "vae", out / "vae")
    head.save_pretrained(out / "depth_head")
    held_out = evaluate_stage1(config, out)
    (out / "stage1_eval.json").write_text(json.dumps({**held_out, "steps": fitted.step, "wall_time_s": fitted.wall_time_s}, indent=2))
    return {**fitted.stats, "wall_time_s": fitted.wall_time_s, **{f"held_out/{k}": v for k, v in held_out.items()}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, default_out="runs/depth")
    parser.add_argument("--vae", default="runs/vae", help="run folder of `mirage-gym train vae` (its frozen vae/)")
    parser.add_argument("--generator", default=None,
                        help="a stage-2 model folder over the same stage 1: train on its generated latents too")
    parser.add_argument("--init-head", default=None, metavar="PATH",
                        help="start from this saved head (a depth_head/ folder or a model folder): fine-tune it")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    stats = train_depth(
        load_config(args.config), Path(args.vae), Path(args.out), generator=Path(args.generator) if args.generator else None,
        init=Path(args.init_head) if args.init_head else None,
        run=RunOptions.from_args(args),
    )
    print_final(stats)
    print(f"weights: {Path(args.out) / 'vae'} and {Path(args.out) / 'depth_head'} (pass --vae {args.out} to `train generator`)")
    return 0
