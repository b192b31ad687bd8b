"""The batched core shared by the single and the vector environments.

:class:`MirageSimulator` runs ``N`` sub-environments with one generator: every ``step`` is
one generator call for all of them (one transformer forward per denoising step), while each
sub-environment keeps its own ground-truth room, pose, clock, random streams and task state.
A single environment is the case ``N = 1``, so a sub-environment of the vector env and a
single env seeded alike see the same observations.

The ground-truth :class:`~mirage_gym.world.Scene` of a sub-environment is used only for
collisions, the coverage and navigation rewards, goals, start images and the optional
ground-truth render panel; observations come from the generator (or, in oracle mode, from
:class:`~mirage_gym.envs.oracle.OracleGenerator`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from mirage_gym import geometry
from mirage_gym.envs.actions import ACTION_TYPES, single_action_space
from mirage_gym.envs.generators import GeneratorSpec, check_generator_geometry, load_generator
from mirage_gym.envs.oracle import OracleGenerator
from mirage_gym.envs.tasks import COVERAGE_RESOLUTION, Task
from mirage_gym.envs.worlds import World, get_world
from mirage_gym.video import colorize_depth, side_by_side

__all__ = ["MirageSimulator", "RENDER_LAYOUTS", "ROOM_SEED_RANGE"]

RENDER_LAYOUTS = ("frame", "grid")
ROOM_SEED_RANGE = 2**31 - 1  # room seeds are drawn from [0, ROOM_SEED_RANGE) unless room_seeds is given
BASE_OPTIONS = frozenset({"room_seed", "start_image", "start_pose"})


@dataclass
class _SubEnv:
    """The state of one sub-environment's episode."""

    world: World
    pose: Tensor  # [4, 4] cam_to_world after the last step
    noise: torch.Generator  # generation noise, seeded from the sub-env's np_random at reset
    covered: np.ndarray  # [gh, gw] bool: navigable cells seen this episode
    navigable: int  # number of navigable cells
    task_state: Any
    rgb: np.ndarray  # [H, W, 3] last frame (for render)
    depth: np.ndarray  # [H, W] its depth
    time: float = 0.0  # seconds since the start (moving objects)
    frames: int = 0  # frames generated this episode

    @property
    def coverage(self) -> float:
        return float(self.covered.sum()) / max(self.navigable, 1)


def _positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float, np.number)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


class MirageSimulator:
    """``N`` sub-environments sharing one generator. See the environment classes for the keywords."""

    def __init__(
        self,
        num_envs: int,
        task: Task,
        *,
        generator: GeneratorSpec = "default",
        memory: str = "latent",
        resolution: int = 128,
        chunk: int = 4,
        fov: float = 90.0,
        num_inference_steps: int | None = None,
        room_seeds: Sequence[int] | None = None,
        num_rooms: int | None = None,
        moving_objects: int = 0,
        action_type: str = "continuous",
        max_translation: float = 0.25,
        max_rotation: float = 15.0,
        max_pitch: float = 60.0,
        frame_time: float = 0.25,
        camera_radius: float = 0.2,
        max_depth: float = 20.0,
        report_step_time: bool = False,
        device: torch.device | str = "cpu",
    ) -> None:
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if int(resolution) < 8 or int(resolution) != resolution:
            raise ValueError(f"resolution must be an integer >= 8, got {resolution}")
        if int(chunk) < 1 or int(chunk) != chunk:
            raise ValueError(f"chunk must be an integer >= 1, got {chunk}")
        if not 0 < fov < 180:
            raise ValueError(f"fov must be in (0, 180) degrees, got {fov}")
        if action_type not in ACTION_TYPES:
            raise ValueError(f"action_type must be one of {ACTION_TYPES}, got {action_type!r}")
        if not 0 < max_pitch < 90:
            raise ValueError(f"max_pitch must be in (0, 90) degrees, got {max_pitch}")
        if num_rooms is not None and not 1 <= int(num_rooms) <= 9:
            raise ValueError(f"num_rooms must be in 1..9, got {num_rooms}")
        if int(moving_objects) < 0:
            raise ValueError(f"moving_objects must be >= 0, got {moving_objects}")
        if room_seeds is not None:
            room_seeds = [int(s) for s in room_seeds]
            if not room_seeds or any(s < 0 for s in room_seeds):
                raise ValueError(f"room_seeds must be a non-empty list of seeds >= 0, got {room_seeds}")
        self.num_envs = int(num_envs)
        self.task = task
        self.resolution = int(resolution)
        self.chunk = int(chunk)
        self.fov = float(fov)
        self.room_seeds = room_seeds
        self.num_rooms = None if num_rooms is None else int(num_rooms)
        self.moving_objects = int(moving_objects)
        self.action_type = action_type
        self.max_translation = _positive("max_translation", max_translation)
        self.max_rotation = _positive("max_rotation", max_rotation)
        self.max_pitch = float(max_pitch)
        self.frame_time = _positive("frame_time", frame_time)
        self.camera_radius = _positive("camera_radius", camera_radius)
        self.report_step_time = bool(report_step_time)
        self.generator = load_generator(
            generator, memory=memory, num_inference_steps=num_inference_steps, device=device,
            frame_time=self.frame_time, max_depth=_positive("max_depth", max_depth),
        )
        check_generator_geometry(self.generator, self.resolution, self.chunk)
        self.oracle = isinstance(self.generator, OracleGenerator)
        self.max_depth = self.generator.max_depth if self.oracle else float(self.generator.depth_head.config.max_depth)
        self.intrinsics = geometry.intrinsics_from_fov(self.fov, self.resolution, self.resolution)
        self.coverage_intrinsics = geometry.intrinsics_from_fov(self.fov, COVERAGE_RESOLUTION, COVERAGE_RESOLUTION)
        self.option_keys = BASE_OPTIONS | task.option_keys

        t, r = self.chunk, self.resolution
        self.observation_space = spaces.Dict({
            "rgb": spaces.Box(0, 255, (t, r, r, 3), np.uint8),
            "depth": spaces.Box(0.0, self.max_depth, (t, r, r, 1), np.float32),
            # Poses are rigid: rotation entries in [-1, 1], positions inside a house (tens of metres).
            "cam_to_world": spaces.Box(-100.0, 100.0, (t, 4, 4), np.float32),
            "intrinsics": spaces.Box(0.0, 100.0 * r, (3, 3), np.float32),
            **task.observation_spaces(),
        })
        self.action_space = single_action_space(action_type)
        self._subenvs: list[_SubEnv | None] = [None] * self.num_envs

    # ------------------------------------------------------------------ options

    def check_options(self, options: dict[str, Any] | None, batch: int | None = None) -> dict[str, Any]:
        """Validate reset options without touching any state (``batch``: per-sub-env values allowed)."""
        options = {} if options is None else options
        if not isinstance(options, dict):
            raise ValueError(f"options must be a dict, got {type(options).__name__}")
        unknown = set(options) - self.option_keys
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}; known options: {sorted(self.option_keys)}")
        for k in range(1 if batch is None else batch):
            self._option_values(options, k, batch)
        return options

    def _option_values(self, options: dict[str, Any], k: int, batch: int | None) -> dict[str, Any]:
        """The options of the ``k``-th reset sub-env, validated; per-sub-env values are picked by ``k``."""
        out: dict[str, Any] = {}
        r = self.resolution
        if "room_seed" in options:
            seed = options["room_seed"]
            if batch is not None and isinstance(seed, (Sequence, np.ndarray)) and not isinstance(seed, str):
                if len(seed) != batch:
                    raise ValueError(f"options['room_seed'] needs one seed per reset sub-env ({batch}), got {len(seed)}")
                seed = seed[k]
            if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
                raise ValueError(f"options['room_seed'] must be an integer >= 0, got {seed!r}")
            out["room_seed"] = int(seed)
        if "start_image" in options:
            image = options["start_image"]
            if isinstance(image, Tensor):
                image = image.cpu().numpy()
            if not isinstance(image, np.ndarray):
                raise ValueError(f"options['start_image'] must be a uint8 numpy array [{r}, {r}, 3], got "
                                 f"{type(image).__name__}")
            if batch is not None and image.ndim == 4:
                if image.shape[0] != batch:
                    raise ValueError(f"options['start_image'] needs one image per reset sub-env ({batch}), got "
                                     f"{image.shape[0]}")
                image = image[k]
            if image.dtype != np.uint8 or image.shape != (r, r, 3):
                raise ValueError(f"options['start_image'] must be uint8 [{r}, {r}, 3] (the env's resolution), got "
                                 f"{image.dtype} {list(image.shape)}")
            out["start_image"] = torch.from_numpy(np.ascontiguousarray(image))
        if "start_pose" in options:
            pose = np.asarray(options["start_pose"], dtype=np.float64)
            if batch is not None and pose.ndim == 3:
                if pose.shape[0] != batch:
                    raise ValueError(f"options['start_pose'] needs one pose per reset sub-env ({batch})")
                pose = pose[k]
            out["start_pose"] = self._check_pose(pose)
        if "goal" in options:
            goal = np.asarray(options["goal"], dtype=np.float64)
            if batch is not None and goal.ndim == 2:
                if goal.shape[0] != batch:
                    raise ValueError(f"options['goal'] needs one goal per reset sub-env ({batch})")
                goal = goal[k]
            if goal.shape != (3,) or not np.isfinite(goal).all():
                raise ValueError(f"options['goal'] must be a finite world position [3], got shape {list(goal.shape)}")
            out["goal"] = goal
        return out

    def _check_pose(self, pose: np.ndarray) -> Tensor:
        if pose.shape != (4, 4) or not np.isfinite(pose).all():
            raise ValueError(f"options['start_pose'] must be a finite cam_to_world [4, 4], got shape {list(pose.shape)}")
        tensor = torch.from_numpy(pose).float()
        position, yaw, pitch = geometry.position_yaw_pitch_from_pose(tensor)
        rebuilt = geometry.pose_from_position_yaw_pitch(position, yaw, pitch)
        if not torch.allclose(rebuilt, tensor, atol=1e-4):
            raise ValueError("options['start_pose'] must be a rigid, roll-free cam_to_world (geometry convention)")
        if abs(math.degrees(float(pitch))) > self.max_pitch + 1e-3:
            raise ValueError(f"options['start_pose'] pitches {math.degrees(float(pitch)):.1f} deg, beyond "
                             f"max_pitch={self.max_pitch}")
        return rebuilt

    # ------------------------------------------------------------------ reset

    def _plan(self, rng: np.random.Generator, values: dict[str, Any]) -> tuple[_SubEnv, Tensor]:
        """Draw a sub-env's episode (room, start, goal, noise seed) without mutating anything."""
        if "room_seed" in values:
            seed = values["room_seed"]
        elif self.room_seeds is not None:
            seed = self.room_seeds[int(rng.integers(len(self.room_seeds)))]
        else:
            seed = int(rng.integers(ROOM_SEED_RANGE))
        world = get_world(seed, self.num_rooms, self.moving_objects)
        scene = world.scene
        if "start_pose" in values:
            pose = values["start_pose"]
            if not scene.is_free(pose[None, :3, 3], self.camera_radius)[0]:
                raise ValueError(f"options['start_pose'] puts the camera at {pose[:3, 3].tolist()}, which is not free "
                                 f"in room {seed} (inside or too close to an obstacle)")
        else:
            pose = scene.sample_pose(rng, self.camera_radius)
        task_state = self.task.plan(scene, pose[:3, 3].numpy(), rng, values)
        noise = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
        image = values.get("start_image")
        if image is None:
            image = world.renderer.render(pose[None], self.intrinsics, self.resolution, self.resolution).rgb[0]
        covered = self._seen(world, pose[None], torch.zeros(1))
        navigable = int(scene.navigable.sum())
        sub = _SubEnv(world=world, pose=pose, noise=noise, covered=covered, navigable=navigable,
                      task_state=task_state, rgb=np.empty(0), depth=np.empty(0))
        return sub, image

    def _seen(self, world: World, poses: Tensor, times: Tensor) -> np.ndarray:
        """Navigable cells seen from ``poses`` ``[T, 4, 4]``, with ground-truth depth at low resolution."""
        size = COVERAGE_RESOLUTION
        depth = world.renderer.render(poses, self.coverage_intrinsics, size, size, time=times).depth
        return world.scene.coverage(depth, poses, self.coverage_intrinsics)

    def reset(
        self, indices: Sequence[int], rngs: Sequence[np.random.Generator], options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
        """Start new episodes in sub-envs ``indices``; returns their observations (batched) and infos."""
        indices = [int(i) for i in indices]
        batch = len(indices)
        options = self.check_options(options, batch if self.num_envs > 1 else None)
        full = indices == list(range(self.num_envs))
        if not full and self.generator.batch_size != self.num_envs:
            raise RuntimeError("reset all sub-environments once before resetting some of them")
        plans = [self._plan(rng, self._option_values(options, k, batch if self.num_envs > 1 else None))
                 for k, rng in enumerate(rngs)]
        images = torch.stack([image for _, image in plans])
        poses = torch.stack([sub.pose for sub, _ in plans])
        extra = {"renderers": [sub.world.renderer for sub, _ in plans]} if self.oracle else {}
        started = time.perf_counter()
        out = self.generator.start(images, poses, self.intrinsics, scenes=None if full else indices, **extra)
        elapsed = time.perf_counter() - started
        rgb = out.rgb[:, 0].cpu().numpy()
        depth = self._clip_depth(out.depth[:, 0])
        for k, (i, (sub, _)) in enumerate(zip(indices, plans)):
            sub.rgb, sub.depth = rgb[k], depth[k]
            self._subenvs[i] = sub
        t = self.chunk
        obs = self._observation(
            indices,
            np.repeat(rgb[:, None], t, axis=1),
            np.repeat(depth[:, None], t, axis=1),
            poses[:, None].expand(-1, t, -1, -1),
        )
        infos = [self._info(i, collided=False, step_time=elapsed / batch, extra=self._reset_extra(i)) for i in indices]
        return obs, infos

    def _reset_extra(self, i: int) -> dict[str, Any]:
        state = self._subenvs[i].task_state
        if state is None:
            return {}
        return {"success": False, "distance_to_goal": float(state.distance)}

    # ------------------------------------------------------------------ step

    def step(self, motion: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Advance every sub-env by one chunk. ``motion`` ``[N, 4]`` is validated by the caller."""
        if any(sub is None for sub in self._subenvs):
            raise RuntimeError("call reset() before step()")
        subs: list[_SubEnv] = self._subenvs  # type: ignore[assignment]
        n, t = self.num_envs, self.chunk
        start = torch.stack([sub.pose for sub in subs])
        poses = geometry.integrate_action(
            start, torch.from_numpy(motion), t, max_translation=self.max_translation,
            max_rotation_deg=self.max_rotation, max_pitch_deg=self.max_pitch,
        )
        # Collisions: stop before obstacles, and spread the motion that was allowed over the chunk.
        frac = torch.arange(1, t + 1, dtype=torch.float32)[:, None] / t
        collided = np.zeros(n, bool)
        for i, sub in enumerate(subs):
            origin = start[i, :3, 3]
            end, blocked = self._allowed_end(sub.world.scene, origin, poses[i, -1, :3, 3])
            collided[i] = blocked
            poses[i, :, :3, 3] = origin + frac * (end - origin)

        started = time.perf_counter()
        out = self.generator.step(poses.to(self.generator.device), [sub.noise for sub in subs])
        elapsed = time.perf_counter() - started
        rgb = out.rgb.cpu().numpy()
        depth = self._clip_depth(out.depth)

        rewards = np.zeros(n, np.float32)
        terminated = np.zeros(n, bool)
        extras = []
        frame_times = torch.arange(1, t + 1, dtype=torch.float32) * self.frame_time
        for i, sub in enumerate(subs):
            seen = self._seen(sub.world, poses[i], sub.time + frame_times)
            new_cells = int((seen & ~sub.covered).sum())
            sub.covered |= seen
            position = poses[i, -1, :3, 3].numpy()
            reward, done, extra = self.task.reward(sub.world.scene, sub.task_state, position, collided[i], new_cells)
            rewards[i], terminated[i] = reward, done
            extras.append(extra)
            sub.pose = poses[i, -1].clone()
            sub.time += t * self.frame_time
            sub.frames += t
            sub.rgb, sub.depth = rgb[i, -1], depth[i, -1]
        obs = self._observation(list(range(n)), rgb, depth, poses)
        infos = [self._info(i, collided=bool(collided[i]), step_time=elapsed / n, extra=extras[i]) for i in range(n)]
        return obs, rewards, terminated, infos

    def _allowed_end(self, scene, origin: Tensor, target: Tensor) -> tuple[Tensor, bool]:
        """Where a move from ``origin`` towards ``target`` ends, and whether an obstacle stopped it."""
        reached, blocked = scene.move(origin[None], target[None], self.camera_radius)
        return reached[0], bool(blocked[0])

    # ------------------------------------------------------------------ outputs

    def _clip_depth(self, depth: Tensor) -> np.ndarray:
        return torch.nan_to_num(depth.float(), posinf=self.max_depth).clamp(0.0, self.max_depth).cpu().numpy()

    def _observation(self, indices: list[int], rgb: np.ndarray, depth: np.ndarray, poses: Tensor) -> dict[str, np.ndarray]:
        obs = {
            "rgb": np.ascontiguousarray(rgb, dtype=np.uint8),
            "depth": np.ascontiguousarray(depth[..., None], dtype=np.float32),
            "cam_to_world": poses.numpy().astype(np.float32),
            "intrinsics": np.repeat(self.intrinsics.numpy()[None], len(indices), axis=0),
        }
        last = obs["cam_to_world"][:, -1].astype(np.float64)
        extras = [self.task.observe(self._subenvs[i].task_state, last[k]) for k, i in enumerate(indices)]
        for key in self.task.observation_spaces():
            obs[key] = np.stack([e[key] for e in extras])
        return obs

    def _info(self, i: int, *, collided: bool, step_time: float, extra: dict[str, Any]) -> dict[str, Any]:
        sub = self._subenvs[i]
        info: dict[str, Any] = {
            "memory_bytes": int(self.generator.memory_bytes()[i]),
            "frames_generated": int(sub.frames),
            "collided": bool(collided),
            "coverage": sub.coverage,
            **extra,
        }
        if self.report_step_time:
            info["step_time"] = float(step_time)
        return info

    def render_frame(self, i: int, layout: str) -> np.ndarray:
        """The last frame of sub-env ``i`` (``"frame"``) or generated | depth | ground truth (``"grid"``)."""
        sub = self._subenvs[i]
        if sub is None:
            raise RuntimeError("call reset() before render()")
        if layout == "frame":
            return sub.rgb.copy()
        truth = sub.world.renderer.render(sub.pose[None], self.intrinsics, self.resolution, self.resolution,
                                          time=sub.time).rgb[0].numpy()
        return side_by_side([sub.rgb, colorize_depth(sub.depth), truth])

    def subenv(self, i: int) -> _SubEnv | None:
        """The state of sub-env ``i`` (read-only use: room, pose, coverage...)."""
        return self._subenvs[i]
