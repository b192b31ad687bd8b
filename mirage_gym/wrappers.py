"""Observation wrappers for agents whose networks want 3-D uint8 images (stable-baselines3 and the like).

The environments return a chunk of frames, float depth, poses and intrinsics. SB3's CNN
policies take ``uint8`` images ``[H, W, C]`` (channel-last; SB3 transposes them itself) and
flat vectors. :class:`ImageObservation` turns one into the other:

* ``"image"``: ``Box(0, 255, (H, W, C), uint8)``, the last ``frames`` frames of the chunk
  stacked along the channels (frame stacking), each as RGB plus, with ``depth=True``, its depth
  quantised to uint8 (``255 * depth / depth_range``, clipped), so ``C = frames * (3 + depth)``;
* ``"goal"`` (``MirageRoomNav-v0``): passed through as float32.

Use :class:`SB3ObservationWrapper` around a single env, or give an :class:`ImageObservation`
to :class:`mirage_gym.sb3.MirageVecEnv` for the batched vector env. :class:`ResizeFrames` gives a
policy smaller frames than the model generates.
"""

from __future__ import annotations

from typing import Any

import cv2
import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["ImageObservation", "ResizeFrames", "SB3ObservationWrapper", "resize_frames"]

PASS_THROUGH = ("goal",)


def resize_frames(observation: dict[str, Any], resolution: int) -> dict[str, Any]:
    """A Mirage observation (or a batch of them) with ``resolution x resolution`` frames.

    ``"rgb"`` by area averaging, ``"depth"`` by the nearest pixel (a depth belongs to one surface; a
    mean of a wall and the room behind it would be neither), ``"intrinsics"`` scaled to match; the
    other keys pass through.
    """
    rgb, depth = np.asarray(observation["rgb"]), np.asarray(observation["depth"])
    height, width = rgb.shape[-3:-1]
    size = (resolution, resolution)
    lead = rgb.shape[:-3]
    small_rgb = [cv2.resize(frame, size, interpolation=cv2.INTER_AREA) for frame in rgb.reshape(-1, height, width, 3)]
    small_depth = [cv2.resize(frame, size, interpolation=cv2.INTER_NEAREST_EXACT)
                   for frame in depth.reshape(-1, height, width)]
    intrinsics = np.array(observation["intrinsics"], np.float32, copy=True)
    intrinsics[..., 0, :] *= resolution / width  # fx, skew, cx: pixel coordinates scale with the frame
    intrinsics[..., 1, :] *= resolution / height
    return {**observation, "rgb": np.stack(small_rgb).reshape(*lead, resolution, resolution, 3),
            "depth": np.stack(small_depth).astype(np.float32).reshape(*lead, resolution, resolution, 1),
            "intrinsics": intrinsics}


def _check_size(name: str, value: Any, height: int, width: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= min(height, width):
        raise ValueError(f"{name} must be an int in [1, {min(height, width)}] (the env's frames are "
                         f"{height}x{width}; only downsizing), got {value!r}")


class ImageObservation:
    """The transform from a Mirage observation to ``{"image": uint8 [H, W, C], ...}``; works on batches.

    Args:
        observation_space: the single env's ``Dict`` observation space.
        frames: how many of the chunk's last frames to stack (1 to ``chunk``).
        depth: add each frame's depth as a uint8 channel.
        depth_range: metres mapped to 255 (default 8 m: rooms are a few metres across).
        size: the image's side in pixels, the env's frames resized (:func:`resize_frames`); ``None``:
            the env's frame size.
    """

    def __init__(self, observation_space: spaces.Dict, frames: int = 1, depth: bool = True,
                 depth_range: float = 8.0, size: int | None = None) -> None:
        if not isinstance(observation_space, spaces.Dict) or "rgb" not in observation_space.spaces:
            raise ValueError("ImageObservation needs a Mirage Dict observation space with 'rgb' and 'depth'")
        chunk, height, width, _ = observation_space["rgb"].shape
        if not 1 <= int(frames) <= chunk:
            raise ValueError(f"frames must be in 1..{chunk} (the chunk), got {frames}")
        if not depth_range > 0:
            raise ValueError(f"depth_range must be positive, got {depth_range}")
        if size is not None:
            _check_size("size", size, height, width)
        self.size = None if size is None or size == height == width else size  # None: frames as they come
        if self.size is not None:
            height = width = self.size
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
        if self.size is not None:
            obs = resize_frames(obs, self.size)
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


class ResizeFrames(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """A Mirage env whose frames are ``resolution x resolution``: a model runs at the size it generates
    best, a policy gets the smaller frames it was built for.

    Frames as :func:`resize_frames` makes them (RGB by area, depth by the nearest pixel, intrinsics
    scaled); only downsizing is offered. The batched env's SB3 adapter takes the same through
    :class:`ImageObservation`'s ``size``.

    The shipped default model was trained at 128x128: made to generate at 64x64 its depth on held-out
    start views is 0.61 abs-rel, against 0.18 at 128x128 (textures at half the pixels look farther).
    So ``ResizeFrames(gym.make("MirageRoom-v0"), 64)`` gives 64x64 observations with the model's depth.
    """

    def __init__(self, env: gym.Env, resolution: int) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, resolution=resolution)
        gym.ObservationWrapper.__init__(self, env)
        space = env.observation_space
        if not isinstance(space, spaces.Dict) or not {"rgb", "depth", "intrinsics"} <= set(space.spaces):
            raise ValueError(f"ResizeFrames wraps a Mirage env (obs 'rgb', 'depth', 'intrinsics'), got {space}")
        chunk, height, width, _ = space["rgb"].shape
        _check_size("resolution", resolution, height, width)
        self.resolution = resolution
        depth = space["depth"]
        self.observation_space = spaces.Dict({
            **space.spaces,
            "rgb": spaces.Box(0, 255, (chunk, resolution, resolution, 3), np.uint8),
            "depth": spaces.Box(float(np.min(depth.low)), float(np.max(depth.high)), (chunk, resolution, resolution, 1),
                                np.float32),
            "intrinsics": spaces.Box(0.0, 100.0 * resolution, (3, 3), np.float32),
        })

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        return resize_frames(observation, self.resolution)
