"""``MirageRoom-v0`` and ``MirageRoomNav-v0``: single environments over a generated world."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from mirage_gym.envs.actions import to_motion
from mirage_gym.envs.generators import GeneratorSpec
from mirage_gym.envs.rendering import HumanViewer, human_render_problem, render_modes
from mirage_gym.envs.simulator import RENDER_LAYOUTS, MirageSimulator, SimulatorSettings
from mirage_gym.envs.tasks import ExplorationTask, PointNavTask, Task

__all__ = ["MirageRoomEnv", "MirageRoomNavEnv", "settings_from"]


def settings_from(arguments: dict[str, Any]) -> SimulatorSettings:
    """The :class:`SimulatorSettings` among an env constructor's ``arguments`` (its ``locals()``)."""
    return SimulatorSettings(**{f.name: arguments[f.name] for f in fields(SimulatorSettings)})


def exploration_task(task: Task | None, collision_penalty: float) -> Task:
    """``task`` (a custom task) or the exploration task with ``collision_penalty``."""
    if task is None:
        return ExplorationTask(collision_penalty)
    if not isinstance(task, Task):
        raise TypeError(f"task must be a mirage_gym.envs.tasks.Task, got {type(task).__name__}")
    if collision_penalty != ExplorationTask().collision_penalty:
        raise ValueError("collision_penalty belongs to the exploration task; with task=... give it to that task")
    return task


_ACTION_SPACE = """
    ## Action Space

    ``Box(-1, 1, (4,), float32)`` (``action_type="continuous"``, the default): forward, right,
    yaw (left positive), pitch (up positive), scaled by ``max_translation`` metres and
    ``max_rotation`` degrees per step; pitch is clamped to ``+-max_pitch``. Translation is
    horizontal, along the heading. ``action_type="discrete"`` gives ``Discrete(7)``: stay,
    forward, back, turn left, turn right, look up, look down, of the same sizes. One step is one
    chunk of ``chunk`` frames, the motion spread evenly over them. The camera (a sphere of
    ``camera_radius`` on a body down to the floor) never passes through walls or furniture: a
    move is stopped right before the obstacle and ``info["collided"]`` is set. Which walls and
    furniture is the physics' choice (below).

    ## Observation Space

    ``Dict`` with
    * ``"rgb"``: ``Box(0, 255, (chunk, H, W, 3), uint8)``, the generated frames of the chunk;
    * ``"depth"``: ``Box(0, max_depth, (chunk, H, W, 1), float32)``, generated metric depth
      (z-depth in metres, from the generator's depth head);
    * ``"cam_to_world"``: ``(chunk, 4, 4) float32``, each frame's pose (OpenCV camera: x right,
      y down, z forward; world z up, see :mod:`mirage_gym.geometry`);
    * ``"intrinsics"``: ``(3, 3) float32``, the pinhole camera of the ``H x W`` frames.

    ``reset`` returns the start view repeated ``chunk`` times (same shapes as a step).
"""

_PHYSICS = """
    ## Physics

    ``physics`` says which world decides collisions, exploration and goals
    (:mod:`mirage_gym.envs.physics`); ``info["physics"]`` reports the one in force:

    * ``"generated"``: the generated world itself. Obstacles are the surfaces the generator has
      shown: the latent cache's persistent 3D tokens (so a wall seen, turned away from and walked
      back to still blocks) and the current chunk's generated depth within 3 m, on a 5 cm floor
      grid; points less than 0.1 m above the floor are floor. The body may move only over floor
      the frames have shown free (or its start footprint): a move into space the world has never
      shown stops at its edge and counts as a collision with ``info["blocked_by"] == "unseen"``
      (``"obstacle"`` for a shown surface), so walking backwards or sideways blind is no free
      exploit. Exploration is the newly shown floor in m^2 (``info["explored_m2"]``: the area shown
      so far); ``info["coverage"]`` is ``inf``, since a generated world has no known total floor to
      be a fraction of. PointNav goals are metric
      offsets from the start, with Euclidean distance and success. No procedural house is used:
      this is the only physics of a start picture or a real Wan2.2 model.
    * ``"ground_truth"``: the procedural house decides (exact, for evaluation): collisions,
      exploration (``info["explored_m2"]``, and ``info["coverage"]`` as a fraction of its navigable
      floor), geodesic PointNav.
    * ``None`` (default): ``"ground_truth"`` for a procedural start, ``"generated"`` for a start
      picture. A house and a picture never mix: ``physics="ground_truth"`` with
      ``options["start_image"]`` is a ``ValueError``.

    Why the house stays the default for procedural starts: generated physics is only as good as
    the generated depth. With exact depth (the oracle, ``mirage-gym eval collisions``, 20 random-walk
    episodes of 50 moves in held-out houses) it agrees with the house on "blocked" at F1 0.861 in
    the space the frames have shown (precision 0.969, recall 0.775), 0.573 overall: the
    unseen-space rule stops 22 % of random moves, most of which the house allows. The shipped
    model's depth is still coarse (abs-rel 0.60 on generated frames), so its walls are not yet
    where its frames show them. Generated physics costs about 3 ms of numpy per step, about 1 %
    of the generator's step (``python -m mirage_gym.bench.physics``; budget 10 %). Ask for it with
    ``physics="generated"`` (e.g. to train in the generated world alone, dream-to-real).
"""

_STARTING_STATE = """
    ## Starting State

    A house is drawn from ``room_seeds`` (default: any seed) with the env's ``np_random``, the
    camera is placed at a random free position at 1.4 m with a random heading and zero pitch, and
    the generator starts from the ground-truth view there. ``reset(seed=..., options=...)``
    takes ``options`` ``{"room_seed": int, "start_image": HxWx3 uint8 (the env's resolution),
    "start_pose": 4x4 cam_to_world}`` and the task's options; with ``start_image`` a user starts
    the generated world from their own picture, and the generated world alone decides
    collisions and rewards (generated physics, see above): no house is drawn, ``room_seed`` has
    no effect, and the camera starts at ``start_pose`` or else at the origin, 1.4 m above the
    floor (z = 0), looking along +x (:data:`~mirage_gym.envs.simulator.PICTURE_START_POSE`).
    (With ``generator="oracle"``, which can only render a house, the frames after the picture
    are the drawn house's, as before; physics is still generated.) Unknown option keys are a
    ``ValueError``. Generation noise is drawn from a
    ``torch.Generator`` seeded from ``np_random`` at reset, so the same seed and actions give the
    same observations.
"""

_ARGUMENTS = """
    ## Arguments

    Numeric settings outside their range are a ``ValueError`` naming the argument and the range
    (:data:`mirage_gym.envs.simulator.BOUNDS`).

    | Parameter | Type | Default | Description |
    |-----------|------|---------|-------------|
    | ``render_mode`` | ``str \\| None`` | ``None`` | ``"rgb_array"`` (the last frame) or ``"human"`` (an OpenCV window; declared in ``metadata["render_modes"]`` only where one can open) |
    | ``render_layout`` | ``str`` | ``"frame"`` | ``"frame"``, or ``"grid"``: generated frame, depth colour map and ground truth side by side |
    | ``generator`` | ``str \\| Path \\| Generator`` | ``"default"`` | ``"default"`` (the shipped weights in ``mirage_gym/weights/default``), a local model folder (Mirage or Wan2.2), a ready generator, or ``"oracle"``: the ground-truth renderer, named as such, for debugging and upper bounds |
    | ``memory`` | ``str`` | ``"latent"`` | scene memory: ``"latent"`` (the latent cache), ``"pixel"`` (the point-cloud baseline) or ``"none"`` |
    | ``resolution`` | ``int \\| None`` | ``None`` | square frame size, 8-1024 pixels (a multiple of the model's patch). ``None``: what the model generates: the size recorded with its folder, else the smallest multiple of its VAE x patch from 128 up (128 for the shipped model) |
    | ``chunk`` | ``int \\| None`` | ``None`` | frames per step, 1-129 (a Wan VAE needs ``1 + 4k``). ``None``: the model's training chunk if its folder records one, else the smallest it takes from 4 up (4 for the shipped model, 5 for a Wan2.2 VAE) |
    | ``fov`` | ``float`` | ``90.0`` | field of view, 10-170 degrees |
    | ``num_inference_steps`` | ``int \\| None`` | ``None`` | denoising steps per chunk, 1-1000 (``None``: the model folder's) |
    | ``room_seeds`` | ``Sequence[int] \\| None`` | ``None`` | houses to draw from (``None``: any seed) |
    | ``num_rooms`` | ``int \\| None`` | ``None`` | rooms per house, 1-9 (``None``: 1-4 from the seed) |
    | ``moving_objects`` | ``int`` | ``0`` | moving boxes per house, 0-32 |
    | ``action_type`` | ``str`` | ``"continuous"`` | ``"continuous"`` or ``"discrete"`` |
    | ``max_translation`` | ``float`` | ``0.25`` | metres per step at ``abs(action) = 1``, in (0, 2] |
    | ``max_rotation`` | ``float`` | ``15.0`` | degrees of yaw and pitch per step, in (0, 180] |
    | ``max_pitch`` | ``float`` | ``60.0`` | pitch limit up and down, in (0, 89] degrees |
    | ``frame_time`` | ``float`` | ``0.25`` | seconds per frame, in (0, 10] (moving objects advance with it) |
    | ``camera_radius`` | ``float`` | ``0.2`` | the camera body's radius for collisions, in (0, 1] metres |
    | ``max_depth`` | ``float`` | ``20.0`` | the oracle's depth clip, in (0, 1000] metres |
    | ``report_step_time`` | ``bool`` | ``False`` | add ``info["step_time"]``, the generator's seconds per sub-env (off by default: wall-clock time differs between runs, and identical runs must give identical infos) |
    | ``device`` | ``str \\| torch.device`` | ``"cpu"`` | where the generator runs |
    | ``physics`` | ``str \\| None`` | ``None`` | ``"generated"`` or ``"ground_truth"`` (see Physics; another value is a ``ValueError``). ``None``: the house for a procedural start, generated for a start picture |
"""

_INFO = """
    ## Info

    ``"memory_bytes"`` (bytes the scene memory holds), ``"frames_generated"`` (this episode),
    ``"collided"``, ``"blocked_by"`` (what stopped the move: ``"obstacle"``, ``"unseen"`` under
    generated physics, or ``None``), ``"physics"`` (the physics in force this episode),
    ``"explored_m2"`` (floor area shown so far this episode, square metres, under both physics,
    each measuring it its own way: see :mod:`mirage_gym.envs.tasks`; never decreases within an
    episode), ``"coverage"`` (fraction of the house's navigable floor
    seen this episode, in [0, 1]; ``inf`` under generated physics, which has no known total: the
    keys and their types are the same in every episode, whichever its physics, and ``inf`` rather
    than ``nan`` because ``check_env`` compares infos with ``==``),
    ``"reward_<term>"`` for each reward term (they sum to the reward; 0 at reset) and
    ``"step_time"`` when ``report_step_time``.

    ## Version History

    * v0: initial version.
"""


class _MirageEnv(gym.Env):
    """Shared single-environment logic (a :class:`MirageSimulator` with one sub-env)."""

    metadata = {"render_modes": render_modes(), "render_fps": 4}

    def __init__(self, task: Task, render_mode: str | None, render_layout: str, settings: SimulatorSettings) -> None:
        if render_mode == "human" and human_render_problem():
            raise RuntimeError(human_render_problem())
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        if render_layout not in RENDER_LAYOUTS:
            raise ValueError(f"render_layout must be one of {RENDER_LAYOUTS}, got {render_layout!r}")
        self._viewer = HumanViewer(type(self).__name__) if render_mode == "human" else None
        self.simulator = MirageSimulator(1, task, settings)
        self.render_mode = render_mode
        self.render_layout = render_layout
        self.observation_space = self.simulator.observation_space
        self.action_space = self.simulator.action_space
        # One rendered image per step, i.e. per chunk of frames.
        self.metadata = {**self.metadata, "render_fps": max(1, round(1.0 / (self.simulator.chunk *
                                                                               self.simulator.frame_time)))}

    @property
    def task(self) -> Task:
        """The task: options, rewards, info (see :mod:`mirage_gym.envs.tasks`)."""
        return self.simulator.task

    @property
    def generator(self):
        """The generator (a :class:`~mirage_gym.model.protocols.Generator`: a ``MirageGenerator``, or the oracle)."""
        return self.simulator.generator

    @property
    def scene(self):
        """The ground-truth scene of the current episode (``None`` before the first reset, and for an episode
        started from a picture, which has no house)."""
        sub = self.simulator.subenv(0)
        return None if sub is None or sub.world is None else sub.world.scene

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self.simulator.check_options(options)  # before anything changes, the seed included
        super().reset(seed=seed)
        obs, infos = self.simulator.reset([0], [self.np_random], options)
        if self.render_mode == "human":
            self.render()
        return {key: value[0] for key, value in obs.items()}, infos[0]

    def step(self, action):
        motion = to_motion(action, self.simulator.action_type)
        obs, rewards, terminated, infos = self.simulator.step(motion)
        if self.render_mode == "human":
            self.render()
        return {key: value[0] for key, value in obs.items()}, float(rewards[0]), bool(terminated[0]), False, infos[0]

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            gym.logger.warn("render() was called without a render_mode; create the env with render_mode='rgb_array'")
            return None
        frame = self.simulator.render_frame(0, self.render_layout)
        if self.render_mode == "human":
            self._viewer.show(frame)
            return None
        return frame

    def close(self) -> None:
        if self._viewer is not None:
            self._viewer.close()
            self._viewer = None


class MirageRoomEnv(_MirageEnv):
    __doc__ = """Exploration in a generated house (``MirageRoom-v0``).

    ## Description

    The agent moves a camera through a procedural house whose frames, depth and poses come
    from a video generator kept consistent by a persistent 3D latent cache. Every step
    generates one chunk of frames for the camera's motion. ``task=`` runs another
    :class:`~mirage_gym.envs.tasks.Task` in the same world (its rewards, options and info then
    replace those of exploration).
    """ + _ACTION_SPACE + """
    ## Rewards

    The floor newly shown in the step, in square metres under both physics
    (``info["reward_explored"]``, the step's increase of ``info["explored_m2"]``: under
    ground-truth physics, navigable cells of 0.25 m seen within 3 m, computed on the house from
    the chunk's poses with ground-truth depth at 32x32, so the reward is exact and does not depend
    on the generator; under generated physics, cells of 0.1 m of floor the generated frames show
    free within 3 m), minus ``collision_penalty`` when the move was stopped
    (``info["reward_collision"]``).
    """ + _PHYSICS + _STARTING_STATE + """
    ## Episode End

    Never terminates; truncated after 200 steps (``max_episode_steps`` of the registration).
    """ + _ARGUMENTS + """    | ``collision_penalty`` | ``float`` | ``0.1`` | reward lost per collision (>= 0) |
    | ``task`` | ``Task \\| None`` | ``None`` | a custom task instead of exploration (``collision_penalty`` is then the task's) |
    """ + _INFO

    def __init__(
        self,
        render_mode: str | None = None,
        *,
        render_layout: str = "frame",
        generator: GeneratorSpec = "default",
        memory: str = "latent",
        resolution: int | None = None,
        chunk: int | None = None,
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
        physics: str | None = None,
        collision_penalty: float = 0.1,
        task: Task | None = None,
    ) -> None:
        settings = settings_from(locals())
        super().__init__(exploration_task(task, collision_penalty), render_mode, render_layout, settings)


class MirageRoomNavEnv(_MirageEnv):
    __doc__ = """Point-goal navigation in a generated house (``MirageRoomNav-v0``), as in Habitat PointNav.

    ## Description

    As ``MirageRoom-v0``, with a goal position on the navigable floor, at least
    ``min_goal_distance`` (1 m) from the start and reachable from it (under generated physics, an offset:
    see Physics).
    """ + _ACTION_SPACE + """    * ``"goal"``: ``Box(-100, 100, (3,), float32)``, the goal in the frame of the chunk's last
      camera (x right, y down, z forward, metres).

    ## Rewards

    The decrease of the *geodesic* distance to the goal (``info["reward_progress"]``, shortest
    path over the free navigation cells, see :mod:`mirage_gym.envs.tasks`; Euclidean under
    generated physics), minus ``collision_penalty`` per collision (``info["reward_collision"]``),
    plus ``success_bonus`` on success (``info["reward_success"]``).
    """ + _PHYSICS + _STARTING_STATE + """
    ``reset`` also takes ``options["goal"]`` (a world position [3]). Under generated physics a
    drawn goal is a metric offset from the start, 1-4 m away in any direction (no house to be
    reachable in).

    ## Episode End

    Terminates on success: geodesic (generated physics: Euclidean) distance within ``success_distance`` (0.5 m);
    ``info["success"]`` and ``info["distance_to_goal"]`` report it. Truncated after 100 steps.
    """ + _ARGUMENTS + """    | ``collision_penalty`` | ``float`` | ``0.1`` | reward lost per collision (>= 0) |
    | ``success_distance`` | ``float`` | ``0.5`` | metres (geodesic) from the goal that count as success |
    | ``success_bonus`` | ``float`` | ``10.0`` | reward on success |
    | ``min_goal_distance`` | ``float`` | ``1.0`` | metres: a drawn goal is at least this far from the start |
    """ + _INFO

    def __init__(
        self,
        render_mode: str | None = None,
        *,
        render_layout: str = "frame",
        generator: GeneratorSpec = "default",
        memory: str = "latent",
        resolution: int | None = None,
        chunk: int | None = None,
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
        physics: str | None = None,
        collision_penalty: float = 0.1,
        success_distance: float = 0.5,
        success_bonus: float = 10.0,
        min_goal_distance: float = 1.0,
    ) -> None:
        settings = settings_from(locals())
        task = PointNavTask(collision_penalty, success_distance, success_bonus, min_goal_distance)
        super().__init__(task, render_mode, render_layout, settings)
