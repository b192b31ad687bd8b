"""Natively batched vector environments: one generator call steps every sub-environment.

``gymnasium.make_vec("MirageRoom-v0", num_envs=8, vectorization_mode="vector_entry_point")``
gives a :class:`MirageRoomVectorEnv`. Unlike ``SyncVectorEnv`` over ``N`` single envs (``N``
generators, ``N`` small forwards), it holds one generator with a batch of ``N`` scenes, so
each denoising step is one transformer forward for all sub-envs.

Autoreset: ``AutoresetMode.SAME_STEP``. A sub-env that terminates or is truncated is reset
within the same ``step``: the returned observation is the first of its new episode, and
``info["final_obs"]`` / ``info["final_info"]`` (with their ``_final_obs`` masks) hold the last
observation and info of the episode that ended. This is what stable-baselines3 expects, and
no step is wasted on a reset-only transition.

Seeding: ``reset(seed=s)`` seeds sub-env ``i`` with ``s + i`` (or ``seed=[s0, s1, ...]``);
each sub-env has its own ``np_random`` stream for rooms, start poses, goals and generation
noise, so sub-env ``i`` behaves as a single env reset with the same seed. With
``options={"reset_mask": mask}`` a seed reseeds only the masked sub-envs (``s + i`` for an int,
one seed per masked sub-env for a list), so an episode can be given its own seed whichever
sub-env runs it (what dataset collection needs to be independent of the slot).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from mirage_gym.envs.actions import to_motion
from mirage_gym.envs.generators import GeneratorSpec
from mirage_gym.envs.room import MirageRoomEnv, MirageRoomNavEnv, exploration_task, settings_from
from mirage_gym.envs.simulator import RENDER_LAYOUTS, MirageSimulator, SimulatorSettings, check_setting
from mirage_gym.envs.tasks import PointNavTask, Task

__all__ = ["MirageRoomVectorEnv", "MirageRoomNavVectorEnv"]


class _MirageVectorEnv(VectorEnv):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 4, "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self, num_envs: int, task: Task, render_mode: str | None, render_layout: str, max_episode_steps: int | None,
        settings: SimulatorSettings,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        if render_layout not in RENDER_LAYOUTS:
            raise ValueError(f"render_layout must be one of {RENDER_LAYOUTS}, got {render_layout!r}")
        if max_episode_steps is not None:
            max_episode_steps = check_setting("max_episode_steps", max_episode_steps)
        self.simulator = MirageSimulator(num_envs, task, settings)
        self.num_envs = self.simulator.num_envs
        self.render_mode = render_mode
        self.render_layout = render_layout
        self.max_episode_steps = None if max_episode_steps is None else int(max_episode_steps)
        self.single_observation_space = self.simulator.observation_space
        self.single_action_space = self.simulator.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._rngs: list[np.random.Generator] | None = None
        self._elapsed = np.zeros(self.num_envs, np.int64)

    @property
    def task(self) -> Task:
        return self.simulator.task

    @property
    def generator(self):
        return self.simulator.generator

    def _seeds(self, seed: int | Sequence[int | None] | None, indices: Sequence[int]) -> list[int | None]:
        """The seeds of sub-envs ``indices``: ``s + i`` for an int, one entry each for a list (``None``: fresh)."""
        if seed is None:
            return [None] * len(indices)
        if isinstance(seed, (int, np.integer)):
            return [int(seed) + i for i in indices]
        seeds = list(seed)
        if len(seeds) != len(indices):
            raise ValueError(f"seed must be an int or a list of {len(indices)} seeds (one per reset sub-env), got "
                             f"{len(seeds)}")
        return seeds

    def _seeded(self, seeds: list[int | None], indices: Sequence[int]) -> list[np.random.Generator]:
        """The sub-env generators after seeding ``indices`` with ``seeds`` (a new list; nothing is changed yet)."""
        rngs = list(self._rngs) if self._rngs is not None else [seeding.np_random()[0] for _ in range(self.num_envs)]
        for i, s in zip(indices, seeds):
            rngs[i] = seeding.np_random(s)[0]
        return rngs

    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None):
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        if mask is None:
            indices = list(range(self.num_envs))
        else:
            mask = np.asarray(mask)
            if mask.shape != (self.num_envs,) or mask.dtype != np.bool_ or not mask.any():
                raise ValueError(f"options['reset_mask'] must be a bool array [{self.num_envs}] with a True, got "
                                 f"{mask.dtype} {list(mask.shape)}")
            indices = np.flatnonzero(mask).tolist()
        self.simulator.check_options(options, len(indices))
        seeds = self._seeds(seed, indices)  # validated before anything changes
        rngs = self._seeded(seeds, indices) if seed is not None or self._rngs is None else self._rngs
        obs, infos = self.simulator.reset(indices, [rngs[i] for i in indices], options)
        self._rngs = rngs
        if seed is not None and len(indices) == self.num_envs:
            self._np_random, self._np_random_seed = seeding.np_random(seeds[0])
        self._elapsed[indices] = 0
        if mask is not None:  # untouched sub-envs keep their last observation, as Gymnasium's vector envs do
            full = {key: np.array(value) for key, value in self._last_obs.items()}
            for key in full:
                full[key][indices] = obs[key]
            obs = full
        self._last_obs = obs
        return {key: value.copy() for key, value in obs.items()}, self._batch_infos(infos, indices)

    def step(self, actions):
        motion = to_motion(actions, self.simulator.action_type, batch=self.num_envs)
        obs, rewards, terminated, infos = self.simulator.step(motion)
        self._elapsed += 1
        truncated = np.zeros(self.num_envs, bool)
        if self.max_episode_steps is not None:
            truncated = (self._elapsed >= self.max_episode_steps) & ~terminated
        done = np.flatnonzero(terminated | truncated).tolist()
        vector_infos = self._batch_infos(infos, range(self.num_envs))
        if done:
            for i in done:
                final_obs = {key: value[i].copy() for key, value in obs.items()}
                vector_infos = self._add_info(vector_infos, {"final_obs": final_obs, "final_info": infos[i]}, i)
            new_obs, new_infos = self.simulator.reset(done, [self._rngs[i] for i in done])
            self._elapsed[done] = 0
            for key in obs:
                obs[key][done] = new_obs[key]
            for k, i in enumerate(done):
                vector_infos = self._add_info(vector_infos, new_infos[k], i)
        self._last_obs = obs
        return ({key: value.copy() for key, value in obs.items()}, rewards.astype(np.float64), terminated,
                truncated, vector_infos)

    def _batch_infos(self, infos: Sequence[dict[str, Any]], indices: Sequence[int]) -> dict[str, Any]:
        batched: dict[str, Any] = {}
        for info, i in zip(infos, indices):
            batched = self._add_info(batched, info, i)
        return batched

    def render(self) -> tuple[np.ndarray, ...] | None:
        if self.render_mode is None:
            return None
        return tuple(self.simulator.render_frame(i, self.render_layout) for i in range(self.num_envs))


_VECTOR_ARGUMENTS = """
    | Parameter | Type | Default | Description |
    |-----------|------|---------|-------------|
    | ``num_envs`` | ``int`` | ``1`` | sub-environments, all stepped by one generator call (1-1024) |
    | ``max_episode_steps`` | ``int \\| None`` | from the registration | truncation per sub-env |
    | ``render_mode`` | ``str \\| None`` | ``None`` | ``None`` or ``"rgb_array"`` (a tuple with one frame per sub-env) |

    Every other argument is that of the single env, with the same type, default and meaning.
"""


class MirageRoomVectorEnv(_MirageVectorEnv):
    __doc__ = """``num_envs`` batched ``MirageRoom-v0`` sub-envs (see :class:`~mirage_gym.envs.MirageRoomEnv`).

    ## Arguments
    """ + _VECTOR_ARGUMENTS

    def __init__(
        self,
        num_envs: int = 1,
        render_mode: str | None = None,
        *,
        max_episode_steps: int | None = 200,
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
        super().__init__(num_envs, exploration_task(task, collision_penalty), render_mode, render_layout,
                         max_episode_steps, settings)


class MirageRoomNavVectorEnv(_MirageVectorEnv):
    __doc__ = """``num_envs`` batched ``MirageRoomNav-v0`` sub-envs (see :class:`~mirage_gym.envs.MirageRoomNavEnv`).

    ## Arguments
    """ + _VECTOR_ARGUMENTS

    def __init__(
        self,
        num_envs: int = 1,
        render_mode: str | None = None,
        *,
        max_episode_steps: int | None = 100,
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
        super().__init__(num_envs, task, render_mode, render_layout, max_episode_steps, settings)


# The single and vector classes take the same keywords (tests/test_vector_env.py checks it).
PAIRS = ((MirageRoomEnv, MirageRoomVectorEnv), (MirageRoomNavEnv, MirageRoomNavVectorEnv))
