"""The batched core shared by the single and the vector environments.

:class:`MirageSimulator` runs ``N`` sub-environments with one generator: every ``step`` is
one generator call for all of them (one transformer forward per denoising step), while each
sub-environment keeps its own ground-truth room, pose, clock, random streams and task state.
A single environment is the case ``N = 1``, so a sub-environment of the vector env and a
single env seeded alike see the same observations.

Physics (:data:`PHYSICS`) is decided per episode. Under ``"ground_truth"`` the sub-environment's
procedural :class:`~mirage_gym.world.Scene` decides collisions, coverage and goals. Under
``"generated"`` a :class:`~mirage_gym.envs.physics.GeneratedPhysics` per sub-environment decides
them from what the generator returned (each chunk's depth and poses, and its latent cache), and
a start picture has no house at all (``_SubEnv.world`` is ``None``). The house is otherwise used
only for start images and the optional ground-truth render panel; observations come from the
generator (or, in oracle mode, from :class:`~mirage_gym.envs.oracle.OracleGenerator`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from mirage_gym import geometry
from mirage_gym.envs.actions import ACTION_TYPES, single_action_space
from mirage_gym.envs.generators import GeneratorSpec, load_generator, model_geometry
from mirage_gym.envs.physics import PHYSICS, GeneratedPhysics, check_physics
from mirage_gym.envs.tasks import Episode, GeneratedCoverage, Task, TaskState, Transition
from mirage_gym.envs.worlds import World, get_world
from mirage_gym.world.generate import CAMERA_HEIGHT
from mirage_gym.model.generator import MEMORY_MODES
from mirage_gym.video import colorize_depth, side_by_side

__all__ = ["BOUNDS", "MirageSimulator", "PHYSICS", "PICTURE_START_POSE", "RENDER_LAYOUTS", "ROOM_SEED_RANGE",
           "SimulatorSettings"]

RENDER_LAYOUTS = ("frame", "grid")
ROOM_SEED_RANGE = 2**31 - 1  # room seeds are drawn from [0, ROOM_SEED_RANGE) unless room_seeds is given
BASE_OPTIONS = frozenset({"room_seed", "start_image", "start_pose"})
# Where a start picture puts the camera unless options["start_pose"] says otherwise: at the origin, 1.4 m
# above the floor (z = 0), looking along +x, level. No house stands behind a picture, so nothing else decides it.
PICTURE_START_POSE = geometry.pose_from_position_yaw_pitch(
    torch.tensor([0.0, 0.0, CAMERA_HEIGHT]), torch.tensor(0.0), torch.tensor(0.0))


# Physically sensible ranges of the numeric settings: (low, high, low included, unit). Outside them
# a setting is a ValueError naming it and the range (a 1e5 m step would take seconds and gigabytes).
BOUNDS: dict[str, tuple[float, float, bool, str]] = {
    "num_envs": (1, 1024, True, "sub-environments"),
    "resolution": (8, 1024, True, "pixels"),
    "chunk": (1, 129, True, "frames per step"),
    "fov": (10.0, 170.0, True, "degrees"),
    "num_inference_steps": (1, 1000, True, "denoising steps"),
    "num_rooms": (1, 9, True, "rooms"),
    "moving_objects": (0, 32, True, "objects"),
    "max_translation": (0.0, 2.0, False, "metres per step"),
    "max_rotation": (0.0, 180.0, False, "degrees per step"),
    "max_pitch": (0.0, 89.0, False, "degrees"),
    "frame_time": (0.0, 10.0, False, "seconds per frame"),
    "camera_radius": (0.0, 1.0, False, "metres"),
    "max_depth": (0.0, 1000.0, False, "metres"),
    "max_episode_steps": (1, 1_000_000, True, "steps"),
}
_INTEGERS = frozenset({"num_envs", "resolution", "chunk", "num_inference_steps", "num_rooms", "moving_objects",
                       "max_episode_steps"})


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def check_setting(name: str, value: Any) -> int | float:
    """``value`` of the numeric setting ``name`` inside :data:`BOUNDS`, or a ``ValueError`` naming both."""
    low, high, closed, unit = BOUNDS[name]
    interval = f"{'[' if closed else '('}{_number(low)}, {_number(high)}]"
    integer = name in _INTEGERS
    ok_type = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.integer, np.floating))
    if isinstance(value, (bool, np.bool_)) or not ok_type:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} in {interval} {unit}, got {value!r}")
    value = int(value) if integer else float(value)
    if not (math.isfinite(value) and (low <= value if closed else low < value) and value <= high):
        raise ValueError(f"{name} must be in {interval} {unit}, got {value!r}")
    return value


@dataclass(frozen=True)
class SimulatorSettings:
    """Everything that configures the simulated world, camera and generator (see the env docstrings).

    Validated on construction: a ``ValueError`` names the setting and the range it must be in
    (:data:`BOUNDS`). The environment classes take these as keyword arguments.
    """

    generator: GeneratorSpec = "default"
    """``"default"``, ``"oracle"``, a model folder, or a ready generator."""
    memory: str = "latent"
    """Scene memory: ``"latent"``, ``"pixel"`` or ``"none"``."""
    resolution: int | None = None
    """Square frame size in pixels (``None``: what the model generates, see :func:`model_geometry`)."""
    chunk: int | None = None
    """Frames generated per step (``None``: what the model generates, see :func:`model_geometry`)."""
    fov: float = 90.0
    """Horizontal field of view, degrees."""
    num_inference_steps: int | None = None
    """Denoising steps per chunk (``None``: the model folder's setting)."""
    room_seeds: Sequence[int] | None = None
    """Houses to draw from (``None``: any seed)."""
    num_rooms: int | None = None
    """Rooms per house, 1-9 (``None``: 1-4 from the seed)."""
    moving_objects: int = 0
    """Moving boxes per house."""
    action_type: str = "continuous"
    """``"continuous"`` (``Box(-1, 1, (4,))``) or ``"discrete"`` (7 moves)."""
    max_translation: float = 0.25
    """Metres per step at ``|action| = 1``."""
    max_rotation: float = 15.0
    """Degrees of yaw and pitch per step at ``|action| = 1``."""
    max_pitch: float = 60.0
    """Pitch limit, degrees up or down."""
    frame_time: float = 0.25
    """Seconds per frame (moving objects advance with it)."""
    camera_radius: float = 0.2
    """Metres: the camera body's radius for collisions."""
    max_depth: float = 20.0
    """Metres: the oracle's depth clip."""
    report_step_time: bool = False
    """Add ``info["step_time"]`` (wall-clock, so off by default: identical runs give identical infos)."""
    device: torch.device | str = "cpu"
    """Where the generator runs."""
    physics: str | None = None
    """``"generated"``, ``"ground_truth"``, or ``None``: the house's for a procedural start, generated for a
    start picture (see :mod:`mirage_gym.envs.physics` and the env docstrings)."""

    def __post_init__(self) -> None:
        if self.physics is not None:
            check_physics(self.physics)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in BOUNDS and value is not None:
                object.__setattr__(self, f.name, check_setting(f.name, value))
        if self.memory not in MEMORY_MODES:
            raise ValueError(f"memory must be one of {MEMORY_MODES}, got {self.memory!r}")
        if self.action_type not in ACTION_TYPES:
            raise ValueError(f"action_type must be one of {ACTION_TYPES}, got {self.action_type!r}")
        if self.room_seeds is not None:
            seeds = self.room_seeds
            if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (Sequence, np.ndarray)) or not len(seeds) or \
                    any(isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) or s < 0 for s in seeds):
                raise ValueError(f"room_seeds must be a non-empty list of integer seeds >= 0, got {seeds!r}")
            object.__setattr__(self, "room_seeds", tuple(int(s) for s in seeds))
        if not isinstance(self.report_step_time, (bool, np.bool_)):
            raise ValueError(f"report_step_time must be a bool, got {self.report_step_time!r}")


@dataclass
class _SubEnv:
    """The state of one sub-environment's episode."""

    world: World | None  # the procedural house (None: a start picture with a generated world)
    pose: Tensor  # [4, 4] cam_to_world after the last step
    noise: torch.Generator  # generation noise, seeded from the sub-env's np_random at reset
    task_state: TaskState  # the task's per-episode state (coverage, goal...)
    rgb: np.ndarray  # [H, W, 3] last frame (for render)
    depth: np.ndarray  # [H, W] its depth
    physics: str = "ground_truth"  # the physics in force this episode
    body: GeneratedPhysics | None = None  # generated physics' state (None under ground-truth physics)
    blocked_by: str | None = None  # why the last move stopped: "obstacle", "unseen" or None
    time: float = 0.0  # seconds since the start (moving objects)
    frames: int = 0  # frames generated this episode


class MirageSimulator:
    """``N`` sub-environments sharing one generator, running ``task``. See the environment classes."""

    def __init__(self, num_envs: int, task: Task, settings: SimulatorSettings | None = None) -> None:
        settings = SimulatorSettings() if settings is None else settings
        if not isinstance(settings, SimulatorSettings):
            raise TypeError(f"settings must be a SimulatorSettings, got {type(settings).__name__}")
        if not isinstance(task, Task):
            raise TypeError(f"task must be a mirage_gym.envs.tasks.Task, got {type(task).__name__}")
        clash = BASE_OPTIONS & task.option_keys
        if clash:
            raise ValueError(f"{type(task).__name__} declares reset options {sorted(clash)} that the simulator owns")
        self.settings = settings
        self.num_envs = check_setting("num_envs", num_envs)
        self.task = task
        self.physics = settings.physics
        self.fov = settings.fov
        self.room_seeds = None if settings.room_seeds is None else list(settings.room_seeds)
        self.num_rooms = settings.num_rooms
        self.moving_objects = settings.moving_objects
        self.action_type = settings.action_type
        self.max_translation = settings.max_translation
        self.max_rotation = settings.max_rotation
        self.max_pitch = settings.max_pitch
        self.frame_time = settings.frame_time
        self.camera_radius = settings.camera_radius
        self.report_step_time = settings.report_step_time
        self.generator = load_generator(
            settings.generator, memory=settings.memory, num_inference_steps=settings.num_inference_steps,
            device=settings.device, frame_time=self.frame_time, max_depth=settings.max_depth,
        )
        self.resolution, self.chunk = model_geometry(self.generator, settings.generator, settings.resolution,
                                                     settings.chunk)
        self.max_depth = float(self.generator.max_depth)
        self.intrinsics = geometry.intrinsics_from_fov(self.fov, self.resolution, self.resolution)
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
        self.action_space = single_action_space(self.action_type)
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
        self.episode_physics("start_image" in options)  # a picture with ground-truth physics is refused here
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
        for key, dims in self.task.option_dims.items():  # the task validates its own options
            if key not in options:
                continue
            value = options[key]
            if batch is not None and np.ndim(value) == dims + 1:
                if len(value) != batch:
                    raise ValueError(f"options[{key!r}] needs one value per reset sub-env ({batch}), got {len(value)}")
                value = value[k]
            out[key] = self.task.check_option(key, value)
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

    def episode_physics(self, picture: bool) -> str:
        """The physics of an episode that starts from a picture (``picture``) or from the house, or ``ValueError``."""
        if picture and self.physics == "ground_truth":
            raise ValueError("physics='ground_truth' cannot run an episode that starts from options['start_image']: "
                             "no procedural house stands behind a picture, so only the generated world can decide "
                             "collisions and rewards. Use physics='generated' (or leave physics=None, which picks it "
                             "for a picture)")
        if self.physics is not None:
            return self.physics
        return "generated" if picture else "ground_truth"

    def _plan(self, rng: np.random.Generator, values: dict[str, Any]) -> tuple[_SubEnv, Tensor]:
        """Draw a sub-env's episode (room, start, goal, noise seed) without mutating anything."""
        image = values.get("start_image")
        picture = image is not None
        physics = self.episode_physics(picture)
        # A picture has no house behind it; only the oracle, which renders one, still needs it for its frames.
        world = None
        if not picture or self.generator.renders_ground_truth:
            if "room_seed" in values:
                seed = values["room_seed"]
            elif self.room_seeds is not None:
                seed = self.room_seeds[int(rng.integers(len(self.room_seeds)))]
            else:
                seed = int(rng.integers(ROOM_SEED_RANGE))
            world = get_world(seed, self.num_rooms, self.moving_objects)
        if "start_pose" in values:
            pose = values["start_pose"]
            if world is not None and not world.scene.is_free(pose[None, :3, 3], self.camera_radius)[0]:
                raise ValueError(f"options['start_pose'] puts the camera at {pose[:3, 3].tolist()}, which is not free "
                                 f"in room {world.scene.seed} (inside or too close to an obstacle)")
        elif world is None:
            pose = PICTURE_START_POSE.clone()
        else:
            pose = world.scene.sample_pose(rng, self.camera_radius)
        body = None
        if physics == "generated":
            body = GeneratedPhysics(self.camera_radius, max_depth=self.max_depth)
            try:
                body.reset(pose)
            except ValueError as err:
                raise ValueError(f"options['start_pose']: {err}") from err
        task_values = {key: value for key, value in values.items() if key in self.task.option_keys}
        task_state = self.task.start(Episode(world=world, start_pose=pose, fov=self.fov, physics=physics), rng,
                                     task_values)
        noise = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
        if image is None:
            image = world.renderer.render(pose[None], self.intrinsics, self.resolution, self.resolution).rgb[0]
        sub = _SubEnv(world=world, pose=pose, noise=noise, task_state=task_state, rgb=np.empty(0), depth=np.empty(0),
                      physics=physics, body=body)
        return sub, image

    def _surfaces(self):
        """What generated physics reads as the world's persistent surfaces: the generator's latent cache, or
        ``None`` (no such cache: the oracle, ``memory="pixel"``/``"none"``), when it keeps every chunk's itself."""
        store = self.generator.memory_store
        if self.generator.memory == "latent" and store is not None and callable(getattr(store, "points", None)):
            return store
        return None

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
        # Used by a generator that renders the ground truth (there is a house for every episode then).
        renderers = [None if sub.world is None else sub.world.renderer for sub, _ in plans]
        started = time.perf_counter()
        out = self.generator.start(images, poses, self.intrinsics, scenes=None if full else indices,
                                   renderers=renderers)
        elapsed = time.perf_counter() - started
        rgb = out.rgb[:, 0].cpu().numpy()
        depth = self._clip_depth(out.depth[:, 0])
        surfaces = self._surfaces()
        for k, (i, (sub, _)) in enumerate(zip(indices, plans)):
            sub.rgb, sub.depth = rgb[k], depth[k]
            self._subenvs[i] = sub
            if sub.body is not None:  # the start view is the first thing the generated world shows
                shown = sub.body.observe(depth[k], poses[k], self.intrinsics, surfaces, i)
                if isinstance(sub.task_state.coverage, GeneratedCoverage):
                    sub.task_state.coverage.area += shown
        t = self.chunk
        obs = self._observation(
            indices,
            np.repeat(rgb[:, None], t, axis=1),
            np.repeat(depth[:, None], t, axis=1),
            poses[:, None].expand(-1, t, -1, -1),
        )
        infos = [self._info(i, collided=False, blocked_by=None, step_time=elapsed / batch,
                            extra=self.task.reset_info(self._subenvs[i].task_state)) for i in indices]
        return obs, infos

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
            end, sub.blocked_by = self._allowed_end(sub, origin, poses[i, -1, :3, 3])
            collided[i] = sub.blocked_by is not None
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
        surfaces = self._surfaces()
        for i, sub in enumerate(subs):
            shown = 0.0
            if sub.body is not None:
                shown = sub.body.observe(depth[i], poses[i], self.intrinsics, surfaces, i)
            transition = Transition(world=sub.world, poses=poses[i], times=sub.time + frame_times,
                                    collided=bool(collided[i]), depth=depth[i], physics=sub.physics,
                                    blocked_by=sub.blocked_by, generated_floor=shown)
            result = self.task.step(sub.task_state, transition)
            rewards[i], terminated[i] = result.reward, result.terminated
            extras.append(result.info)
            sub.pose = poses[i, -1].clone()
            sub.time += t * self.frame_time
            sub.frames += t
            sub.rgb, sub.depth = rgb[i, -1], depth[i, -1]
        obs = self._observation(list(range(n)), rgb, depth, poses)
        infos = [self._info(i, collided=bool(collided[i]), blocked_by=subs[i].blocked_by, step_time=elapsed / n,
                            extra=extras[i]) for i in range(n)]
        return obs, rewards, terminated, infos

    def _allowed_end(self, sub: _SubEnv, origin: Tensor, target: Tensor) -> tuple[Tensor, str | None]:
        """Where a move from ``origin`` towards ``target`` ends, and what stopped it (``None``: nothing).

        The episode's physics decides: the house (:meth:`Scene.move`, ``"obstacle"``) or the generated
        world (:meth:`GeneratedPhysics.move`: ``"obstacle"`` or ``"unseen"`` space).
        """
        if sub.body is not None:
            reached, blocked = sub.body.move(origin.double().numpy(), target.double().numpy())
            return torch.from_numpy(reached).float(), sub.body.last_block if blocked else None
        reached, blocked = sub.world.scene.move(origin[None], target[None], self.camera_radius)
        return reached[0], "obstacle" if bool(blocked[0]) else None

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

    def _info(self, i: int, *, collided: bool, blocked_by: str | None, step_time: float,
              extra: dict[str, Any]) -> dict[str, Any]:
        sub = self._subenvs[i]
        info: dict[str, Any] = {
            "memory_bytes": int(self.generator.memory_bytes()[i]),
            "frames_generated": int(sub.frames),
            "collided": bool(collided),
            "physics": sub.physics,
            "blocked_by": blocked_by,
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
        if sub.world is None:  # a start picture: no ground truth to show, the panel stays black
            truth = np.zeros_like(sub.rgb)
        else:
            truth = sub.world.renderer.render(sub.pose[None], self.intrinsics, self.resolution, self.resolution,
                                              time=sub.time).rgb[0].numpy()
        return side_by_side([sub.rgb, colorize_depth(sub.depth), truth])

    def subenv(self, i: int) -> _SubEnv | None:
        """The state of sub-env ``i`` (read-only use: room, pose, coverage...)."""
        return self._subenvs[i]
