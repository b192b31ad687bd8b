"""Collision-free camera trajectories through a scene, for data and for consistency tests.

Every function returns ``cam_to_world`` ``[T, 4, 4]`` float32 (torch, CPU). Positions are at
the scene's camera height; consecutive positions are joined by straight moves that
:meth:`Scene.move` accepts without collision. ``look_around`` and ``walk_and_return`` revisit
earlier poses *exactly* (bit-identical matrices), which the revisit-consistency metrics need.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from mirage_gym import geometry
from mirage_gym.world.scene import Scene

__all__ = ["random_walk", "look_around", "walk_and_return", "orbit"]

RADIUS = 0.2  # the camera sphere of the envs


def _poses(positions: np.ndarray, yaw: np.ndarray, pitch: np.ndarray | None = None) -> Tensor:
    pitch = np.zeros_like(yaw) if pitch is None else pitch
    return geometry.pose_from_position_yaw_pitch(
        torch.as_tensor(positions, dtype=torch.float32),
        torch.as_tensor(yaw, dtype=torch.float32),
        torch.as_tensor(pitch, dtype=torch.float32),
    )


def _check_frames(num_frames: int, minimum: int) -> None:
    if int(num_frames) < minimum:
        raise ValueError(f"num_frames must be >= {minimum}, got {num_frames}")


def _path_free(scene: Scene, points: np.ndarray, radius: float = RADIUS) -> bool:
    """Whether the polyline through ``points`` ``[T, 3]`` is free, checked every 2 cm."""
    if len(points) == 1:
        return bool(scene.is_free(points, radius)[0])
    seg = np.diff(points, axis=0)
    steps = max(2, int(np.ceil(np.linalg.norm(seg, axis=1).max() / 0.02)) + 1)
    frac = np.linspace(0.0, 1.0, steps)
    dense = points[:-1, None] + frac[None, :, None] * seg[:, None]
    return bool(scene.is_free(dense.reshape(-1, 3), radius).all())


def random_walk(
    scene: Scene, rng: np.random.Generator, num_frames: int, step: float = 0.1, turn_deg: float = 10.0
) -> Tensor:
    """Walk forward ``step`` metres a frame, turning by up to ``turn_deg`` degrees; turn away at obstacles."""
    _check_frames(num_frames, 1)
    if step < 0 or turn_deg < 0:
        raise ValueError(f"step and turn_deg must be >= 0, got {step} and {turn_deg}")
    _, yaw0, _ = geometry.position_yaw_pitch_from_pose(scene.sample_pose(rng, RADIUS))
    position = scene.sample_position(rng, RADIUS + 0.05).astype(np.float64)
    yaw = float(yaw0)
    positions, yaws = [position.copy()], [yaw]
    for _ in range(num_frames - 1):
        yaw += math.radians(rng.uniform(-turn_deg, turn_deg))
        target = position + step * np.array([math.cos(yaw), math.sin(yaw), 0.0])
        reached, collided = scene.move(position[None], target[None], RADIUS)
        if collided[0]:
            # Stay clear of the obstacle: keep the position and turn somewhere else.
            yaw += math.radians(rng.uniform(60.0, 180.0)) * (1 if rng.random() < 0.5 else -1)
        else:
            position = reached[0].astype(np.float64)
        positions.append(position.copy())
        yaws.append(yaw)
    return _poses(np.array(positions), np.array(yaws))


def look_around(scene: Scene, rng: np.random.Generator, num_frames: int) -> Tensor:
    """Turn 360 degrees in place; the last frame is exactly the first pose."""
    _check_frames(num_frames, 2)
    start = scene.sample_pose(rng, RADIUS)
    position, yaw0, _ = geometry.position_yaw_pitch_from_pose(start)
    direction = 1.0 if rng.random() < 0.5 else -1.0
    yaws = float(yaw0) + direction * 2 * math.pi * np.arange(num_frames) / (num_frames - 1)
    poses = _poses(np.repeat(position.numpy()[None], num_frames, 0), yaws)
    poses[0] = start
    poses[-1] = start
    return poses


def walk_and_return(scene: Scene, rng: np.random.Generator, num_frames: int, step: float = 0.08) -> Tensor:
    """Walk straight out, turn at least 90 degrees away and back, then retrace the exact outbound poses.

    Frames: ``A`` outbound poses, ``B`` turning poses at the far end, then the ``A`` outbound
    poses in reverse order (bit-identical), so everything seen before the turn is seen again.
    """
    _check_frames(num_frames, 4)
    out_frames = num_frames // 3
    turn_frames = num_frames - 2 * out_frames
    best = None
    for _ in range(64):
        start = scene.sample_position(rng, RADIUS + 0.05).astype(np.float64)
        yaw = rng.uniform(-math.pi, math.pi)
        heading = np.array([math.cos(yaw), math.sin(yaw), 0.0])
        want = step * max(out_frames - 1, 0)
        reached, _ = scene.move(start[None], (start + (want + 0.1) * heading)[None], RADIUS + 0.05)
        length = max(0.0, min(want, float(np.linalg.norm(reached[0] - start)) - 0.1))
        if best is None or length > best[2]:
            best = (start, yaw, length)
        if length >= want:
            break
    start, yaw, length = best
    heading = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    frac = np.linspace(0.0, 1.0, out_frames) if out_frames > 1 else np.zeros(1)
    out_pos = start[None] + frac[:, None] * length * heading[None]
    outbound = _poses(out_pos, np.full(out_frames, yaw))
    turn = math.radians(rng.uniform(120.0, 180.0)) * (1 if rng.random() < 0.5 else -1)
    k = np.arange(1, turn_frames + 1)
    turn_yaw = yaw + turn * np.sin(np.pi * k / (turn_frames + 1))
    turning = _poses(np.repeat(out_pos[-1:], turn_frames, 0), turn_yaw)
    return torch.cat([outbound, turning, outbound.flip(0)], dim=0)


def orbit(scene: Scene, rng: np.random.Generator, num_frames: int) -> Tensor:
    """Circle a point of interest (a piece of furniture or a room centre), always looking at it.

    A full circle when one fits in free space, otherwise the widest free arc found.
    """
    _check_frames(num_frames, 2)
    targets = _points_of_interest(scene)
    best = None
    for attempt in range(400):
        target = targets[rng.integers(len(targets))]
        radius = rng.uniform(1.0, 2.2)
        span = 2 * math.pi if attempt < 200 else math.pi * rng.uniform(0.25, 1.0)
        start = rng.uniform(-math.pi, math.pi)
        angles = start + span * np.arange(num_frames) / max(num_frames - 1, 1)
        pos = np.stack(
            [
                target[0] + radius * np.cos(angles),
                target[1] + radius * np.sin(angles),
                np.full(num_frames, scene.camera_height),
            ],
            axis=1,
        )
        if _path_free(scene, pos):
            best = (target, pos)
            break
    if best is None:
        raise RuntimeError(f"no free orbit found in scene {scene.seed}")
    target, pos = best
    delta = target[None] - pos
    yaw = np.arctan2(delta[:, 1], delta[:, 0])
    pitch = np.arctan2(delta[:, 2], np.linalg.norm(delta[:, :2], axis=1))
    return _poses(pos, yaw, pitch)


def _points_of_interest(scene: Scene) -> np.ndarray:
    """Tops of furniture (static solids lower than the ceiling) and room centres at table height."""
    lo, hi = scene.solid_lo, scene.solid_hi
    size = hi - lo
    furniture = (size[:, 2] < scene.ceiling_height - 1e-3) & (size[:, :2].min(1) > scene.wall_thickness + 1e-3)
    tops = np.concatenate([(lo[furniture, :2] + hi[furniture, :2]) / 2, hi[furniture, 2:3]], axis=1)
    centres = np.concatenate([scene.lights[:, :2], np.full((scene.num_rooms, 1), 0.8, np.float32)], axis=1)
    return np.concatenate([tops, centres], axis=0).astype(np.float64)
