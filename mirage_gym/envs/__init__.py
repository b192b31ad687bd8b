"""Gymnasium environments over a generated world: ``MirageRoom-v0`` (exploration) and
``MirageRoomNav-v0`` (point-goal navigation), single and natively batched.

Example::

    import gymnasium as gym
    import mirage_gym  # registers the environments

    env = gym.make("MirageRoom-v0", generator="oracle", resolution=64)
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

    envs = gym.make_vec("MirageRoom-v0", num_envs=8, vectorization_mode="vector_entry_point",
                        generator="path/to/model")
"""

from __future__ import annotations

from mirage_gym.envs.actions import MOVE_NAMES
from mirage_gym.envs.generators import default_weights_path, load_generator
from mirage_gym.envs.oracle import OracleGenerator
from mirage_gym.envs.room import MirageRoomEnv, MirageRoomNavEnv
from mirage_gym.envs.simulator import BOUNDS, MirageSimulator, SimulatorSettings
from mirage_gym.envs.tasks import Episode, ExplorationTask, PointNavTask, Task, TaskState, Transition
from mirage_gym.envs.vector import MirageRoomNavVectorEnv, MirageRoomVectorEnv

__all__ = [
    "ENV_IDS",
    "MOVE_NAMES",
    "MirageRoomEnv",
    "MirageRoomNavEnv",
    "MirageRoomVectorEnv",
    "MirageRoomNavVectorEnv",
    "MirageSimulator",
    "SimulatorSettings",
    "BOUNDS",
    "Task",
    "TaskState",
    "Episode",
    "Transition",
    "OracleGenerator",
    "ExplorationTask",
    "PointNavTask",
    "default_weights_path",
    "load_generator",
]

ENV_IDS = ("MirageRoom-v0", "MirageRoomNav-v0")  # registered on ``import mirage_gym``
