"""Stage 1: the per-frame autoencoder and the depth head, trained together on ground-truth renders.

``mirage-gym train vae --config default --out runs/vae``

The depth head reads the encoder's latents, so its loss also shapes the latent space:
latents carry geometry, which the cache needs (a token must know its depth) and the
generator benefits from. Keep its weight small (``training.vae.depth_weight``): at 1.0 it crowded colour
out of the 8 latent channels (chroma stayed at the grey level through 350 steps; at 0.1 it
was learnt by step 200). The decoder and the depth head see latents with a little
Gaussian noise, so they tolerate the small errors of generated latents.

Training uses random crops aligned to latent cells (``training.vae.crop``; both networks
are convolutional, so a 64x64 crop trains them at a quarter of the cost of a 128x128 frame).
From ``freeze_encoder_at`` on, the encoder is final (stage 2 can encode its clips) and the
decoder and depth head keep training on its latents of whole frames.
Losses: RGB :func:`colour_l1` ``+ w_ssim (1 - SSIM)``; depth ``|log d - log d_gt|`` at the latent cells
(rendered exactly at cell centres) and at the pixels. Once the encoder is final, its latent statistics
are measured and written into the autoencoder's config (``shift_factor``,
``scaling_factor``), so :class:`~mirage_gym.model.VideoVAE` hands the generator latents of
roughly unit variance.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from diffusers import AutoencoderTiny
from torch import Tensor

from mirage_gym.config import EVAL_ROOM_SEED_OFFSET, Config, VaeTraining, load_config
from mirage_gym.metrics import abs_rel, psnr, ssim, ssim_map
from mirage_gym.model.depth_head import DepthHead
from mirage_gym.model.vae import VideoVAE, build_autoencoder
from mirage_gym.training.data import RoomStream, StepRooms
from mirage_gym.training.loop import (
    Stage, TrainState, add_common_arguments, fit, print_final, resolve_device, stage_settings, step_rng,
)

__all__ = ["train_vae", "load_stage1", "evaluate_stage1", "chroma_ratio", "colour_l1", "with_latent_noise"]


def _random_window(cells: int, crop_cells: int, rng: torch.Generator) -> tuple[int, int, int]:
    """A random ``crop_cells``-square window ``(i, j, n)`` of a ``cells``-square latent grid."""
    n = min(crop_cells, cells)
    i, j = (int(v) for v in torch.randint(0, cells - n + 1, (2,), generator=rng))
    return i, j, n


def with_latent_noise(latents: Tensor, noise: float, rng: torch.Generator, scale: Tensor | float = 1.0) -> Tensor:
    """``latents`` plus Gaussian noise whose std, per sample, is uniform in ``[0, noise * scale]``.

    The decoder and the depth heads read generated latents at inference, which are not exact
    encodings: trained on noisy ones, they tolerate the generator's small errors.
    """
    sigma = noise * scale * torch.rand(latents.shape[0], 1, 1, 1, generator=rng).to(latents)
    return latents + sigma * torch.randn(latents.shape, generator=rng).to(latents)


def _losses(
    autoencoder: AutoencoderTiny, head: DepthHead, z: Tensor, rgb: Tensor, depth_gt: Tensor, token_depth_gt: Tensor,
    window: tuple[int, int, int], hp: VaeTraining, rng: torch.Generator,
) -> tuple[Tensor, dict[str, float], Tensor, Tensor]:
    """Stage-1 losses on latents ``z`` of the frames ``rgb`` (``[B, 3, H, W]`` in [-1, 1]).

    The decoder is scored on the latent ``window`` ``(i, j, n)`` only, the depth head on all of ``z``.
    """
    f = rgb.shape[-1] // z.shape[-1]
    z_noisy = with_latent_noise(z, hp.latent_noise, rng, scale=z.detach().std())
    i, j, n = window
    recon = autoencoder.decoder(z_noisy[..., i : i + n, j : j + n])
    x = rgb[..., i * f : (i + n) * f, j * f : (j + n) * f]
    x01, r01 = (x + 1) / 2, (recon + 1) / 2
    loss_l1 = colour_l1(recon, x, hp.chroma_weight)
    loss_ssim = (1 - ssim_map(r01, x01)).mean()
    depth = head(_as_generator_latents(head, z_noisy))
    loss_tok = (depth.token_depth.log() - token_depth_gt.log()).abs().mean()
    loss_pix = (depth.pixel_depth.log() - depth_gt.log()).abs().mean()
    loss = loss_l1 + hp.ssim_weight * loss_ssim + hp.depth_weight * (loss_tok + loss_pix)
    stats = {
        "loss": loss.item(), "l1": loss_l1.item(), "ssim_loss": loss_ssim.item(),
        "depth_token": loss_tok.item(), "depth_pixel": loss_pix.item(),
        "psnr": psnr(r01.detach(), x01).mean().item(),
        "abs_rel_token": ((depth.token_depth - token_depth_gt).abs() / token_depth_gt).mean().item(),
        "latent_std": z.detach().std().item(),
        "chroma_ratio": chroma_ratio(recon.detach(), x).item(),
    }
    return loss, stats, x, recon


# RGB -> (Y, Cb, Cr), BT.601: luma and two colour-difference channels.
_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def colour_l1(reconstruction: Tensor, target: Tensor, chroma_weight: float) -> Tensor:
    """L1 in luma/chroma (YCbCr): ``|dY| + chroma_weight * (|dCb| + |dCr|) / 2``, images ``[B, 3, H, W]``.

    A plain RGB L1 lets a small autoencoder settle on grey frames: luminance edges dominate
    the loss and chroma is learnt late or never (the first default model kept 4 % of the
    colour after 3,500 steps). Weighting chroma on its own keeps colour from the start.
    """
    m = _YCBCR.to(reconstruction)
    d = torch.einsum("ij,bj...->bi...", m, reconstruction - target).abs().mean(dim=(0, *range(2, target.dim())))
    return d[0] + chroma_weight * (d[1] + d[2]) / 2


def chroma_ratio(reconstruction: Tensor, target: Tensor) -> Tensor:
    """Std of the reconstruction's chroma (RGB minus its grey level) over the target's: 1 keeps colour, 0 is grey.

    PSNR and SSIM are dominated by luminance: an autoencoder that drops colour still scores
    well on them, so stage 1 reports this too.
    """
    chroma = lambda x: x - x.mean(dim=-3, keepdim=True)  # noqa: E731
    return chroma(reconstruction).std() / chroma(target).std().clamp(min=1e-6)


def _as_generator_latents(head: DepthHead, z: Tensor) -> Tensor:
    """Raw encoder latents in the normalised space the generator hands the head (identity until calibrated).

    Once the encoder is frozen its calibration is in the head's config, and the head undoes
    it on its input: training must feed it what inference feeds it.
    """
    return (z - head.config.latent_shift) * head.config.latent_scale


@torch.no_grad()
def _measure_latents(autoencoder: AutoencoderTiny, rooms: StepRooms, step: int, seed: int, batches: int = 8) -> dict:
    """Mean and inverse std of the encoder's latents on frames of ``step``: the normalisation the generator works in."""
    device = next(autoencoder.parameters()).device
    rng = step_rng(seed, step)
    z = torch.cat([autoencoder.encoder(rooms.frames(step, 16, rng).rgb[:, 0].to(device)) for _ in range(batches)])
    return {"shift": float(z.mean()), "scale": float(1.0 / z.std())}


def _export(autoencoder: AutoencoderTiny, head: DepthHead, calibration: dict, out: Path) -> None:
    """Write ``vae/`` and ``depth_head/``: VideoVAE then hands out unit-variance latents, and the
    depth head (trained on raw latents) undoes that normalisation before reading them."""
    autoencoder.register_to_config(shift_factor=calibration["shift"], scaling_factor=calibration["scale"])
    head.register_to_config(latent_shift=calibration["shift"], latent_scale=calibration["scale"])
    autoencoder.save_pretrained(out / "vae")
    head.save_pretrained(out / "depth_head")


def train_vae(
    config: Config,
    out: Path,
    *,
    steps: int | None = None,
    batch_size: int | None = None,
    device: torch.device = torch.device("cpu"),
    seed: int | None = None,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, float]:
    """Train stage 1 into ``out``; returns the last logged statistics and the held-out evaluation.

    With ``freeze_encoder_at`` in the stage's settings, the encoder is final from that step
    on: its latent statistics are measured once (kept in the checkpoint), ``vae/`` and
    ``depth_head/`` are exported at once -- stage 2 can start encoding its clips, which no
    longer change -- and the decoder and depth head go on training on the fixed latents,
    the depth head on whole frames (monocular depth needs the whole view, not a crop).
    """
    hp: VaeTraining = stage_settings(config, "vae", steps, batch_size, seed)
    model = config.model
    autoencoder = build_autoencoder(**dataclasses.asdict(model.vae)).to(device)
    factor = VideoVAE(autoencoder).spatial_factor
    # Stage 1's own head: the model's, with its own context levels (local depth shapes the latents).
    head_args = dataclasses.asdict(model.depth_head) | {"context_levels": hp.depth_head_context_levels}
    head = DepthHead(latent_channels=model.vae.latent_channels, spatial_factor=factor, **head_args).to(device)
    rooms = StepRooms(config, factor, hp.seed, hp.batch_size)
    crop_cells = (hp.crop or model.resolution) // factor
    state = TrainState()
    shown: dict[str, Tensor] = {}  # the last step's frames and reconstructions, for tensorboard

    def frozen() -> bool:
        return not next(autoencoder.encoder.parameters()).requires_grad

    def freeze_encoder(step: int) -> None:
        if hp.freeze_encoder_at is None or step < hp.freeze_encoder_at or frozen():
            return
        autoencoder.encoder.requires_grad_(False)
        if "calibration" not in state.extra:
            state.extra["calibration"] = _measure_latents(autoencoder, rooms, step, hp.seed)
        _export(autoencoder, head, state.extra["calibration"], out)

    def batch(step: int, rng: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        frames = rooms.frames(step, hp.batch_size, rng).to(device)
        return frames.rgb[:, 0], frames.depth[:, 0], frames.token_depth[:, 0]

    def loss(batch: tuple[Tensor, Tensor, Tensor], rng: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        rgb, depth_gt, token_depth_gt = batch
        i, j, n = _random_window(token_depth_gt.shape[-1], crop_cells, rng)
        if frozen():  # fixed latents of whole frames; the decoder is scored on a window of them
            with torch.no_grad():
                z = autoencoder.encoder(rgb)
            window = (i, j, n)
        else:  # encoder and decoder train on the same crop of every frame
            f = factor
            rgb = rgb[..., i * f : (i + n) * f, j * f : (j + n) * f]
            depth_gt = depth_gt[..., i * f : (i + n) * f, j * f : (j + n) * f]
            token_depth_gt = token_depth_gt[..., i : i + n, j : j + n]
            z = autoencoder.encoder(rgb)
            window = (0, 0, n)
        value, stats, shown["x"], recon = _losses(autoencoder, head, z, rgb, depth_gt, token_depth_gt, window, hp, rng)
        shown["recon"] = recon.detach()
        return value, stats

    def images() -> dict[str, Tensor]:
        return {"input|reconstruction": torch.cat([shown["x"][:4], shown["recon"][:4]], dim=-1).clamp(-1, 1) * 0.5 + 0.5}

    stage = Stage("vae", {"autoencoder": autoencoder, "depth_head": head}, batch, loss,
                  before_step=freeze_encoder, images=images)
    fitted = fit(stage, hp, out, config=config, resume=resume, progress=progress, state=state)
    calibration = state.extra.get("calibration") or _measure_latents(autoencoder, rooms, fitted.step, hp.seed)
    _export(autoencoder, head, calibration, out)
    held_out = evaluate_stage1(config, out)
    (out / "stage1_eval.json").write_text(json.dumps({**held_out, "steps": fitted.step, "wall_time_s": fitted.wall_time_s}, indent=2))
    return {**fitted.stats, "wall_time_s": fitted.wall_time_s, **{f"held_out/{k}": v for k, v in held_out.items()}}


def load_stage1(folder: Path, device: torch.device) -> tuple[VideoVAE, DepthHead]:
    """The frozen autoencoder and depth head exported by ``mirage-gym train vae``."""
    for part in ("vae", "depth_head"):
        if not (folder / part / "config.json").is_file():
            raise ValueError(f"{folder} has no stage-1 export {part}/ (run `mirage-gym train vae --out {folder}` first)")
    vae = VideoVAE(AutoencoderTiny.from_pretrained(folder / "vae")).to(device).eval().requires_grad_(False)
    head = DepthHead.from_pretrained(folder / "depth_head").to(device).eval().requires_grad_(False)
    return vae, head


@torch.no_grad()
def evaluate_stage1(config: dict, folder: Path, *, frames: int = 64, seed: int = 0) -> dict[str, float]:
    """Reconstruction and depth quality of an exported stage 1 on held-out rooms, full frames.

    Returns PSNR/SSIM of decode(encode(x)) against x, how much colour survives
    (:func:`chroma_ratio`), and abs-rel of the token and pixel depth against ground truth,
    averaged over ``frames`` frames of rooms never used in training.
    """
    vae, head = load_stage1(folder, torch.device("cpu"))
    stream = RoomStream(
        resolution=config.model.resolution, fov_deg=config.model.fov_deg, latent_factor=vae.spatial_factor,
        room_seeds=(EVAL_ROOM_SEED_OFFSET, EVAL_ROOM_SEED_OFFSET + 1000), pool_size=8, seed=seed,
    )
    batch = stream.frames(frames)
    latents = vae.encode(batch.rgb)
    recon = (vae.decode(latents)[:, 0] + 1) / 2
    target = (batch.rgb[:, 0] + 1) / 2
    depth = head(latents[:, :, 0])
    return {
        "psnr": psnr(recon, target).mean().item(),
        "ssim": ssim(recon, target).mean().item(),
        "depth_abs_rel_token": abs_rel(depth.token_depth, batch.token_depth[:, 0]).mean().item(),
        "depth_abs_rel_pixel": abs_rel(depth.pixel_depth, batch.depth[:, 0]).mean().item(),
        "chroma_ratio": chroma_ratio(recon, target).item(),
        "frames": frames,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, default_out="runs/vae")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    stats = train_vae(
        load_config(args.config), Path(args.out), steps=args.steps, batch_size=args.batch_size,
        device=resolve_device(args.device), seed=args.seed, resume=args.resume,
    )
    print_final(stats)
    print(f"weights: {Path(args.out) / 'vae'} and {Path(args.out) / 'depth_head'}")
    return 0
