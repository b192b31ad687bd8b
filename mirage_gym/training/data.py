"""Ground-truth training data rendered on the fly from procedural rooms.

Every sample comes from the CPU renderer (:mod:`mirage_gym.world`), never from
disk: rooms are drawn from the configured training seed range (room seeds at or
above :data:`~mirage_gym.config.EVAL_ROOM_SEED_OFFSET` are held out for
evaluation). A small pool of rooms is kept and one room of the pool is replaced
every few draws, so the renderer's per-scene set-up is amortised while the data
still covers thousands of rooms over a run.

:class:`RoomStream` is a stream (what it draws depends on all it drew before): for data
made once (clips, frame caches, evaluation). :class:`StepRooms` gives a training step's
frames as a function of ``(seed, step)`` alone, so a resumed run draws what an
uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mirage_gym.config import Config
from mirage_gym.geometry import intrinsics_from_fov, position_yaw_pitch_from_pose, pose_from_position_yaw_pitch, scale_intrinsics
from mirage_gym.world import Renderer, make_scene, trajectories

__all__ = ["Frames", "RoomStream", "StepRooms"]

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
        refresh_every: one room of the pool is replaced every this many rooms drawn (0: never).
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
        self.pool = [self._new_room(self.rng) for _ in range(pool_size)]

    @classmethod
    def for_training(cls, config: Config, latent_factor: int, seed: int, pool_size: int | None = None) -> "RoomStream":
        """The stream of a config's training rooms (``training.data``)."""
        data = config.training.data
        return cls(
            resolution=config.model.resolution, fov_deg=config.model.fov_deg, latent_factor=latent_factor,
            room_seeds=data.train_room_seeds, pool_size=data.rooms_in_pool if pool_size is None else pool_size,
            moving_objects_prob=data.moving_objects_prob, seed=seed,
        )

    def _new_room(self, rng: np.random.Generator) -> tuple:
        room_seed = int(rng.integers(*self.room_seeds))
        moving = int(rng.integers(1, 3)) if rng.random() < self.moving_objects_prob else 0
        scene = make_scene(room_seed, moving_objects=moving)
        return scene, Renderer(scene)

    def _room(self, rng: np.random.Generator) -> tuple:
        self._draws += 1
        if self.refresh_every and self._draws % self.refresh_every == 0:
            self.pool[int(rng.integers(len(self.pool)))] = self._new_room(rng)
        return self.pool[int(rng.integers(len(self.pool)))]

    def _render(self, renderer: Renderer, poses: Tensor, times: Tensor) -> tuple[Tensor, ...]:
        r = self.resolution
        out = renderer.render(poses, self.intrinsics, r, r, time=times)
        tok = renderer.render(poses, self.latent_intrinsics, self.latent_size, self.latent_size, time=times)
        rgb = out.rgb.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return rgb, out.depth, tok.depth, out.dynamic

    def frames(self, batch: int, per_room: int = 4, rng: np.random.Generator | None = None) -> Frames:
        """``batch`` single frames (``T = 1``) at random free poses with random pitch and eye height.

        Frames come ``per_room`` at a time from the same room, so each render call is batched.
        ``rng`` draws them instead of the stream's own generator.
        """
        rng = self.rng if rng is None else rng
        items = []
        while len(items) < batch:
            scene, renderer = self._room(rng)
            n = min(per_room, batch - len(items))
            poses = torch.stack([torch.as_tensor(scene.sample_pose(rng)) for _ in range(n)]).float()
            position, yaw, _ = position_yaw_pitch_from_pose(poses)
            # Vary pitch and eye height a little so the autoencoder sees floors, ceilings and furniture tops.
            pitch = torch.as_tensor(rng.uniform(-0.5, 0.5, n), dtype=torch.float32)
            position = position.clone()
            position[:, 2] += torch.as_tensor(rng.uniform(-0.2, 0.2, n), dtype=torch.float32)
            poses = pose_from_position_yaw_pitch(position, yaw, pitch)
            times = torch.as_tensor(rng.uniform(0.0, 20.0, n), dtype=torch.float32)
            rendered = self._render(renderer, poses, times)
            items += [(tuple(x[i : i + 1] for x in rendered), poses[i : i + 1]) for i in range(n)]
        return self._stack(items)

    def clips(self, batch: int, num_frames: int) -> Frames:
        """``batch`` trajectories of ``num_frames`` frames with revisits (look-around, walk-and-return, orbit, walks)."""
        kinds = (trajectories.random_walk, trajectories.look_around, trajectories.walk_and_return, trajectories.orbit)
        items = []
        for _ in range(batch):
            scene, renderer = self._room(self.rng)
            kind = kinds[int(self.rng.integers(len(kinds)))]
            poses = torch.as_tensor(kind(scene, self.rng, num_frames)).float()
            times = float(self.rng.uniform(0.0, 20.0)) + FRAME_DT * torch.arange(num_frames, dtype=torch.float32)
            items.append((self._render(renderer, poses, times), poses))
        return self._stack(items)

    def _stack(self, items: list) -> Frames:
        rgb, depth, token_depth, dynamic = (torch.stack([it[0][k] for it in items]) for k in range(4))
        poses = torch.stack([it[1] for it in items])
        return Frames(rgb, depth, token_depth, dynamic, poses, self.intrinsics)


class StepRooms:
    """A training run's frames, step by step: the frames of step ``s`` depend on ``(seed, s)`` alone.

    The pool of ``training.data.rooms_in_pool`` houses is itself a function of the step: every
    ``steps_per_refresh`` steps one slot (in turn) gets a new house, seeded by the run's seed,
    the slot and the refresh, at the rate :class:`RoomStream` replaces them (one house every 16
    drawn). A run resumed at step ``s`` rebuilds the pool of step ``s`` and goes on as if never stopped.
    """

    def __init__(self, config: Config, latent_factor: int, seed: int, batch_size: int, per_room: int = 4) -> None:
        self.stream = RoomStream.for_training(config, latent_factor, seed, pool_size=0)
        self.stream.refresh_every = 0  # the pool follows the step instead
        self.pool_size = config.training.data.rooms_in_pool
        self.seed, self.per_room = seed, per_room
        self.steps_per_refresh = max(1, 16 // -(-batch_size // per_room))
        self._houses: dict[tuple[int, int], tuple] = {}

    def _pool_at(self, step: int) -> list[tuple]:
        refreshes, p = step // self.steps_per_refresh, self.pool_size
        # Slot j was last refreshed at refresh r <= refreshes with r = j (mod p), r >= 1; 0: never.
        keys = [(j, r if (r := refreshes - (refreshes - j) % p) >= 1 else 0) for j in range(p)]
        self._houses = {k: self._houses.get(k) or self.stream._new_room(np.random.default_rng([self.seed, *k]))
                        for k in keys}
        return [self._houses[k] for k in keys]

    def frames(self, step: int, batch: int, rng: torch.Generator) -> Frames:
        """``batch`` frames of step ``step``, drawn with ``rng`` from the houses live at that step."""
        self.stream.pool = self._pool_at(step)
        draw = np.random.default_rng(int(torch.randint(2**62, (1,), generator=rng)))
        return self.stream.frames(batch, self.per_room, rng=draw)
