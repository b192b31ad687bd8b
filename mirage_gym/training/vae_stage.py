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
Losses (:func:`reconstruction_loss`): RGB :func:`colour_l1` ``+ w_ssim (1 - SSIM)``, optionally
``+ w_grad`` :func:`gradient_l1` (sharpness) and, from ``gan_start`` on, ``+ w_gan (-D(recon))`` against a
:class:`PatchDiscriminator` trained from scratch with the hinge loss (an :class:`~.loop.Adversary` of the
stage: checkpointed and resumed with it); depth ``|log d - log d_gt|`` at the latent cells
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
import torch.nn.functional as F
from diffusers import AutoencoderTiny
from torch import Tensor, nn

from mirage_gym.config import EVAL_ROOM_SEED_OFFSET, Config, VaeTraining, load_config
from mirage_gym.metrics import abs_rel, image_gradients, psnr, reconstruction_figures, ssim, ssim_map
from mirage_gym.model.depth_head import DepthHead
from mirage_gym.model.vae import VideoVAE, build_autoencoder
from mirage_gym.training.data import Frames, RoomStream, StepRooms
from mirage_gym.training.loop import (
    Adversary, RunOptions, Stage, TrainState, add_common_arguments, fit, print_final, stage_settings, step_rng,
)

__all__ = ["train_vae", "load_stage1", "evaluate_stage1", "held_out_frames", "held_out_reconstruction", "chroma_ratio", "colour_l1",
           "gradient_l1", "reconstruction_loss", "PatchDiscriminator", "discriminator_adversary", "with_latent_noise"]


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
    window: tuple[int, int, int], hp: VaeTraining, rng: torch.Generator, discriminator: nn.Module | None = None,
) -> tuple[Tensor, dict[str, float], Tensor, Tensor]:
    """Stage-1 losses on latents ``z`` of the frames ``rgb`` (``[B, 3, H, W]`` in [-1, 1]).

    The decoder is scored on the latent ``window`` ``(i, j, n)`` only, the depth head on all of ``z``;
    ``discriminator`` (when its term is on) scores the reconstruction.
    """
    f = rgb.shape[-1] // z.shape[-1]
    z_noisy = with_latent_noise(z, hp.latent_noise, rng, scale=z.detach().std())
    i, j, n = window
    recon = autoencoder.decoder(z_noisy[..., i : i + n, j : j + n])
    x = rgb[..., i * f : (i + n) * f, j * f : (j + n) * f]
    loss_rgb, stats = reconstruction_loss(recon, x, hp, discriminator)
    depth = head(_as_generator_latents(head, z_noisy))
    loss_tok = (depth.token_depth.log() - token_depth_gt.log()).abs().mean()
    loss_pix = (depth.pixel_depth.log() - depth_gt.log()).abs().mean()
    loss = loss_rgb + hp.depth_weight * (loss_tok + loss_pix)
    stats = {
        "loss": loss.item(), **stats,
        "depth_token": loss_tok.item(), "depth_pixel": loss_pix.item(),
        "psnr": psnr((recon.detach() + 1) / 2, (x + 1) / 2).mean().item(),
        "abs_rel_token": ((depth.token_depth - token_depth_gt).abs() / token_depth_gt).mean().item(),
        "latent_std": z.detach().std().item(),
        "chroma_ratio": chroma_ratio(recon.detach(), x).item(),
    }
    return loss, stats, x, recon


def reconstruction_loss(
    recon: Tensor, x: Tensor, hp: VaeTraining, discriminator: nn.Module | None = None
) -> tuple[Tensor, dict[str, float]]:
    """The autoencoder's image loss on ``recon`` against ``x`` (``[B, 3, H, W]`` in [-1, 1]) and its parts.

    ``colour_l1 + ssim_weight (1 - SSIM) [+ grad_weight gradient_l1] [+ gan_weight (-D(recon)).mean()]``:
    the terms whose weight is 0 are not computed; the adversarial one only when ``discriminator`` is given.
    """
    x01, r01 = (x + 1) / 2, (recon + 1) / 2
    loss_l1 = colour_l1(recon, x, hp.chroma_weight)
    loss_ssim = (1 - ssim_map(r01, x01)).mean()
    loss = loss_l1 + hp.ssim_weight * loss_ssim
    stats = {"l1": loss_l1.item(), "ssim_loss": loss_ssim.item()}
    if hp.grad_weight:
        loss_grad = gradient_l1(recon, x)
        loss = loss + hp.grad_weight * loss_grad
        stats["grad_l1"] = loss_grad.item()
    if discriminator is not None and hp.gan_weight:
        loss_gan = -discriminator(recon).mean()
        loss = loss + hp.gan_weight * loss_gan
        stats["gan_g"] = loss_gan.item()
    return loss, stats


def gradient_l1(reconstruction: Tensor, target: Tensor) -> Tensor:
    """L1 between the finite-difference image gradients (x and y, per channel) of two images ``[B, 3, H, W]``.

    Zero for a reconstruction off by a constant; a blurred edge pays for every pixel it is spread over.
    """
    (rx, ry), (tx, ty) = image_gradients(reconstruction), image_gradients(target)
    return (rx - tx).abs().mean() + (ry - ty).abs().mean()


class PatchDiscriminator(nn.Module):
    """A small PatchGAN (spectral-norm convolutions, 34-pixel receptive field), trained from scratch.

    Maps images ``[B, 3, H, W]`` in [-1, 1] to a grid of real/fake logits, one per overlapping patch:
    it judges texture, not layout, which is what a blurring autoencoder loses. No pretrained network
    (no LPIPS, no VGG) can be downloaded here.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.net = nn.Sequential(
            sn(nn.Conv2d(3, width, 4, 2, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width, width * 2, 4, 2, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width * 2, width * 4, 4, 1, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width * 4, 1, 4, 1, 1)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def discriminator_adversary(hp: VaeTraining, shown: dict[str, Tensor], device: torch.device) -> Adversary | None:
    """The stage's :class:`PatchDiscriminator` as an :class:`~.loop.Adversary` (None when ``gan_weight`` is 0).

    Its hinge loss ``relu(1 - D(x)) + relu(1 + D(recon))`` reads the frames and reconstructions the
    stage's loss left in ``shown["x"]`` and ``shown["recon"]`` (detached).
    """
    if not hp.gan_weight:
        return None
    disc = PatchDiscriminator(hp.gan_width).to(device)

    def loss(batch: object, rng: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        real, fake = disc(shown["x"]), disc(shown["recon"].detach())
        d_loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        return d_loss, {"gan_d": d_loss.item(), "gan_real": real.mean().item(), "gan_fake": fake.mean().item()}

    return Adversary("discriminator", disc, loss, lr=hp.gan_lr, start=hp.gan_start_step())


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
    run: RunOptions = RunOptions(),
    eval_frames: int = 64,
) -> dict[str, float]:
    """Train stage 1 into ``out``; returns the last logged statistics and the held-out evaluation
    (:func:`evaluate_stage1` on ``eval_frames`` frames, also written to ``stage1_eval.json``).

    With ``freeze_encoder_at`` in the stage's settings, the encoder is final from that step
    on: its latent statistics are measured once (kept in the checkpoint), ``vae/`` and
    ``depth_head/`` are exported at once -- stage 2 can start encoding its clips, which no
    longer change -- and the decoder and depth head go on training on the fixed latents,
    the depth head on whole frames (monocular depth needs the whole view, not a crop).
    """
    hp: VaeTraining = stage_settings(config, "vae", run)
    device = run.device
    model = config.model
    autoencoder = build_autoencoder(**dataclasses.asdict(model.vae)).to(device)
    factor = VideoVAE(autoencoder).spatial_factor
    # Stage 1's own head: the model's, with its own context levels (local depth shapes the latents).
    head_args = dataclasses.asdict(model.depth_head) | {"context_levels": hp.depth_head_context_levels}
    head = DepthHead(latent_channels=model.vae.latent_channels, spatial_factor=factor, **head_args).to(device)
    rooms = StepRooms(config, factor, hp.seed, hp.batch_size)
    crop_cells = (hp.crop or model.resolution) // factor
    state = TrainState()
    shown: dict[str, Tensor] = {}  # the last step's frames and reconstructions: tensorboard, the discriminator
    adversary = discriminator_adversary(hp, shown, device)

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
        gan_on = adversary is not None and state.step >= adversary.start
        value, stats, shown["x"], recon = _losses(autoencoder, head, z, rgb, depth_gt, token_depth_gt, window, hp, rng,
                                                  adversary.module if gan_on else None)
        shown["recon"] = recon.detach()
        return value, stats

    def images() -> dict[str, Tensor]:
        return {"input|reconstruction": torch.cat([shown["x"][:4], shown["recon"][:4]], dim=-1).clamp(-1, 1) * 0.5 + 0.5}

    stage = Stage("vae", {"autoencoder": autoencoder, "depth_head": head}, batch, loss,
                  before_step=freeze_encoder, images=images, adversary=adversary)
    fitted = fit(stage, hp, out, config=config, run=run, state=state)
    calibration = state.extra.get("calibration") or _measure_latents(autoencoder, rooms, fitted.step, hp.seed)
    _export(autoencoder, head, calibration, out)
    held_out = evaluate_stage1(config, out, frames=eval_frames)
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


def held_out_frames(*, resolution: int, fov_deg: float, frames: int, seed: int = 0, latent_factor: int = 8) -> Frames:
    """``frames`` single frames of held-out houses (the first 1,000 seeds from ``EVAL_ROOM_SEED_OFFSET``, 8 live at
    a time): the frames every stage-1 figure is taken on. They depend on ``(resolution, fov_deg, frames, seed)``
    only; ``latent_factor`` sets the grid of ``token_depth``."""
    stream = RoomStream(
        resolution=resolution, fov_deg=fov_deg, latent_factor=latent_factor,
        room_seeds=(EVAL_ROOM_SEED_OFFSET, EVAL_ROOM_SEED_OFFSET + 1000), pool_size=8, seed=seed,
    )
    return stream.frames(frames)


@torch.no_grad()
def held_out_reconstruction(
    vae: VideoVAE, *, resolution: int, fov_deg: float, frames: int = 256, seed: int = 0,
    head: DepthHead | None = None, batch: int = 32,
) -> dict[str, float]:
    """The autoencoder's figures on ``frames`` full frames of held-out houses (room seeds from ``EVAL_ROOM_SEED_OFFSET``).

    :func:`~mirage_gym.metrics.reconstruction_figures` of decode(encode(x)) against x -- mean and
    worst-decile PSNR, SSIM, detail ratio -- and how much colour survives (:func:`chroma_ratio`);
    with ``head``, abs-rel of its token and pixel depth against the ground truth. The frames
    depend on ``(frames, seed)`` alone, whatever the model: every autoencoder is scored on the same ones.
    """
    data = held_out_frames(resolution=resolution, fov_deg=fov_deg, frames=frames, seed=seed,
                           latent_factor=vae.spatial_factor)
    device = next(vae.parameters()).device
    recon, depth_tok, depth_pix = [], [], []
    for k in range(0, frames, batch):
        latents = vae.encode(data.rgb[k : k + batch].to(device))
        recon.append(((vae.decode(latents)[:, 0] + 1) / 2).cpu())
        if head is not None:
            depth = head(latents[:, :, 0])
            depth_tok.append(depth.token_depth.cpu())
            depth_pix.append(depth.pixel_depth.cpu())
    recon_all, target = torch.cat(recon), (data.rgb[:, 0] + 1) / 2
    out = {**reconstruction_figures(recon_all, target), "chroma_ratio": chroma_ratio(recon_all, target).item()}
    if head is not None:
        out["depth_abs_rel_token"] = abs_rel(torch.cat(depth_tok), data.token_depth[:, 0]).mean().item()
        out["depth_abs_rel_pixel"] = abs_rel(torch.cat(depth_pix), data.depth[:, 0]).mean().item()
    return {**out, "frames": frames}


@torch.no_grad()
def evaluate_stage1(config: Config, folder: Path, *, frames: int = 64, seed: int = 0) -> dict[str, float]:
    """Reconstruction and depth quality of an exported stage 1 (or a model folder) on held-out rooms, full frames.

    :func:`held_out_reconstruction` with the folder's depth head: PSNR (mean and worst decile),
    SSIM and detail ratio of decode(encode(x)) against x, how much colour survives, and abs-rel of
    the token and pixel depth, over ``frames`` frames of rooms never used in training.
    """
    vae, head = load_stage1(folder, torch.device("cpu"))
    return held_out_reconstruction(vae, resolution=config.model.resolution, fov_deg=config.model.fov_deg,
                                   frames=frames, seed=seed, head=head)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, default_out="runs/vae")
    parser.add_argument("--frames", type=int, default=64,
                        help="held-out frames of the final evaluation (stage1_eval.json; the model card uses 256)")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    stats = train_vae(load_config(args.config), Path(args.out), run=RunOptions.from_args(args), eval_frames=args.frames)
    print_final(stats)
    print(f"weights: {Path(args.out) / 'vae'} and {Path(args.out) / 'depth_head'}")
    return 0
