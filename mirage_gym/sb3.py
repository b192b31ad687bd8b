"""stable-baselines3 on the natively batched vector env.

SB3 takes its own ``VecEnv``, not a Gymnasium ``VectorEnv``. :class:`MirageVecEnv` adapts
:class:`~mirage_gym.envs.MirageRoomVectorEnv` (or the Nav one) without giving up the batching:
one ``step_wait`` is one batched generator call for all sub-envs. The vector env resets
finished sub-envs in the same step (``AutoresetMode.SAME_STEP``), which is SB3's convention;
a finished sub-env's info is that of its last step, with its last observation in
``info["terminal_observation"]`` and truncation in ``info["TimeLimit.truncated"]``.

Example::

    envs = gymnasium.make_vec("MirageRoom-v0", num_envs=8, vectorization_mode="vector_entry_point",
                              generator="oracle", resolution=64)
    venv = VecMonitor(MirageVecEnv(envs))
    PPO("MultiInputPolicy", venv).learn(10_000)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from mirage_gym.wrappers import ImageObservation

__all__ = ["MirageVecEnv"]

_FINAL = ("final_obs", "final_info")


class MirageVecEnv(VecEnv):
    """An SB3 ``VecEnv`` over a Mirage vector env.

    Args:
        env: a ``VectorEnv`` with ``metadata["autoreset_mode"] == AutoresetMode.SAME_STEP``
            (``gymnasium.make_vec(..., vectorization_mode="vector_entry_point")``).
        observation: how observations become SB3 images (default ``ImageObservation`` with
            the last frame and its depth).
    """

    def __init__(self, env: VectorEnv, observation: ImageObservation | None = None) -> None:
        if env.metadata.get("autoreset_mode") != AutoresetMode.SAME_STEP:
            raise ValueError(
                f"MirageVecEnv needs a vector env that resets in the same step (AutoresetMode.SAME_STEP), got "
                f"{env.metadata.get('autoreset_mode')}"
            )
        self.env = env
        self.transform = observation or ImageObservation(env.single_observation_space)
        self._actions: np.ndarray | None = None
        super().__init__(env.num_envs, self.transform.observation_space, env.single_action_space)

    # ------------------------------------------------------------------ stepping

    def reset(self) -> VecEnvObs:
        seeds = None if all(s is None for s in self._seeds) else self._seeds
        options = self._options[0] if all(o == self._options[0] for o in self._options) else None
        if options is None:
            raise ValueError("MirageVecEnv passes one options dict to all sub-envs; got different ones per sub-env")
        obs, infos = self.env.reset(seed=seeds, options=options or None)
        self.reset_infos = self._unbatch(infos)
        self._reset_seeds()
        self._reset_options()
        return self.transform(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_async() must be called before step_wait()")
        actions = self._actions
        if isinstance(self.action_space, gym.spaces.Box):
            actions = np.asarray(actions, dtype=np.float32)
        obs, rewards, terminated, truncated, vector_infos = self.env.step(actions)
        self._actions = None
        infos = self._unbatch(vector_infos)
        dones = terminated | truncated
        if dones.any():
            # SB3 reports the info of the step that ended the episode (VecMonitor, EvalCallback read it).
            final_infos = self._unbatch(vector_infos["final_info"])
            for i in np.flatnonzero(dones):
                infos[i] = final_infos[i]
                infos[i]["terminal_observation"] = self.transform(vector_infos["final_obs"][i])
                infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return self.transform(obs), rewards.astype(np.float32), dones, infos

    def _unbatch(self, vector_infos: dict[str, Any]) -> list[dict[str, Any]]:
        """Gymnasium's batched info dict (values plus ``_key`` masks) -> one dict per sub-env."""
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for key, value in vector_infos.items():
            if key.startswith("_") or key in _FINAL:
                continue
            mask = vector_infos.get(f"_{key}", np.ones(self.num_envs, bool))
            for i in np.flatnonzero(mask):
                item = value[i]
                infos[i][key] = item.item() if isinstance(item, np.generic) else item
        return infos

    def close(self) -> None:
        self.env.close()

    # ------------------------------------------------------------------ attributes

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """Attributes are shared by all sub-envs of the batched env: one value per index."""
        value = getattr(self.env, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        if len(list(self._get_indices(indices))) != self.num_envs:
            raise ValueError("attributes of the batched env are shared: set them for all sub-envs")
        setattr(self.env, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        """Calls the batched env's method once; its result is reported for every index."""
        result = getattr(self.env, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        if self.render_mode != "rgb_array":
            return [None] * self.num_envs
        return list(self.env.render())
