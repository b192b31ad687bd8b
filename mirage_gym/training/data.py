"""Ground-truth training data rendered on the fly from procedural rooms.

Every sample comes from the CPU renderer (:mod:`mirage_gym.world`), never from
disk: rooms are drawn from the configured training seed range (room seeds at or
above :data:`~mirage_gym.training.config.EVAL_ROOM_SEED_OFFSET` are held out for
evaluation). A small pool of rooms is kept and one room of the pool is replaced
every few draws, so the renderer's per-scene set-up is amortised while the data
still covers thousands of rooms over a run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mirage_gym.geometry import intrinsics_from_fov, position_yaw_pitch_from_pose, pose_from_position_yaw_pitch, scale_intrinsics
from mirage_gym.world import Renderer, make_scene, trajectories

__all__ = ["Frames", "RoomStream"]

# Seconds between consecutive frames of a clip (moving objects move with time).
FRAME_DT = 0.125


@dataclass
class Frames:
    """A batch of ground-truth frames ``[B, T, ...]``."""

    rgb: Tensor  # [B, T, 3, H, W] float in [-1, 1]
    depth: Tensor  # [B, T, H, W] metres
    token_depth: Tensor  # [B, T, h, w] metres, rendered exactly at latent cell centres
    dynamic: Tensor  # [B, T, H, W] bool, pixels of moving objects
    cam_to_world: Tensor  # [B, T, 4, 4]
    intrinsics: Tensor  # [3, 3] camera of the H x W frames

    def to(self, device: torch.device | str) -> "Frames":
        return Frames(**{k: v.to(device) for k, v in self.__dict__.items()})


class RoomStream:
    """Endless ground-truth frames and clips from a rotating pool of training rooms.

    Args:
        resolution: frames are ``resolution x resolution``.
        fov_deg: horizontal field of view.
        latent_factor: pixels per latent cell (the VAE's spatial factor).
        room_seeds: ``(low, high)`` range of room seeds to draw from.
        pool_size: rooms kept at once.
        moving_objects_prob: chance that a new room gets moving objects.
        seed: seeds everything this stream draws.
    """

    def __init__(
        self,
        *,
        resolution: int,
        fov_deg: float,
        latent_factor: int,
        room_seeds: tuple[int, int],
        pool_size: int = 32,
        moving_objects_prob: float = 0.3,
        seed: int = 0,
        refresh_every: int = 16,
    ) -> None:
        if resolution % latent_factor:
            raise ValueError(f"resolution {resolution} is not a multiple of latent_factor {latent_factor}")
        self.resolution = resolution
        self.latent_size = resolution // latent_factor
        self.intrinsics = intrinsics_from_fov(fov_deg, resolution, resolution)
        self.latent_intrinsics = scale_intrinsics(self.intrinsics, 1.0 / latent_factor)
        self.room_seeds = room_seeds
        self.moving_objects_prob = moving_objects_prob
        self.refresh_every = refresh_every
        self.rng = np.random.default_rng(seed)
        self._draws = 0
        self.pool = [self._new_room() for _ in range(pool_size)]

    @classmethod
    def for_training(cls, config: dict, latent_factor: int, seed: int) -> "RoomStream":
        """The stream of a model config's training rooms (its ``data`` section)."""
        data = config.get("data", {})
        return cls(
            resolution=config["resolution"], fov_deg=config["fov_deg"], latent_factor=latent_factor,
            room_seeds=tuple(data.get("train_room_seeds", (0, 100_000))), pool_size=data.get("rooms_in_pool", 32),
            moving_objects_prob=data.get("moving_objects_prob", 0.3), seed=seed,
        )

    def _new_room(self) -> tuple:
        room_seed = int(self.rng.integers(*self.room_seeds))
        moving = int(self.rng.integers(1, 3)) if self.rng.random() < self.moving_objects_prob else 0
        scene = make_scene(room_seed, moving_objects=moving)
        return scene, Renderer(scene)

    def _room(self) -> tuple:
        self._draws += 1
        if self._draws % self.refresh_every == 0:
            self.pool[int(self.rng.integers(len(self.pool)))] = self._new_room()
        return self.pool[int(self.rng.integers(len(self.pool)))]

    def _render(self, renderer: Renderer, poses: Tensor, times: Tensor) -> tuple[Tensor, ...]:
        r = self.resolution
        out = renderer.render(poses, self.intrinsics, r, r, time=times)
        tok = renderer.render(poses, self.latent_intrinsics, self.latent_size, self.latent_size, time=times)
        rgb = out.rgb.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return rgb, out.depth, tok.depth, out.dynamic

    def frames(self, batch: int, per_room: int = 4) -> Frames:
        """``batch`` single frames (``T = 1``) at random free poses with random pitch and eye height.

        Frames come ``per_room`` at a time from the same room, so each render call is batched.
        """
        items = []
        while len(items) < batch:
            scene, renderer = self._room()
            n = min(per_room, batch - len(items))
            poses = torch.stack([torch.as_tensor(scene.sample_pose(self.rng)) for _ in range(n)]).float()
            position, yaw, _ = position_yaw_pitch_from_pose(poses)
            # Vary pitch and eye height a little so the autoencoder sees floors, ceilings and furniture tops.
            pitch = torch.as_tensor(self.rng.uniform(-0.5, 0.5, n), dtype=torch.float32)
            position = position.clone()
            position[:, 2] += torch.as_tensor(self.rng.uniform(-0.2, 0.2, n), dtype=torch.float32)
            poses = pose_from_position_yaw_pitch(position, yaw, pitch)
            times = torch.as_tensor(self.rng.uniform(0.0, 20.0, n), dtype=torch.float32)
            rendered = self._render(renderer, poses, times)
            items += [(tuple(x[i : i + 1] for x in rendered), poses[i : i + 1]) for i in range(n)]
        return self._stack(items)

    def clips(self, batch: int, num_frames: int) -> Frames:
        """``batch`` trajectories of ``num_frames`` frames with revisits (look-around, walk-and-return, orbit, walks)."""
        kinds = (trajectories.random_walk, trajectories.look_around, trajectories.walk_and_return, trajectories.orbit)
        items = []
        for _ in range(batch):
            scene, renderer = self._room()
            kind = kinds[int(self.rng.integers(len(kinds)))]
            poses = torch.as_tensor(kind(scene, self.rng, num_frames)).float()
            times = float(self.rng.uniform(0.0, 20.0)) + FRAME_DT * torch.arange(num_frames, dtype=torch.float32)
            items.append((self._render(renderer, poses, times), poses))
        return self._stack(items)

    def _stack(self, items: list) -> Frames:
        rgb, depth, token_depth, dynamic = (torch.stack([it[0][k] for it in items]) for k in range(4))
        poses = torch.stack([it[1] for it in items])
        return Frames(rgb, depth, token_depth, dynamic, poses, self.intrinsics)
