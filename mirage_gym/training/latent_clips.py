"""Ground-truth trajectories encoded once with the stage-1 autoencoder, for stage 2.

Encoding 128x128 frames costs ~25 ms each on one CPU core, far more than a transformer
step on them, so stage 2 encodes its clips once and then samples chunks, contexts and
cache histories from them for many epochs. What is stored is what inference would have:

* ``latents`` ``[N, L, C, h, w]`` (float16) from the autoencoder;
* ``token_depth`` ``[N, L, h, w]`` **predicted** by the depth head, not ground truth, so
  the caches built in training carry the same depth errors as at inference;
* ``keep`` ``[N, L, h, w]``: the :class:`~mirage_gym.memory.TokenFilter` decision on each
  chunk of ``chunk`` frames (ground-truth RGB with predicted depth), so moving objects stay
  out of training caches the same way they stay out at inference;
* ``cam_to_world`` ``[N, L, 4, 4]``;
* ``gt_token_depth`` ``[N, L, h, w]`` (float16): the **ground-truth** depth rendered at the latent
  cell centres, what the depth loss on the transformer's predicted latents is scored against
  (shards written before it existed lack it: :func:`encode_clips` encodes such a shard again
  when ``require`` asks for it, saying so);
* ``start_rgb`` ``[N, H, W, 3]`` uint8 (only with ``start_images``): each clip's first frame, the
  image a self-forcing rollout starts from as ``MirageGenerator.start`` does at inference.

Shards are written atomically (temporary file, then rename), and shard ``i`` is drawn from
its own stream ``make_stream(i)``: an interrupted run resumes at the first missing shard and
ends with exactly the clips an uninterrupted run would have written.

``source.json`` records what the shards were made from: the encoder's digest
(:meth:`~mirage_gym.model.VideoVAE.encoder_digest`), the clip length and chunk, and the streams'
houses and seed. A folder made from anything else is an error, not a silent mix of two latent
spaces (a stage 1 retrained in place, another config); the token depth is the head's at encoding time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from mirage_gym.config import Config
from mirage_gym.memory import TokenFilter
from mirage_gym.model import DepthHead, VideoVAE
from mirage_gym.training.data import RoomStream
from mirage_gym.training.loop import derived_seed

__all__ = ["encode_clips", "LatentClips", "ShardStreams", "shard_streams", "write_shard", "load_shards"]

SHARD = "shard_{:05d}.safetensors"
SOURCE = "source.json"


@dataclass(frozen=True)
class ShardStreams:
    """Shard ``i``'s stream (``streams(i)``): its own seed and a small pool of its own rooms."""

    resolution: int
    fov_deg: float
    latent_factor: int
    room_seeds: tuple[int, int]
    rooms_per_shard: int
    moving_objects_prob: float
    seed: int

    def __call__(self, index: int) -> RoomStream:
        return RoomStream(
            resolution=self.resolution, fov_deg=self.fov_deg, latent_factor=self.latent_factor,
            room_seeds=self.room_seeds, pool_size=self.rooms_per_shard, moving_objects_prob=self.moving_objects_prob,
            seed=derived_seed(self.seed, index),
        )


def shard_streams(config: Config, latent_factor: int, seeds: tuple[int, int], seed: int) -> ShardStreams:
    """The :class:`ShardStreams` of ``config``'s data settings over the houses ``seeds`` (a shard holds 32 clips)."""
    data = config.training.data
    return ShardStreams(config.model.resolution, config.model.fov_deg, latent_factor, tuple(seeds),
                        data.rooms_per_shard, data.moving_objects_prob, seed)


def _check_source(folder: Path, source: dict[str, Any]) -> None:
    """Record ``source`` in ``folder/source.json``, or refuse a folder whose shards were made from another."""
    path = folder / SOURCE
    shards = sorted(folder.glob("shard_*.safetensors"))
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != source:
            diff = [f"{k}: {saved.get(k)!r} there, {source.get(k)!r} now" for k in sorted(set(saved) | set(source))
                    if saved.get(k) != source.get(k)]
            raise ValueError(f"{folder} holds clips made from another source ({'; '.join(diff)}): they would mix two "
                             "latent spaces or datasets. Train into another --out, or remove the folder to encode "
                             "them again")
        return
    if shards:
        raise ValueError(f"{folder} holds {len(shards)} shards but no {SOURCE}: which autoencoder encoded them is "
                         "unknown. Train into another --out, or remove the folder to encode them again")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(source, indent=2) + "\n")
    os.replace(tmp, path)


def write_shard(tensors: dict[str, Tensor], path: Path) -> None:
    """Save a shard atomically (temporary file, then rename): a killed run never leaves half of one."""
    tmp = path.with_suffix(".tmp")
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def load_shards(folder: Path) -> dict[str, Tensor]:
    """Every shard of ``folder``, concatenated along clips (``intrinsics``, shared, from the first)."""
    paths = sorted(folder.glob("shard_*.safetensors"))
    if not paths:
        raise ValueError(f"no encoded clips in {folder}")
    parts = [load_file(str(p)) for p in paths]
    keys = [key for key in parts[0] if all(key in p for p in parts)]  # a key some older shards lack is left out
    return {key: parts[0][key] if key == "intrinsics" else torch.cat([p[key] for p in parts]) for key in keys}


def _shard_keys(path: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


@torch.no_grad()
def encode_clips(
    folder: Path,
    make_stream: ShardStreams,
    vae: VideoVAE,
    depth_head: DepthHead,
    *,
    num_clips: int,
    clip_frames: int,
    chunk: int,
    clips_per_shard: int = 32,
    progress: bool = True,
    start_images: bool = False,
    require: tuple[str, ...] = (),
) -> Path:
    """Render, encode and store ``num_clips`` clips into ``folder`` (skipping shards already there).

    ``make_stream(i)`` gives the seeded stream that shard ``i`` is drawn from. ``start_images``:
    also keep each clip's first frame (``start_rgb``). A shard already there that lacks a key of
    ``require`` (written by an older version) is encoded again from its own stream, with a message.
    """
    folder.mkdir(parents=True, exist_ok=True)
    source = {"encoder": vae.encoder_digest(), "clip_frames": clip_frames, "chunk": chunk,
              "clips_per_shard": clips_per_shard, "streams": json.loads(json.dumps(vars(make_stream)))}
    _check_source(folder, source)
    token_filter = TokenFilter()
    shards = -(-num_clips // clips_per_shard)
    for index in tqdm(range(shards), desc="encode clips", disable=not progress, dynamic_ncols=True):
        path = folder / SHARD.format(index)
        if path.exists():
            missing = sorted(set(require) - _shard_keys(path))
            if not missing:
                continue
            print(f"{path} was written before the clips kept {', '.join(missing)}: encoding it again")
        stream = make_stream(index)
        h = stream.latent_size
        clips = stream.clips(min(clips_per_shard, num_clips - index * clips_per_shard), clip_frames)
        b, n = clips.rgb.shape[:2]
        latents = vae.encode(clips.rgb)  # [B, C, L, h, w]
        depth = depth_head(latents.transpose(1, 2).flatten(0, 1))
        token_depth = depth.token_depth.unflatten(0, (b, n))
        pixel_depth = depth.pixel_depth.unflatten(0, (b, n))
        rgb = ((clips.rgb.permute(0, 1, 3, 4, 2) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        keep = torch.cat(
            [
                token_filter(rgb[:, s : s + chunk], pixel_depth[:, s : s + chunk], clips.cam_to_world[:, s : s + chunk],
                             clips.intrinsics, latent_size=(h, h))
                for s in range(0, n, chunk)
            ],
            dim=1,
        )
        tensors = {
            "latents": latents.transpose(1, 2).half(),
            "token_depth": token_depth.half(),
            "keep": keep,
            "cam_to_world": clips.cam_to_world,
            "intrinsics": clips.intrinsics,
            "gt_token_depth": clips.token_depth.half(),
        }
        if start_images:
            tensors["start_rgb"] = rgb[:, 0].contiguous()
        write_shard(tensors, path)
    return folder


class LatentClips:
    """All shards of a folder in memory; ``sample`` draws a batch of whole clips.

    ``gt_token_depth`` and ``start_rgb`` are ``None`` when the shards do not hold them.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        shards = load_shards(folder)
        self.latents, self.token_depth, self.keep = shards["latents"], shards["token_depth"], shards["keep"]
        self.cam_to_world, self.intrinsics = shards["cam_to_world"], shards["intrinsics"]
        self.gt_token_depth: Tensor | None = shards.get("gt_token_depth")
        self.start_rgb: Tensor | None = shards.get("start_rgb")

    def __len__(self) -> int:
        return self.latents.shape[0]

    def indices(self, batch: int, rng: torch.Generator) -> Tensor:
        """The clips of a batch of ``batch``, drawn with ``rng`` (what :meth:`sample` draws)."""
        return torch.randint(len(self), (batch,), generator=rng)

    def ground_truth_depth(self, index: Tensor) -> Tensor:
        """Ground-truth token depth ``[B, L, h, w]`` float32 of clips ``index``; a clear error for older shards."""
        if self.gt_token_depth is None:
            raise ValueError(f"the clips in {self.folder} hold no ground-truth token depth (encoded by an older version):"
                             " encode them again (move the folder away, or let the stage re-encode its shards)")
        return self.gt_token_depth[index].float()

    def sample(self, batch: int, rng: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``batch`` clips drawn with ``rng``: ``latents [B, C, L, h, w]`` float32, ``token_depth [B, L, h, w]``,
        ``keep``, ``cam_to_world``."""
        return self.take(self.indices(batch, rng))

    def take(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Clips ``index``, as :meth:`sample` returns them."""
        return (
            self.latents[index].float().transpose(1, 2),
            self.token_depth[index].float(),
            self.keep[index],
            self.cam_to_world[index],
        )
