"""``MirageRoom-v0`` and ``MirageRoomNav-v0``: single environments over a generated world."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from mirage_gym.envs.actions import to_motion
from mirage_gym.envs.rendering import HumanViewer, human_render_problem, render_modes
from mirage_gym.envs.simulator import RENDER_LAYOUTS, MirageSimulator
from mirage_gym.envs.tasks import ExplorationTask, PointNavTask, Task

__all__ = ["MirageRoomEnv", "MirageRoomNavEnv"]

_COMMON_DOC = """
    ## Action Space

    ``Box(-1, 1, (4,), float32)`` (``action_type="continuous"``, the default): forward, right,
    yaw (left positive), pitch (up positive), scaled by ``max_translation`` metres and
    ``max_rotation`` degrees per step; pitch is clamped to ``+-max_pitch``. Translation is
    horizontal, along the heading. ``action_type="discrete"`` gives ``Discrete(7)``: stay,
    forward, back, turn left, turn right, look up, look down, of the same sizes. One step is one
    chunk of ``chunk`` frames, the motion spread evenly over them. The camera (a sphere of
    ``camera_radius`` on a body down to the floor) never passes through walls or furniture: a
    move is stopped right before the obstacle and ``info["collided"]`` is set.

    ## Observation Space

    ``Dict`` with
    * ``"rgb"``: ``Box(0, 255, (chunk, H, W, 3), uint8)``, the generated frames of the chunk;
    * ``"depth"``: ``Box(0, max_depth, (chunk, H, W, 1), float32)``, generated metric depth
      (z-depth in metres, from the generator's depth head);
    * ``"cam_to_world"``: ``(chunk, 4, 4) float32``, each frame's pose (OpenCV camera: x right,
      y down, z forward; world z up, see :mod:`mirage_gym.geometry`);
    * ``"intrinsics"``: ``(3, 3) float32``, the pinhole camera of the ``H x W`` frames.

    ``reset`` returns the start view repeated ``chunk`` times (same shapes as a step).

    ## Starting State

    A room is drawn from ``room_seeds`` (default: any seed) with the env's ``np_random``, the
    camera is placed at a random free position at 1.4 m with a random heading and zero pitch, and
    the generator starts from the ground-truth view there. ``reset(seed=..., options=...)``
    takes ``options`` ``{"room_seed": int, "start_image": HxWx3 uint8 (the env's resolution),
    "start_pose": 4x4 cam_to_world}``; with ``start_image`` a user starts the generated world
    from their own picture (the procedural room still decides collisions and rewards). Unknown
    option keys are a ``ValueError``. Generation noise is drawn from a ``torch.Generator`` seeded
    from ``np_random`` at reset, so the same seed and actions give the same observations.

    ## Arguments

    * ``generator``: ``"default"`` (the shipped weights in ``mirage_gym/weights/default``), a
      local model folder (a Mirage folder or a Wan2.2 folder), a ``MirageGenerator``, or
      ``"oracle"``: the ground-truth renderer, named as such, for debugging and upper bounds.
    * ``memory``: ``"latent"`` (default, the latent cache), ``"pixel"`` (the point-cloud
      baseline) or ``"none"``.
    * ``resolution`` (128), ``chunk`` (4), ``fov`` (90 degrees), ``num_inference_steps``
      (the model folder's default), ``device`` ("cpu").
    * ``room_seeds`` (a list of room seeds, default any), ``num_rooms`` (1-9, default 1-4 from
      the seed), ``moving_objects`` (0): the procedural rooms.
    * ``action_type``, ``max_translation`` (0.25 m), ``max_rotation`` (15 degrees), ``max_pitch``
      (60 degrees), ``frame_time`` (0.25 s per frame: moving objects advance with it),
      ``camera_radius`` (0.2 m), ``max_depth`` (20 m, the oracle's depth clip).
    * ``collision_penalty`` (0.1 per collision).
    * ``render_mode``: ``"rgb_array"`` (the last frame; with ``render_layout="grid"``, the
      generated frame, its depth colour map and the ground truth side by side) or ``"human"``
      (an OpenCV window; declared in ``metadata["render_modes"]`` only where a window can be
      opened, and a ``RuntimeError`` saying why when asked for elsewhere).
    * ``report_step_time`` (False): add ``info["step_time"]``, the seconds the generator spent
      on the step per sub-env. Off by default because wall-clock time differs between runs, and
      identical runs must give identical infos (Gymnasium's determinism check compares them).

    ## Info

    ``"memory_bytes"`` (bytes the scene memory holds), ``"frames_generated"`` (this episode),
    ``"collided"``, ``"coverage"`` (fraction of the navigable floor seen this episode) and
    ``"step_time"`` when ``report_step_time``.

    ## Version History

    * v0: initial version.
"""


class _MirageEnv(gym.Env):
    """Shared single-environment logic (a :class:`MirageSimulator` with one sub-env)."""

    metadata = {"render_modes": render_modes(), "render_fps": 4}

    def __init__(self, task: Task, render_mode: str | None, render_layout: str, kwargs: dict[str, Any]) -> None:
        if render_mode == "human" and human_render_problem():
            raise RuntimeError(human_render_problem())
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        if render_layout not in RENDER_LAYOUTS:
            raise ValueError(f"render_layout must be one of {RENDER_LAYOUTS}, got {render_layout!r}")
        self._viewer = HumanViewer(type(self).__name__) if render_mode == "human" else None
        self.simulator = MirageSimulator(1, task, **kwargs)
        self.render_mode = render_mode
        self.render_layout = render_layout
        self.observation_space = self.simulator.observation_space
        self.action_space = self.simulator.action_space
        # One rendered image per step, i.e. per chunk of frames.
        self.metadata = {**self.metadata, "render_fps": max(1, round(1.0 / (self.simulator.chunk *
                                                                               self.simulator.frame_time)))}

    @property
    def generator(self):
        """The generator (a ``MirageGenerator``, or an ``OracleGenerator`` in oracle mode)."""
        return self.simulator.generator

    @property
    def scene(self):
        """The ground-truth scene of the current episode (``None`` before the first reset)."""
        sub = self.simulator.subenv(0)
        return None if sub is None else sub.world.scene

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
    generates one chunk of frames for the camera's motion.

    ## Rewards

    The navigable floor newly seen in the step, in square metres (cells of 0.25 m seen within
    3 m, computed on the ground-truth scene from the chunk's poses with ground-truth depth at
    32x32, so the reward is exact and does not depend on the generator), minus
    ``collision_penalty`` when the move was stopped by an obstacle.

    ## Episode End

    Never terminates; truncated after 200 steps (``max_episode_steps`` of the registration).
    """ + _COMMON_DOC

    def __init__(
        self,
        render_mode: str | None = None,
        *,
        render_layout: str = "frame",
        collision_penalty: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(ExplorationTask(collision_penalty), render_mode, render_layout, kwargs)


class MirageRoomNavEnv(_MirageEnv):
    __doc__ = """Point-goal navigation in a generated house (``MirageRoomNav-v0``), as in Habitat PointNav.

    ## Description

    As ``MirageRoom-v0``, with a goal position on the navigable floor, at least
    ``min_goal_distance`` (1 m) from the start and reachable from it.

    ## Observation Space (addition)

    ``"goal"``: ``Box(-100, 100, (3,), float32)``, the goal in the frame of the chunk's last
    camera (x right, y down, z forward, metres).

    ## Rewards

    The decrease of the *geodesic* distance to the goal (shortest path over the free
    navigation cells, see :mod:`mirage_gym.envs.tasks`), minus ``collision_penalty`` per
    collision, plus ``success_bonus`` (10) on success. ``reset`` also takes
    ``options["goal"]`` (a world position [3]).

    ## Episode End

    Terminates on success: geodesic distance within ``success_distance`` (0.5 m);
    ``info["success"]`` and ``info["distance_to_goal"]`` report it. Truncated after 100 steps.
    """ + _COMMON_DOC

    def __init__(
        self,
        render_mode: str | None = None,
        *,
        render_layout: str = "frame",
        collision_penalty: float = 0.1,
        success_distance: float = 0.5,
        success_bonus: float = 10.0,
        min_goal_distance: float = 1.0,
        **kwargs: Any,
    ) -> None:
        task = PointNavTask(collision_penalty, success_distance, success_bonus, min_goal_distance)
        super().__init__(task, render_mode, render_layout, kwargs)
