"""Stage 1: the per-frame autoencoder and the depth head, trained together on ground-truth renders.

``mirage-gym train vae --config default --out runs/vae``

The depth head reads the encoder's latents, so its loss also shapes the latent space:
latents carry geometry, which the cache needs (a token must know its depth) and the
generator benefits from. Keep its weight small (``depth_weight``): at 1.0 it crowded colour
out of the 8 latent channels (chroma stayed at the grey level through 350 steps; at 0.1 it
was learnt by step 200). The decoder and the depth head see latents with a little
Gaussian noise, so they tolerate the small errors of generated latents.

Training uses random crops aligned to latent cells (``crop`` in the config; both networks
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
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from mirage_gym.metrics import psnr, ssim_map
from mirage_gym.model.depth_head import DepthHead
from mirage_gym.model.vae import VideoVAE
from mirage_gym.training.config import load_config
from mirage_gym.training.data import RoomStream
from mirage_gym.training.loop import (
    TrainState,
    add_common_arguments,
    load_checkpoint,
    make_optimizer,
    resolve_device,
    save_checkpoint,
    stage_settings,
)

__all__ = ["build_autoencoder", "build_depth_head", "train_vae", "load_stage1", "evaluate_stage1", "chroma_ratio", "colour_l1"]


def build_autoencoder(config: dict) -> AutoencoderTiny:
    return AutoencoderTiny(**config["vae"])


def build_depth_head(config: dict, autoencoder: AutoencoderTiny) -> DepthHead:
    factor = autoencoder.config.upsampling_scaling_factor ** (len(autoencoder.config.decoder_block_out_channels) - 1)
    return DepthHead(latent_channels=autoencoder.config.latent_channels, spatial_factor=factor, **config["depth_head"])


def _random_window(cells: int, crop_cells: int, generator: torch.Generator) -> tuple[int, int, int]:
    """A random ``crop_cells``-square window ``(i, j, n)`` of a ``cells``-square latent grid."""
    n = min(crop_cells, cells)
    i, j = (int(v) for v in torch.randint(0, cells - n + 1, (2,), generator=generator))
    return i, j, n


def _losses(autoencoder, head, z, rgb, depth_gt, token_depth_gt, window: tuple[int, int, int], hp: dict):
    """Stage-1 losses on latents ``z`` of the frames ``rgb`` (``[B, 3, H, W]`` in [-1, 1]).

    The decoder is scored on the latent ``window`` ``(i, j, n)`` only, the depth head on all of ``z``.
    """
    f = rgb.shape[-1] // z.shape[-1]
    sigma = hp["latent_noise"] * torch.rand(z.shape[0], 1, 1, 1, device=z.device) * z.detach().std()
    z_noisy = z + sigma * torch.randn_like(z)
    i, j, n = window
    recon = autoencoder.decoder(z_noisy[..., i : i + n, j : j + n])
    x = rgb[..., i * f : (i + n) * f, j * f : (j + n) * f]
    x01, r01 = (x + 1) / 2, (recon + 1) / 2
    loss_l1 = colour_l1(recon, x, hp.get("chroma_weight", 1.0))
    loss_ssim = (1 - ssim_map(r01, x01)).mean()
    depth = head(_as_generator_latents(head, z_noisy))
    loss_tok = (depth.token_depth.log() - token_depth_gt.log()).abs().mean()
    loss_pix = (depth.pixel_depth.log() - depth_gt.log()).abs().mean()
    loss = loss_l1 + hp["ssim_weight"] * loss_ssim + hp["depth_weight"] * (loss_tok + loss_pix)
    stats = {
        "loss/total": loss.item(), "loss/l1": loss_l1.item(), "loss/ssim": loss_ssim.item(),
        "loss/depth_token": loss_tok.item(), "loss/depth_pixel": loss_pix.item(),
        "metrics/psnr": psnr(r01.detach(), x01).mean().item(),
        "metrics/abs_rel_token": ((depth.token_depth - token_depth_gt).abs() / token_depth_gt).mean().item(),
        "metrics/latent_std": z.detach().std().item(),
        "metrics/chroma_ratio": chroma_ratio(recon.detach(), x).item(),
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
def _measure_latents(autoencoder: AutoencoderTiny, stream: RoomStream, device: torch.device, batches: int = 8) -> dict:
    """Mean and inverse std of the encoder's latents: the normalisation the generator works in."""
    z = torch.cat([autoencoder.encoder(stream.frames(16).rgb[:, 0].to(device)) for _ in range(batches)])
    return {"shift": float(z.mean()), "scale": float(1.0 / z.std())}


def _export(autoencoder: AutoencoderTiny, head: DepthHead, calibration: dict, out: Path) -> None:
    """Write ``vae/`` and ``depth_head/``: VideoVAE then hands out unit-variance latents, and the
    depth head (trained on raw latents) undoes that normalisation before reading them."""
    autoencoder.register_to_config(shift_factor=calibration["shift"], scaling_factor=calibration["scale"])
    head.register_to_config(latent_shift=calibration["shift"], latent_scale=calibration["scale"])
    autoencoder.save_pretrained(out / "vae")
    head.save_pretrained(out / "depth_head")


def train_vae(
    config: dict,
    out: Path,
    *,
    steps: int | None = None,
    batch_size: int | None = None,
    device: torch.device = torch.device("cpu"),
    seed: int | None = None,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, float]:
    """Train stage 1 into ``out``; returns the last logged statistics.

    With ``freeze_encoder_at`` in the stage's settings, the encoder is final from that step
    on: its latent statistics are measured once (kept in the checkpoint), ``vae/`` and
    ``depth_head/`` are exported at once -- stage 2 can start encoding its clips, which no
    longer change -- and the decoder and depth head go on training on the fixed latents,
    the depth head on whole frames (monocular depth needs the whole view, not a crop).
    """
    hp, steps, batch_size, seed = stage_settings(config, "train_vae", steps, batch_size, seed)
    autoencoder = build_autoencoder(config).to(device)
    head = build_depth_head(config, autoencoder).to(device)
    modules = {"autoencoder": autoencoder, "depth_head": head}
    params = list(autoencoder.parameters()) + list(head.parameters())
    optimizer, scheduler = make_optimizer(params, hp["lr"], hp["warmup"], steps)
    state = TrainState()
    if resume and load_checkpoint(out, state, modules, optimizer, scheduler):
        print(f"resumed {out} at step {state.step}")
    stream = RoomStream.for_training(config, head.config.spatial_factor, seed * 1_000_003 + state.step)
    factor = head.config.spatial_factor
    crop_cells = hp.get("crop", config["resolution"]) // factor
    crop_rng = torch.Generator().manual_seed(seed * 7919 + state.step)
    freeze_at = hp.get("freeze_encoder_at")
    writer = SummaryWriter(str(out / "tb"))
    stats: dict[str, float] = {}
    bar = tqdm(total=steps, initial=state.step, desc="train vae", disable=not progress, dynamic_ncols=True)
    autoencoder.train(), head.train()
    frozen = False
    while state.step < steps:
        if not frozen and freeze_at is not None and state.step >= freeze_at:
            autoencoder.encoder.requires_grad_(False)
            if "calibration" not in state.extra:
                state.extra["calibration"] = _measure_latents(autoencoder, stream, device)
            _export(autoencoder, head, state.extra["calibration"], out)
            frozen = True
        batch = stream.frames(batch_size).to(device)
        rgb, depth_gt, token_depth_gt = batch.rgb[:, 0], batch.depth[:, 0], batch.token_depth[:, 0]
        cells = token_depth_gt.shape[-1]
        if frozen:  # fixed latents of whole frames; the decoder is scored on a window of them
            with torch.no_grad():
                z = autoencoder.encoder(rgb)
            window = _random_window(cells, crop_cells, crop_rng)
        else:  # encoder and decoder train on the same crop of every frame
            i, j, n = _random_window(cells, crop_cells, crop_rng)
            f = factor
            rgb = rgb[..., i * f : (i + n) * f, j * f : (j + n) * f]
            depth_gt = depth_gt[..., i * f : (i + n) * f, j * f : (j + n) * f]
            token_depth_gt = token_depth_gt[..., i : i + n, j : j + n]
            z = autoencoder.encoder(rgb)
            window = (0, 0, n)
        loss, stats, x, recon = _losses(autoencoder, head, z, rgb, depth_gt, token_depth_gt, window, hp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        state.step += 1
        bar.update(1)
        if state.step % hp["log_every"] == 0 or state.step == steps:
            for key, value in stats.items():
                writer.add_scalar(key, value, state.step)
            writer.add_scalar("lr", scheduler.get_last_lr()[0], state.step)
            bar.set_postfix(loss=f"{stats['loss/total']:.3f}", psnr=f"{stats['metrics/psnr']:.1f}")
        if state.step % (hp["log_every"] * 10) == 0:
            grid = torch.cat([x[:4], recon[:4].detach()], dim=-1).clamp(-1, 1) * 0.5 + 0.5
            writer.add_images("input|reconstruction", grid, state.step)
        if state.step % hp["checkpoint_every"] == 0 or state.step == steps:
            save_checkpoint(out, state, modules, optimizer, scheduler, config)
    bar.close()
    autoencoder.eval(), head.eval()
    calibration = state.extra.get("calibration") or _measure_latents(autoencoder, stream, device)
    _export(autoencoder, head, calibration, out)
    writer.close()
    stats["wall_time_s"] = state.elapsed()
    held_out = evaluate_stage1(config, out)
    (out / "stage1_eval.json").write_text(json.dumps({**held_out, "steps": state.step, "wall_time_s": stats["wall_time_s"]}, indent=2))
    stats.update({f"held_out/{k}": v for k, v in held_out.items()})
    return stats


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
    (:func:`chroma_ratio`), and abs-rel of the token and pixel depth against ground truth, averaged over ``frames`` frames of rooms never used in training.
    """
    from mirage_gym.metrics import abs_rel, ssim
    from mirage_gym.training.config import EVAL_ROOM_SEED_OFFSET

    vae, head = load_stage1(folder, torch.device("cpu"))
    stream = RoomStream(
        resolution=config["resolution"], fov_deg=config["fov_deg"], latent_factor=vae.spatial_factor,
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
    config = load_config(args.config)
    stats = train_vae(
        config, Path(args.out), steps=args.steps, batch_size=args.batch_size, device=resolve_device(args.device),
        seed=args.seed, resume=args.resume,
    )
    print("final:", ", ".join(f"{k}={v:.4g}" for k, v in stats.items()))
    print(f"weights: {Path(args.out) / 'vae'} and {Path(args.out) / 'depth_head'}")
    return 0
