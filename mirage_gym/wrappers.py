"""Observation wrappers for agents whose networks want 3-D uint8 images (stable-baselines3 and the like).

The environments return a chunk of frames, float depth, poses and intrinsics. SB3's CNN
policies take ``uint8`` images ``[H, W, C]`` (channel-last; SB3 transposes them itself) and
flat vectors. :class:`ImageObservation` turns one into the other:

* ``"image"``: ``Box(0, 255, (H, W, C), uint8)``, the last ``frames`` frames of the chunk
  stacked along the channels (frame stacking), each as RGB plus, with ``depth=True``, its depth
  quantised to uint8 (``255 * depth / depth_range``, clipped), so ``C = frames * (3 + depth)``;
* ``"goal"`` (``MirageRoomNav-v0``): passed through as float32.

Use :class:`SB3ObservationWrapper` around a single env, or give an :class:`ImageObservation`
to :class:`mirage_gym.sb3.MirageVecEnv` for the batched vector env.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["ImageObservation", "SB3ObservationWrapper"]

PASS_THROUGH = ("goal",)


class ImageObservation:
    """The transform from a Mirage observation to ``{"image": uint8 [H, W, C], ...}``; works on batches.

    Args:
        observation_space: the single env's ``Dict`` observation space.
        frames: how many of the chunk's last frames to stack (1 to ``chunk``).
        depth: add each frame's depth as a uint8 channel.
        depth_range: metres mapped to 255 (default 8 m: rooms are a few metres across).
    """

    def __init__(self, observation_space: spaces.Dict, frames: int = 1, depth: bool = True,
                 depth_range: float = 8.0) -> None:
        if not isinstance(observation_space, spaces.Dict) or "rgb" not in observation_space.spaces:
            raise ValueError("ImageObservation needs a Mirage Dict observation space with 'rgb' and 'depth'")
        chunk, height, width, _ = observation_space["rgb"].shape
        if not 1 <= int(frames) <= chunk:
            raise ValueError(f"frames must be in 1..{chunk} (the chunk), got {frames}")
        if not depth_range > 0:
            raise ValueError(f"depth_range must be positive, got {depth_range}")
        self.frames = int(frames)
        self.depth = bool(depth)
        self.depth_range = float(depth_range)
        channels = self.frames * (3 + int(self.depth))
        self.observation_space = spaces.Dict({
            "image": spaces.Box(0, 255, (height, width, channels), np.uint8),
            **{key: observation_space[key] for key in PASS_THROUGH if key in observation_space.spaces},
        })

    def __call__(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Transform one observation or a batch (leading dimensions are kept)."""
        rgb = obs["rgb"][..., -self.frames :, :, :, :]  # [..., k, H, W, 3]
        parts = [rgb]
        if self.depth:
            scaled = np.clip(obs["depth"][..., -self.frames :, :, :, :] * (255.0 / self.depth_range), 0.0, 255.0)
            parts.append(np.rint(scaled).astype(np.uint8))
        stacked = np.concatenate(parts, axis=-1)  # [..., k, H, W, 3 (+1)]
        image = np.moveaxis(stacked, -4, -2)  # [..., H, W, k, c]
        out = {"image": np.ascontiguousarray(image.reshape(*image.shape[:-2], -1))}
        for key in PASS_THROUGH:
            if key in self.observation_space.spaces:
                out[key] = np.asarray(obs[key], dtype=np.float32).copy()
        return out


class SB3ObservationWrapper(gym.ObservationWrapper):
    """A single Mirage env with :class:`ImageObservation` observations (see the module docs)."""

    def __init__(self, env: gym.Env, frames: int = 1, depth: bool = True, depth_range: float = 8.0) -> None:
        super().__init__(env)
        self.transform = ImageObservation(env.observation_space, frames, depth, depth_range)
        self.observation_space = self.transform.observation_space

    def observation(self, observation: dict[str, Any]) -> dict[str, np.ndarray]:
        return self.transform(observation)
