"""Ground-truth trajectories encoded chunk by chunk with a temporal (Wan) VAE, per latent frame.

The counterpart of :mod:`.latent_clips` for ``AutoencoderKLWan``, which compresses time
``f = 4``-fold. A clip is ``chunks`` consecutive chunks of ``T = 1 + f (t - 1)`` pixel
frames of one trajectory, and every chunk is encoded **on its own**: the sampler
generates and decodes each chunk on its own, so the first latent frame of a chunk is
always its first pixel frame alone, and a training chunk must be one whole encoded chunk
(``make_chunk_batch(..., align=t)``). The time conventions are the sampler's
(:class:`~mirage_gym.model.MirageGenerator`):

* latent frame ``j`` of a chunk takes the pose of the chunk's pixel frame ``f j``;
* pixel frame ``i`` of a chunk takes the depth of latent frame ``ceil(i / f)`` (the one
  it is decoded from);
* the keep mask of latent frame ``j`` is the :class:`~mirage_gym.memory.TokenFilter`'s
  decision on pixel frame ``f j``, the filter running on all ``T`` pixel frames.

The Wan VAE has no depth head of its own, so the data is made in two passes around the
depth-head training:

1. :func:`encode_video_clips` writes *raw* shards: the latents, the poses of the latent
   frames, and the ground truth the depth head is trained on -- depth rendered at the
   latent cell centres and at the pixels of each latent frame's pixel frame.
2. :func:`annotate_video_clips`, once the depth head is trained, writes the shards that
   :class:`~mirage_gym.training.latent_clips.LatentClips` reads: the latents with
   **predicted** token depth and the filter's keep masks (on ground-truth RGB with
   predicted depth), so the caches built in training carry the errors they have at
   inference. Storing every pixel frame would cost ~100x the latents, so the clips are
   rendered again from their shard's seeded stream -- and checked to be the same clips.

Shards are written atomically and shard ``i`` always comes from ``make_stream(i)``: an
interrupted run resumes at the first missing shard with the clips it would have written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm

from mirage_gym.memory import TokenFilter
from mirage_gym.model import DepthHead, VideoVAE
from mirage_gym.training.data import RoomStream
from mirage_gym.training.latent_clips import SHARD, load_shards, write_shard

__all__ = [
    "RawVideoClips",
    "annotate_video_clips",
    "encode_video_clips",
    "latent_frame_of_pixel",
    "pixel_frame_of_latent",
]


def pixel_frame_of_latent(chunk_frames: int, temporal_factor: int) -> Tensor:
    """Index ``[t]`` of the pixel frame whose pose each latent frame of a chunk takes (``f j``)."""
    t = 1 + (chunk_frames - 1) // temporal_factor
    return torch.arange(t) * temporal_factor


def latent_frame_of_pixel(chunk_frames: int, temporal_factor: int) -> Tensor:
    """Index ``[T]`` of the latent frame each pixel frame of a chunk is decoded from (``ceil(i / f)``)."""
    return (torch.arange(chunk_frames) + temporal_factor - 1) // temporal_factor


def _check_temporal(vae: VideoVAE, chunk_frames: int, chunks: int) -> int:
    if not vae.is_temporal:
        raise ValueError("video clips are for temporal VAEs; per-frame autoencoders use latent_clips.encode_clips")
    if chunks < 1:
        raise ValueError(f"chunks must be >= 1, got {chunks}")
    return vae.num_latent_frames(chunk_frames)  # checks T = 1 + f (t - 1)


def _chunks(x: Tensor, chunks: int) -> Tensor:
    """``[B, chunks * T, ...]`` -> ``[B * chunks, T, ...]``."""
    return x.unflatten(1, (chunks, -1)).flatten(0, 1)


@torch.no_grad()
def encode_video_clips(
    folder: Path,
    make_stream: Callable[[int], RoomStream],
    vae: VideoVAE,
    *,
    num_clips: int,
    chunk_frames: int,
    chunks: int,
    clips_per_shard: int = 8,
    progress: bool = True,
) -> Path:
    """Render ``num_clips`` clips of ``chunks`` chunks, encode each chunk, store raw shards in ``folder``.

    A raw shard holds, for ``N`` clips of ``L = chunks * t`` latent frames:
    ``latents`` ``[N, L, C, h, w]`` (float16), ``cam_to_world`` ``[N, L, 4, 4]``,
    ``depth_token`` ``[N, L, h, w]`` and ``depth_pixel`` ``[N, L, H, W]`` (float16; ground
    truth of each latent frame's pixel frame) and ``intrinsics`` ``[3, 3]``. Shards already
    in ``folder`` are kept.
    """
    _check_temporal(vae, chunk_frames, chunks)
    device = next(vae.parameters()).device
    pick = pixel_frame_of_latent(chunk_frames, vae.temporal_factor)
    folder.mkdir(parents=True, exist_ok=True)
    shards = -(-num_clips // clips_per_shard)
    for index in tqdm(range(shards), desc="encode clips", disable=not progress, dynamic_ncols=True):
        path = folder / SHARD.format(index)
        if path.exists():
            continue
        count = min(clips_per_shard, num_clips - index * clips_per_shard)
        clips = make_stream(index).clips(count, chunks * chunk_frames)
        # One clip at a time: the chunks of a clip are one VAE batch (bounded memory on a real Wan VAE).
        latents = torch.stack([vae.encode(_chunks(rgb[None], chunks).to(device)).cpu() for rgb in clips.rgb])
        latents = latents.transpose(2, 3).flatten(1, 2)  # [N, chunks, C, t, h, w] -> [N, L, C, h, w]

        def per_latent_frame(x: Tensor) -> Tensor:
            return _chunks(x, chunks)[:, pick].unflatten(0, (-1, chunks)).flatten(1, 2)

        write_shard(
            {
                "latents": latents.half(),
                "cam_to_world": per_latent_frame(clips.cam_to_world),
                "depth_token": per_latent_frame(clips.token_depth),
                "depth_pixel": per_latent_frame(clips.depth).half(),
                "intrinsics": clips.intrinsics,
            },
            path,
        )
    return folder


class RawVideoClips:
    """All raw shards of a folder in memory (see :func:`encode_video_clips`)."""

    def __init__(self, folder: Path) -> None:
        shards = load_shards(folder)
        self.latents, self.cam_to_world = shards["latents"], shards["cam_to_world"]
        self.depth_token, self.depth_pixel = shards["depth_token"], shards["depth_pixel"]
        self.intrinsics = shards["intrinsics"]

    def __len__(self) -> int:
        return self.latents.shape[0]

    @property
    def num_latent_frames(self) -> int:
        """Latent frames in all clips together."""
        return self.latents.shape[0] * self.latents.shape[1]

    def frames(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Latent frames ``index`` (into all clips' frames, flattened) for the depth head:
        ``latents [n, C, h, w]`` float32, ``depth_token [n, h, w]``, ``depth_pixel [n, H, W]``."""
        return (
            self.latents.flatten(0, 1)[index].float(),
            self.depth_token.flatten(0, 1)[index],
            self.depth_pixel.flatten(0, 1)[index].float(),
        )


@torch.no_grad()
def annotate_video_clips(
    raw_folder: Path,
    folder: Path,
    make_stream: Callable[[int], RoomStream],
    vae: VideoVAE,
    depth_head: DepthHead,
    *,
    chunk_frames: int,
    chunks: int,
    token_filter: TokenFilter | None = None,
    progress: bool = True,
) -> Path:
    """Add predicted token depth and keep masks to the raw shards; write them in ``LatentClips``' format.

    ``make_stream`` must be the one the raw shards were encoded from (the clips are
    rendered again; a ``RuntimeError`` says so if they differ). ``token_filter`` defaults
    to the sampler's, ``TokenFilter(stride=2)``. Shards already in ``folder`` are kept.
    """
    _check_temporal(vae, chunk_frames, chunks)
    token_filter = token_filter if token_filter is not None else TokenFilter(stride=2)
    device = next(depth_head.parameters()).device
    f = vae.temporal_factor
    pick = pixel_frame_of_latent(chunk_frames, f)
    owner = latent_frame_of_pixel(chunk_frames, f)
    raw_paths = sorted(raw_folder.glob("shard_*.safetensors"))
    if not raw_paths:
        raise ValueError(f"no encoded clips in {raw_folder}")
    folder.mkdir(parents=True, exist_ok=True)
    for index, raw_path in enumerate(tqdm(raw_paths, desc="annotate clips", disable=not progress, dynamic_ncols=True)):
        path = folder / raw_path.name
        if path.exists():
            continue
        raw = load_file(str(raw_path))
        n, length = raw["latents"].shape[:2]
        t = length // chunks
        clips = make_stream(index).clips(n, chunks * chunk_frames)
        poses = _chunks(clips.cam_to_world, chunks)  # [N * chunks, T, 4, 4]
        if not torch.equal(poses[:, pick].reshape(n, length, 4, 4), raw["cam_to_world"]):
            raise RuntimeError(f"{raw_path}: its stream renders other clips than it was encoded from")
        token_depth, keep = [], []
        for clip in range(n):  # one clip at a time: the filter compares every pixel frame of a chunk with every other
            latents = raw["latents"][clip].float().unflatten(0, (chunks, t)).to(device)  # [chunks, t, C, h, w]
            h, w = latents.shape[-2:]
            depth = depth_head(latents.flatten(0, 1))
            token_depth.append(depth.token_depth.reshape(length, h, w).half().cpu())
            pixel_depth = depth.pixel_depth.unflatten(0, (chunks, t))[:, owner.to(device)]  # [chunks, T, H, W]
            rgb = ((_chunks(clips.rgb[clip : clip + 1], chunks).permute(0, 1, 3, 4, 2) + 1) * 127.5).round()
            rgb = rgb.clamp(0, 255).to(torch.uint8).to(device)
            clip_poses = poses[clip * chunks : (clip + 1) * chunks].to(device)
            mask = token_filter(rgb, pixel_depth, clip_poses, clips.intrinsics, latent_size=(h, w))
            keep.append(mask[:, pick.to(device)].reshape(length, h, w).cpu())
        write_shard(
            {
                "latents": raw["latents"],
                "token_depth": torch.stack(token_depth),
                "keep": torch.stack(keep),
                "cam_to_world": raw["cam_to_world"],
                "intrinsics": raw["intrinsics"],
            },
            path,
        )
    return folder
