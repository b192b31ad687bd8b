"""The ceiling the latent cache puts on a moved view, with everything else perfect.

A held-out view A is encoded and written to a :class:`~mirage_gym.memory.LatentCache` with its
ground-truth depth at the latent cells; the cache is read at a camera B moved from A (a yaw, or a
step forward); cells the read leaves empty get B's own encoding (as if the generator painted them
perfectly); the grid is decoded and compared with the ground truth of B on the pixels of the cells
the read covered. With perfect depth, a perfect painter and no transformer in the loop, this is
the most ``fidelity_start_psnr`` can reach with this autoencoder and cache: latents describe
content centred on their cell, and a moved camera puts cached tokens up to half a cell off the
centres of its own grid. The autoencoder's reconstruction of B on the same pixels is the figure
without any move.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mirage_gym.config import EVAL_ROOM_SEED_OFFSET
from mirage_gym.geometry import (
    intrinsics_from_fov, pose_from_position_yaw_pitch, position_yaw_pitch_from_pose, scale_intrinsics,
)
from mirage_gym.memory.latent_cache import INTERPOLATIONS, LatentCache
from mirage_gym.model.vae import VideoVAE

__all__ = ["MOVES", "Move", "reprojection_ceiling"]


@dataclass(frozen=True)
class Move:
    """Camera B relative to A: a yaw (degrees, to the left) and a step along A's view (metres)."""

    name: str
    yaw_deg: float = 0.0
    forward: float = 0.0


MOVES = (Move("yaw 1 deg", yaw_deg=1.0), Move("yaw 5 deg", yaw_deg=5.0), Move("yaw 15 deg", yaw_deg=15.0),
         Move("yaw 30 deg", yaw_deg=30.0), Move("forward 0.3 m", forward=0.3))


@torch.no_grad()
def reprojection_ceiling(
    vae: VideoVAE,
    *,
    resolution: int,
    fov_deg: float,
    views: int = 12,
    voxel_size: float = 0.05,
    moves: tuple[Move, ...] = MOVES,
    seed: int = 0,
) -> dict[str, object]:
    """PSNR (dB) of a view read from the cache of a moved one, per move and cache interpolation.

    ``views`` held-out houses (room seeds from ``EVAL_ROOM_SEED_OFFSET``) each give one view A at a
    random free pose; a step forward that would leave the free floor is skipped. Returns
    ``{"views": n, "moves": {name: {"autoencoder": dB, "nearest": dB, "bilinear": dB, "covered": fraction,
    "pairs": count}}}``, each PSNR over the covered pixels of all pairs of that move together.
    """
    from mirage_gym.world import Renderer, make_scene

    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    if vae.temporal_factor != 1:
        raise ValueError("the reprojection ceiling needs a per-frame autoencoder (a temporal one encodes clips)")
    device = vae.latents_mean.device
    factor = vae.spatial_factor
    if resolution % factor:
        raise ValueError(f"resolution {resolution} is not a multiple of the autoencoder's factor {factor}")
    cells = resolution // factor
    k = intrinsics_from_fov(fov_deg, resolution, resolution)
    k_latent = scale_intrinsics(k, 1.0 / factor)
    sums = {m.name: {"autoencoder": 0.0, "nearest": 0.0, "bilinear": 0.0, "pixels": 0, "covered": 0.0, "pairs": 0}
            for m in moves}
    rng = np.random.default_rng(seed)
    for view in range(views):
        scene = make_scene(EVAL_ROOM_SEED_OFFSET + view)
        renderer = Renderer(scene)
        pose_a = scene.sample_pose(rng)
        position, yaw, _ = position_yaw_pitch_from_pose(pose_a)
        poses, names = [pose_a], []
        for move in moves:
            step = torch.stack([torch.cos(yaw), torch.sin(yaw), torch.zeros_like(yaw)]) * move.forward
            if move.forward and not bool(scene.is_free((position + step).numpy()[None])[0]):
                continue
            poses.append(pose_from_position_yaw_pitch(position + step, yaw + math.radians(move.yaw_deg),
                                                      torch.zeros_like(yaw)))
            names.append(move.name)
        poses = torch.stack(poses)
        frames = renderer.render(poses, k, resolution, resolution)
        token_depth = renderer.render(poses, k_latent, cells, cells).depth  # exactly at the cell centres
        rgb = frames.rgb.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # [-1, 1]
        latents = vae.encode(rgb[None].to(device))[0].transpose(0, 1)  # [1 + moves, C, h, w]
        decoded = {"autoencoder": _decode(vae, latents[1:])}
        cache = LatentCache(latents.shape[1], voxel_size=voxel_size, capacity=cells * cells, device=device)
        cache.write(latents[:1], token_depth[:1].to(device), poses[:1].to(device), k_latent)
        for mode in INTERPOLATIONS:  # one write, read both ways (they cover the same cells)
            cache.interpolation = mode
            read, mask = cache.read(poses[1:].to(device), k_latent, cells, cells)
            filled = torch.where(mask[:, None], read, latents[1:])  # holes: as a perfect painter would fill them
            decoded[mode] = _decode(vae, filled)
        covered = mask.repeat_interleave(factor, 1).repeat_interleave(factor, 2).cpu()
        covered &= ~frames.dynamic[1:] & torch.isfinite(frames.depth[1:])
        truth = rgb[1:].add(1.0).div(2.0)
        for i, name in enumerate(names):
            pixels = int(covered[i].sum())
            if pixels == 0:
                continue
            entry = sums[name]
            for key, frame in decoded.items():
                entry[key] += _squared_error(frame[i], truth[i], covered[i]) * pixels
            entry["pixels"] += pixels
            entry["covered"] += float(mask[i].float().mean())
            entry["pairs"] += 1
    result = {}
    for name, entry in sums.items():
        if entry["pairs"] == 0:
            continue
        result[name] = {key: _to_db(entry[key] / entry["pixels"]) for key in ("autoencoder", *INTERPOLATIONS)}
        result[name].update(covered=entry["covered"] / entry["pairs"], pairs=entry["pairs"])
    return {"views": views, "voxel_size": voxel_size, "moves": result}


def _decode(vae: VideoVAE, latents: Tensor) -> Tensor:
    """``[N, C, h, w]`` latents -> ``[N, 3, H, W]`` frames in [0, 1] on the CPU."""
    return vae.decode(latents.transpose(0, 1)[None])[0].add(1.0).div(2.0).cpu()  # one clip of N frames


def _squared_error(frame: Tensor, truth: Tensor, mask: Tensor) -> float:
    return float(((frame - truth) ** 2).mean(0)[mask].mean())


def _to_db(mse: float) -> float:
    return float(10.0 * math.log10(1.0 / max(mse, 1e-12)))
