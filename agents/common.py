"""Shared by train_ppo.py and evaluate.py: hyperparameters, batched SB3 envs, episode statistics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import yaml

import mirage_gym  # noqa: F401  (registers the environments)
from mirage_gym.config import EVAL_ROOM_SEED_OFFSET
from mirage_gym.sb3 import MirageVecEnv
from mirage_gym.wrappers import ImageObservation

HYPERPARAMS = Path(__file__).with_name("hyperparams.yml")
ENV_IDS = ("MirageRoom-v0", "MirageRoomNav-v0")
# Agents train on the generator's training rooms and are evaluated on rooms no model has seen.
TRAIN_ROOM_SEEDS = range(0, 100_000)
EVAL_ROOM_SEEDS = range(EVAL_ROOM_SEED_OFFSET, EVAL_ROOM_SEED_OFFSET + 50)


def load_hyperparams(env_id: str, path: Path = HYPERPARAMS) -> dict[str, Any]:
    """The zoo-style entry for ``env_id`` (PPO keyword arguments plus ``env_kwargs`` and ``wrapper_kwargs``)."""
    entries = yaml.safe_load(Path(path).read_text())
    if env_id not in entries:
        raise ValueError(f"{path} has no entry for {env_id}; it has {sorted(entries)}")
    return dict(entries[env_id])


def make_sb3_env(
    env_id: str,
    num_envs: int,
    generator: str,
    env_kwargs: dict[str, Any],
    wrapper_kwargs: dict[str, Any],
    **overrides: Any,
) -> MirageVecEnv:
    """A batched Mirage env (one generator for all sub-envs) behind SB3's VecEnv API."""
    if env_id not in ENV_IDS:
        raise ValueError(f"--env must be one of {ENV_IDS}, got {env_id!r}")
    vector = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point",
                          generator=generator, **{**env_kwargs, **overrides})
    return MirageVecEnv(vector, ImageObservation(vector.single_observation_space, **wrapper_kwargs))


@dataclass
class EpisodeStats:
    returns: list[float]
    coverage: list[float]  # fraction of the house's navigable floor seen (inf under generated physics)
    explored_m2: list[float]  # floor area shown, square metres (both physics)
    success: list[float]
    lengths: list[int]
    collisions: list[int]

    def row(self, name: str) -> str:
        def mean_std(values):
            if not np.isfinite(values).all():  # coverage under generated physics: no house total
                return f"{'n/a':>17}"
            return f"{np.mean(values):7.3f} +- {np.std(values):6.3f}"

        success = f"{np.mean(self.success):6.2f}" if self.success else "   n/a"
        return (f"{name:<10} {mean_std(self.returns)}  {mean_std(self.coverage)}  {mean_std(self.explored_m2)}  "
                f"{success}  {np.mean(self.lengths):6.1f}  {mean_std(self.collisions)}")


HEADER = (f"{'policy':<10} {'return':>17}  {'coverage':>17}  {'explored_m2':>17}  {'success':>6}  {'length':>6}  "
          f"{'collisions':>17}")


def run_episodes(venv: MirageVecEnv, act: Callable[[dict[str, np.ndarray]], np.ndarray], episodes: int,
                 seed: int) -> EpisodeStats:
    """Run ``episodes`` episodes (seeds ``seed, seed+1, ...``), ``venv.num_envs`` at a time."""
    stats = EpisodeStats([], [], [], [], [], [])
    n = venv.num_envs
    for first in range(0, episodes, n):
        venv.seed(seed + first)
        obs = venv.reset()
        running = np.zeros(n)
        steps = np.zeros(n, int)
        bumps = np.zeros(n, int)
        active = np.arange(n) < episodes - first
        while active.any():
            obs, rewards, dones, infos = venv.step(act(obs))
            running += rewards
            steps += 1
            bumps += [bool(info.get("collided", False)) for info in infos]
            for i in np.flatnonzero(dones & active):
                stats.returns.append(float(running[i]))
                stats.coverage.append(float(infos[i]["coverage"]))
                stats.explored_m2.append(float(infos[i]["explored_m2"]))
                stats.lengths.append(int(steps[i]))
                stats.collisions.append(int(bumps[i]))
                if "success" in infos[i]:
                    stats.success.append(float(infos[i]["success"]))
                active[i] = False
    return stats
