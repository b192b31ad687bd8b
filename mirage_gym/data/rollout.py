"""Rolling planned episodes out of the batched vector env, one :class:`Episode` at a time.

An episode is named by its index ``k`` in the collection plan and played from seed
``seed + k``: the sub-env that runs it is reseeded with that seed when the episode starts
(``reset(seed=[...], options={"reset_mask": ...})``), and the policy's own randomness is drawn
from a stream of the same seed. Its content therefore depends only on ``k``, not on which
sub-env slot, batch or Ray worker collects it: resuming a killed collection, or fanning it out
over workers, gives the same episodes.

Policies are batched: ``act`` gets the observations of every slot and returns their actions.
"""

from __future__ import annotations

import copy
import io
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium import spaces

import mirage_gym  # noqa: F401  (registers the environments)
from mirage_gym.envs import ENV_IDS

__all__ = ["Episode", "EpisodeRunner", "Policy", "RandomPolicy", "SB3Policy", "episode_seed", "make_policy"]

_ACTION_STREAM = 0xAC7  # mixes into an episode's seed for the policy's random stream
_FINAL = ("final_obs", "final_info")


def episode_seed(seed: int, index: int) -> int:
    """The reset seed of episode ``index`` of a collection seeded ``seed``."""
    return int(seed) + int(index)


@dataclass
class Episode:
    """One finished episode in Minari's layout: ``T`` transitions, ``T + 1`` observations and infos."""

    index: int
    seed: int
    observations: dict[str, np.ndarray]  # each [T + 1, ...]: the reset observation, then one per step
    actions: np.ndarray  # [T, ...]
    rewards: np.ndarray  # [T] float64
    terminations: np.ndarray  # [T] bool
    truncations: np.ndarray  # [T] bool
    infos: dict[str, np.ndarray]  # each [T + 1]: the reset info, then one per step

    @property
    def steps(self) -> int:
        return len(self.rewards)

    @property
    def generated_frames(self) -> int:
        """Frames the generator made for the episode (its steps times the chunk)."""
        return self.steps * self.observations["rgb"].shape[1]


class Policy(Protocol):
    """A batched policy over the ``num_envs`` slots of a vector env."""

    def begin(self, slot: int, seed: int) -> None:
        """A new episode with reset seed ``seed`` starts in ``slot``."""

    def act(self, observations: dict[str, np.ndarray]) -> np.ndarray:
        """Actions ``[num_envs, ...]`` for batched observations (idle slots get any valid action)."""


class RandomPolicy:
    """Uniform random actions; a slot's stream is seeded from its episode's seed (slot-independent)."""

    def __init__(self, action_space: spaces.Space, num_envs: int) -> None:
        self.action_space = action_space
        self._spaces = [copy.deepcopy(action_space) for _ in range(num_envs)]

    def begin(self, slot: int, seed: int) -> None:
        stream = np.random.SeedSequence([int(seed), _ACTION_STREAM]).generate_state(1)[0]
        self._spaces[slot].seed(int(stream))

    def act(self, observations: dict[str, np.ndarray]) -> np.ndarray:
        return np.stack([np.asarray(space.sample()) for space in self._spaces])


class SB3Policy:
    """A stable-baselines3 PPO model acting deterministically on :class:`~mirage_gym.wrappers.ImageObservation`.

    Args:
        model: a PPO ``.zip`` (its path or bytes), as written by ``agents/train_ppo.py``. It holds
            pickles, which stable-baselines3 runs while loading: trusted files only.
        observation_space: the env's single observation space.
        frames, depth: the image layout the model was trained on; by default read from the
            model's ``"image"`` channels (``frames * (3 + depth)``, depth preferred when both fit).
    """

    def __init__(self, model: str | Path | bytes, observation_space: spaces.Dict, *, frames: int | None = None,
                 depth: bool | None = None, device: str = "cpu") -> None:
        try:
            from stable_baselines3 import PPO
            from stable_baselines3.common.preprocessing import is_image_space_channels_first
        except ImportError as err:
            raise ImportError("an sb3 policy needs stable-baselines3: pip install 'mirage-gym[agents]'") from err
        from mirage_gym.wrappers import ImageObservation

        source = io.BytesIO(model) if isinstance(model, bytes) else model
        try:
            self.model = PPO.load(source, device=device)
        except Exception as err:  # sb3 raises many kinds on a bad zip
            raise ValueError(f"could not load a stable-baselines3 PPO model from {_describe(model)}: {err}") from err
        model_space = self.model.observation_space
        if not (isinstance(model_space, spaces.Dict) and "image" in model_space.spaces):
            raise ValueError(f"the PPO model takes {model_space}, not an ImageObservation {{'image': ...}}: train "
                             "it with agents/train_ppo.py")
        image = model_space["image"]
        # SB3 stores image spaces channels-first ([C, H, W]) and transposes channels-last input itself.
        shape = image.shape[1:] + image.shape[:1] if is_image_space_channels_first(image) else image.shape
        chunk = observation_space["rgb"].shape[0]
        frames, depth = _image_layout(shape[-1], chunk, frames, depth)
        self.transform = ImageObservation(observation_space, frames=frames, depth=depth)
        if self.transform.observation_space["image"].shape != shape:
            raise ValueError(f"the PPO model takes images {shape} (H, W, C), the env gives "
                             f"{self.transform.observation_space['image'].shape} (resolution or chunk differ)")

    def begin(self, slot: int, seed: int) -> None:
        pass  # deterministic: nothing to seed

    def act(self, observations: dict[str, np.ndarray]) -> np.ndarray:
        return self.model.predict(self.transform(observations), deterministic=True)[0]


def _describe(model: str | Path | bytes) -> str:
    return f"{len(model)} bytes" if isinstance(model, bytes) else str(model)


def _image_layout(channels: int, chunk: int, frames: int | None, depth: bool | None) -> tuple[int, bool]:
    """The (frames, depth) of an ImageObservation with ``channels`` channels."""
    options = [(f, d) for d in (True, False) for f in range(1, chunk + 1) if f * (3 + d) == channels]
    options = [(f, d) for f, d in options if (frames is None or f == frames) and (depth is None or d == depth)]
    if not options:
        raise ValueError(f"no ImageObservation of a chunk of {chunk} frames has {channels} channels"
                         f" (frames={frames}, depth={depth})")
    return options[0]


def make_policy(policy: str | bytes, action_space: spaces.Space, observation_space: spaces.Dict, num_envs: int,
                device: str = "cpu") -> Policy:
    """``"random"``, or an sb3 PPO model (a ``.zip`` path or its bytes)."""
    if policy == "random":
        return RandomPolicy(action_space, num_envs)
    return SB3Policy(policy, observation_space, device=device)


class EpisodeRunner:
    """Plays planned episodes on one batched vector env, ``num_envs`` at a time.

    Args:
        env_id: ``"MirageRoom-v0"`` or ``"MirageRoomNav-v0"``.
        num_envs: sub-envs of the vector env (one generator call steps them all).
        env_kwargs: keywords of the env (``generator``, ``memory``, ``resolution``, ``chunk``...).
        max_episode_steps: truncation of every episode.
        policy: ``"random"`` or an sb3 PPO model (``.zip`` path or bytes).
        seed: episode ``k`` is reset with ``seed + k``.
    """

    def __init__(self, env_id: str, num_envs: int, env_kwargs: dict[str, Any], max_episode_steps: int,
                 policy: str | bytes, seed: int) -> None:
        if env_id not in ENV_IDS:
            raise ValueError(f"env_id must be one of {ENV_IDS}, got {env_id!r}")
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if int(max_episode_steps) < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        # The runner ends episodes at max_episode_steps itself: a vector env that truncated them would
        # reset the sub-env at once, with a seed that the runner then replaces (a wasted room and start).
        self.env = gym.make_vec(env_id, num_envs=int(num_envs), vectorization_mode="vector_entry_point",
                                max_episode_steps=None, **env_kwargs)
        self.num_envs = self.env.num_envs
        self.max_episode_steps = int(max_episode_steps)
        self.seed = int(seed)
        self.observation_space: spaces.Dict = self.env.single_observation_space
        self.action_space: spaces.Space = self.env.single_action_space
        self.policy = make_policy(policy, self.action_space, self.observation_space, self.num_envs,
                                  device=str(env_kwargs.get("device", "cpu")))

    def run(self, indices: Sequence[int]) -> Iterator[Episode]:
        """Play episodes ``indices`` and yield each as it finishes (not necessarily in order)."""
        queue = deque(int(k) for k in indices)
        if not queue:
            return
        n = self.num_envs
        first = [queue.popleft() for _ in range(min(n, len(queue)))]
        # Idle slots (fewer episodes than slots) replay the first episode's seed; their data is dropped.
        seeds = [episode_seed(self.seed, k) for k in first] + [episode_seed(self.seed, first[0])] * (n - len(first))
        obs, infos = self.env.reset(seed=seeds)
        slots: list[_Recording | None] = [None] * n
        for slot, k in enumerate(first):
            slots[slot] = self._begin(slot, k, obs, infos)
        while any(recording is not None for recording in slots):
            actions = self.policy.act(obs)
            obs, rewards, terminated, _, infos = self.env.step(actions)
            restart = []
            for slot, recording in enumerate(slots):
                if recording is None:
                    continue
                ended = bool(terminated[slot])  # the env has already reset this slot (same-step autoreset)
                truncated = not ended and len(recording.rewards) + 1 >= self.max_episode_steps
                last_obs = infos["final_obs"][slot] if ended else _slot(obs, slot)
                last_info = _slot_info(infos["final_info"] if ended else infos, slot)
                recording.add(actions[slot], rewards[slot], ended, truncated, last_obs, last_info)
                if ended or truncated:
                    yield recording.episode()
                    slots[slot] = None
                    if queue:
                        restart.append((slot, queue.popleft()))
            if restart:
                mask = np.zeros(n, bool)
                mask[[slot for slot, _ in restart]] = True
                obs, new_infos = self.env.reset(seed=[episode_seed(self.seed, k) for _, k in restart],
                                                options={"reset_mask": mask})
                for slot, k in restart:
                    slots[slot] = self._begin(slot, k, obs, new_infos)

    def _begin(self, slot: int, index: int, obs: dict[str, np.ndarray], infos: dict[str, Any]) -> _Recording:
        seed = episode_seed(self.seed, index)
        self.policy.begin(slot, seed)
        return _Recording(index, seed, _slot(obs, slot), _slot_info(infos, slot))

    def close(self) -> None:
        self.env.close()


def _slot(obs: dict[str, np.ndarray], slot: int) -> dict[str, np.ndarray]:
    # Copies: a view would keep the whole batch alive for as long as the episode is recorded.
    return {key: np.array(value[slot]) for key, value in obs.items()}


def _slot_info(infos: dict[str, Any], slot: int) -> dict[str, Any]:
    """One sub-env's info out of Gymnasium's batched info dict (values plus ``_key`` masks)."""
    out = {}
    for key, value in infos.items():
        if key.startswith("_") or key in _FINAL:
            continue
        mask = infos.get(f"_{key}")
        if mask is None or mask[slot]:
            out[key] = value[slot]
    return out


class _Recording:
    """The growing record of one slot's episode."""

    def __init__(self, index: int, seed: int, obs: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        self.index, self.seed = index, seed
        self.observations = [obs]
        self.infos = [info]
        self.actions: list[np.ndarray] = []
        self.rewards: list[float] = []
        self.terminations: list[bool] = []
        self.truncations: list[bool] = []

    def add(self, action, reward, terminated, truncated, obs: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        if info.keys() != self.infos[0].keys():
            raise RuntimeError(f"episode {self.index}: info keys changed from {sorted(self.infos[0])} to "
                               f"{sorted(info)}; a dataset needs the same keys at every step")
        self.actions.append(np.array(action))
        self.rewards.append(float(reward))
        self.terminations.append(bool(terminated))
        self.truncations.append(bool(truncated))
        self.observations.append(obs)
        self.infos.append(info)

    def episode(self) -> Episode:
        keys = self.observations[0].keys()
        return Episode(
            index=self.index,
            seed=self.seed,
            observations={key: np.stack([o[key] for o in self.observations]) for key in keys},
            actions=np.stack(self.actions),
            rewards=np.asarray(self.rewards, np.float64),
            terminations=np.asarray(self.terminations, bool),
            truncations=np.asarray(self.truncations, bool),
            infos={key: np.stack([np.asarray(i[key]) for i in self.infos]) for key in self.infos[0]},
        )
