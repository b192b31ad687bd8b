"""The policy zoo of ``mirage-gym eval rl``: random, scripted and PPO policies behind one small interface.

Every policy acts on the environment's own observation (the ``Dict`` of ``rgb``, ``depth``,
``cam_to_world``, ``intrinsics`` and, for ``MirageRoomNav-v0``, ``goal``) and is deterministic
given the seed passed to :meth:`Policy.reset` (the evaluation passes the episode's seed), so
the same seeds give the same episodes in every run.

Scripted policies are real closed-loop policies: they read the (generated, in the world-model
env) depth of the chunk's last frame and its camera pose, never the ground-truth house.

* ``random`` -- uniform actions from the action space (seeded per episode);
* ``turn_in_place`` -- turns left on the spot: sees the room around the start, never moves;
* ``bump_and_turn`` -- straight ahead until the depth in front is short, then turns away (to
  the side with more room) for a seeded number of steps;
* ``wall_follower`` -- keeps a wall on its right at about a metre (right-hand rule);
* ``frontier`` -- a frontier explorer: maps the floor it has seen and the obstacles from the
  depth and the poses on a 2D grid, heads for the nearest frontier (a seen floor cell next
  to unseen space), and turns away when the depth in front is short;
* ``goal_seeker`` (``MirageRoomNav-v0`` only) -- turns towards ``obs["goal"]``, goes straight,
  and side-steps obstacles by turning to the freer side;
* ``PPOPolicy`` -- a stable-baselines3 PPO ``.zip`` (from ``agents/train_ppo.py``), fed through
  :class:`~mirage_gym.wrappers.ImageObservation` with the wrapper settings it was trained with,
  acting deterministically.

**SB3 zips are pickles**: loading one runs code from the file. Load only zips you made or
trust (the zoo's are rebuilt by the recipe in ``agents/zoo/README.md``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from mirage_gym.provenance import file_sha256

__all__ = [
    "SCRIPTED",
    "Policy",
    "RandomPolicy",
    "TurnInPlace",
    "BumpAndTurn",
    "WallFollower",
    "FrontierExplorer",
    "GoalSeeker",
    "PPOPolicy",
    "DEFAULT_WRAPPER_KWARGS",
]

# The observation wrapper settings of agents/hyperparams.yml (what agents/train_ppo.py trains with).
DEFAULT_WRAPPER_KWARGS: dict[str, dict[str, Any]] = {
    "MirageRoom-v0": {"frames": 2, "depth": True},
    "MirageRoomNav-v0": {"frames": 1, "depth": True},
}

# Discrete(7) actions of the envs: stay, forward, back, turn left, turn right, look up, look down.
_STAY, _FORWARD, _LEFT, _RIGHT = 0, 1, 3, 4


def _world_points(obs: dict[str, np.ndarray], max_depth: float, grid: int = 32) -> np.ndarray:
    """World points ``[N, 3]`` of the last frame's depth (subsampled to about ``grid`` x ``grid``)."""
    pose = np.asarray(obs["cam_to_world"], np.float64)[-1]
    depth = np.asarray(obs["depth"], np.float64)[-1, ..., 0]
    k = np.asarray(obs["intrinsics"], np.float64)
    h, w = depth.shape
    step = max(1, h // grid)
    v, u = np.mgrid[0:h:step, 0:w:step]
    z = depth[::step, ::step]
    keep = (z > 0.05) & (z < max_depth)
    cam = np.stack([(u + 0.5 - k[0, 2]) / k[0, 0] * z, (v + 0.5 - k[1, 2]) / k[1, 1] * z, z], -1)[keep]
    return cam @ pose[:3, :3].T + pose[:3, 3]


class Policy(ABC):
    """A policy of the zoo. ``check`` raises ``ValueError`` when it cannot act in an env."""

    name: str = "policy"

    def check(self, observation_space: spaces.Dict, action_space: spaces.Space, env_id: str) -> None:
        """``ValueError`` unless this policy can act with these spaces (called before anything runs)."""
        if not isinstance(action_space, (spaces.Box, spaces.Discrete)):
            raise ValueError(f"policy {self.name!r} needs a Box or Discrete action space, got {action_space}")

    @abstractmethod
    def reset(self, seed: int) -> None:
        """Start an episode; everything random in the policy is drawn from ``seed``."""

    @abstractmethod
    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray | int:
        """The action for one (unbatched) observation."""

    def describe(self) -> dict[str, Any]:
        """What identifies this policy in the results (and in the resume log)."""
        return {"name": self.name, "kind": type(self).__name__}


class RandomPolicy(Policy):
    name = "random"

    def __init__(self) -> None:
        self._rng = np.random.default_rng(0)
        self._space: spaces.Space | None = None

    def check(self, observation_space, action_space, env_id) -> None:
        super().check(observation_space, action_space, env_id)
        self._space = action_space

    def reset(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def act(self, obs):
        if self._space is None:
            raise RuntimeError("call check() with the env's spaces before act()")
        if isinstance(self._space, spaces.Discrete):
            return int(self._rng.integers(self._space.n))
        return self._rng.uniform(self._space.low, self._space.high).astype(np.float32)


class _Scripted(Policy):
    """Shared by the scripted policies: the action space, and depth read-outs of the last frame."""

    blocked_distance = 0.6  # metres ahead within which an obstacle stops a scripted policy going straight
    corridor = 0.3  # metres either side of the heading: the body (camera radius 0.2) and a margin
    step_length = 0.25  # metres of a full forward action (the envs' max_translation default)

    def __init__(self) -> None:
        self._space: spaces.Space | None = None
        self._rng = np.random.default_rng(0)

    def check(self, observation_space, action_space, env_id) -> None:
        super().check(observation_space, action_space, env_id)
        for key in ("depth", "cam_to_world", "intrinsics"):
            if key not in observation_space.spaces:
                raise ValueError(f"policy {self.name!r} reads obs[{key!r}], which this env does not give")
        if isinstance(action_space, spaces.Box) and action_space.shape != (4,):
            raise ValueError(f"policy {self.name!r} drives a Box(4) action (forward, right, yaw, pitch), "
                             f"got {action_space}")
        self._space = action_space

    def reset(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._last_position: np.ndarray | None = None
        self._last_forward = 0.0

    def command(self, forward: float, yaw: float) -> np.ndarray | int:
        """Forward (-1..1) and yaw (-1..1, left positive) as an action of the env's space."""
        if self._space is None:
            raise RuntimeError("call check() with the env's spaces before act()")
        self._last_forward = float(forward)
        if isinstance(self._space, spaces.Discrete):
            if abs(yaw) >= 0.5:
                return _LEFT if yaw > 0 else _RIGHT
            return _FORWARD if forward >= 0.5 else _STAY
        return np.array([np.clip(forward, -1, 1), 0.0, np.clip(yaw, -1, 1), 0.0], np.float32)

    def blocked(self, obs: dict[str, np.ndarray]) -> bool:
        """Something stands in the body's corridor within ``blocked_distance``, or the last forward move stalled.

        The depth of the last frame is lifted to world points (pinhole ``intrinsics``, ``cam_to_world``,
        world z up); points 0.1-2 m above the floor, less than ``corridor`` metres to either side of the
        heading and ahead by less than ``blocked_distance``, block the way. Low furniture right in front
        of the body is below a 90-degree view, so a forward move that went under half as far as asked
        (read from the poses: the body was stopped) also counts.
        """
        pose = np.asarray(obs["cam_to_world"], np.float64)[-1]
        position = pose[:2, 3].copy()
        stalled = (self._last_position is not None and self._last_forward > 0.2
                   and np.linalg.norm(position - self._last_position) < 0.5 * self.step_length * self._last_forward)
        self._last_position = position
        world = _world_points(obs, max_depth=self.blocked_distance + 1.0)
        if len(world) == 0:
            return bool(stalled)
        heading = pose[:2, 2] / max(np.linalg.norm(pose[:2, 2]), 1e-9)
        offset = world[:, :2] - position
        ahead = offset @ heading
        side = np.abs(offset @ np.array([-heading[1], heading[0]]))
        solid = (world[:, 2] > 0.1) & (world[:, 2] < 2.0) & (side < self.corridor) & (ahead > 0)
        return bool(stalled or (solid & (ahead < self.blocked_distance)).any())

    @staticmethod
    def depth_bands(obs: dict[str, np.ndarray]) -> tuple[float, float, float]:
        """Near depth (10th percentile, metres) of the left, centre and right thirds of the last frame.

        Rows from a third of the way down to the bottom: obstacles in front of the body, not the
        ceiling. The floor there is >= 1.4 m away for a camera at 1.4 m with a 90-degree view.
        """
        depth = np.asarray(obs["depth"])[-1, ..., 0]
        h, w = depth.shape
        band = depth[h // 3 :]
        thirds = (band[:, : w // 3], band[:, w // 3 : w - w // 3], band[:, w - w // 3 :])
        return tuple(float(np.percentile(part, 10)) for part in thirds)  # type: ignore[return-value]


class TurnInPlace(_Scripted):
    name = "turn_in_place"

    def act(self, obs):
        return self.command(0.0, 1.0)


class BumpAndTurn(_Scripted):
    """Straight until the depth in front is short, then a turn away of a seeded 3-8 steps."""

    name = "bump_and_turn"

    def reset(self, seed: int) -> None:
        super().reset(seed)
        self._turning = 0
        self._direction = 1.0

    def act(self, obs):
        left, centre, right = self.depth_bands(obs)
        if self._turning > 0:
            self._turning -= 1
            return self.command(0.0, self._direction)
        if self.blocked(obs):
            self._direction = 1.0 if left >= right else -1.0
            self._turning = int(self._rng.integers(2, 8))
            return self.command(0.0, self._direction)
        return self.command(1.0, 0.0)


class WallFollower(_Scripted):
    """Right-hand rule on depth: keep the right third's near depth about ``keep`` metres."""

    name = "wall_follower"
    keep = 1.0

    def act(self, obs):
        left, centre, right = self.depth_bands(obs)
        if self.blocked(obs):
            return self.command(0.0, 1.0)  # wall ahead: turn left, keeping it on the right
        if right > 2.0 * self.keep:
            return self.command(0.5, -0.6)  # lost the wall: curve right to find it again
        # Proportional steering on the wall distance (yaw left positive: too close -> turn left).
        return self.command(1.0, float(np.clip((self.keep - right) * 1.5, -0.5, 0.5)))


class FrontierExplorer(_Scripted):
    """Frontier-based exploration (Yamauchi 1997) on a 2D grid built from depth and poses.

    Each step the last frame's depth is lifted to world points (pinhole ``intrinsics``,
    ``cam_to_world``, world z up): points near the floor mark *free* cells, points between
    0.2 m and 2 m high mark *obstacle* cells. A frontier is a free cell with an unknown
    4-neighbour; the policy heads for the nearest one at least ``min_distance`` away, turning on
    the spot when it is more than 35 degrees off the heading, and turns to the freer side when
    the depth in front is short.
    """

    name = "frontier"
    cell = 0.25
    size = 160  # cells: a 40 m square centred on the start
    min_distance = 0.75

    def reset(self, seed: int) -> None:
        super().reset(seed)
        self._state = np.zeros((self.size, self.size), np.int8)  # 0 unknown, 1 free, 2 obstacle
        self._origin: np.ndarray | None = None
        self._escape = 0
        self._escape_dir = 1.0
        self._target: tuple[int, int] | None = None
        self._banned = np.zeros((self.size, self.size), bool)

    def _cells(self, xy: np.ndarray) -> np.ndarray:
        idx = np.floor((xy - self._origin) / self.cell).astype(int) + self.size // 2
        return np.clip(idx, 0, self.size - 1)

    def _update(self, obs) -> np.ndarray:
        pose = np.asarray(obs["cam_to_world"], np.float64)[-1]
        if self._origin is None:
            self._origin = pose[:2, 3].copy()
        world = _world_points(obs, max_depth=3.5)
        floor = world[world[:, 2] < 0.15]
        obstacle = world[(world[:, 2] > 0.2) & (world[:, 2] < 2.0)]
        if len(floor):
            cells = self._cells(floor[:, :2])
            free = self._state[cells[:, 0], cells[:, 1]] != 2
            self._state[cells[free, 0], cells[free, 1]] = 1
        if len(obstacle):
            cells = self._cells(obstacle[:, :2])
            self._state[cells[:, 0], cells[:, 1]] = 2
        return pose

    def _frontiers(self) -> np.ndarray:
        free = self._state == 1
        unknown = np.pad(self._state == 0, 1, constant_values=False)
        near_unknown = unknown[:-2, 1:-1] | unknown[2:, 1:-1] | unknown[1:-1, :-2] | unknown[1:-1, 2:]
        return np.argwhere(free & near_unknown)

    def act(self, obs):
        pose = self._update(obs)
        left, centre, right = self.depth_bands(obs)
        if self._escape > 0:
            self._escape -= 1
            return self.command(0.0, self._escape_dir)
        if self.blocked(obs):
            if self._target is not None:  # the way to it is blocked: try another frontier
                r, c = self._target
                self._banned[max(r - 2, 0):r + 3, max(c - 2, 0):c + 3] = True
                self._target = None
            self._escape_dir = 1.0 if left >= right else -1.0
            self._escape = int(self._rng.integers(1, 4))
            return self.command(0.0, self._escape_dir)
        here = self._cells(pose[:2, 3][None])[0]
        if self._target is None or self._state[self._target] != 1 or not self._is_frontier(*self._target) \
                or np.abs(np.subtract(self._target, here)).max() <= 1:
            self._target = self._pick(here)
        if self._target is None:
            return self.command(0.0, 1.0)  # nothing left to explore in sight: look around
        centre_xy = (np.array(self._target) - self.size // 2 + 0.5) * self.cell + self._origin
        return self._steer(pose, centre_xy - pose[:2, 3])

    def _is_frontier(self, r: int, c: int) -> bool:
        window = self._state[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2]
        return bool((window == 0).any())

    def _pick(self, here: np.ndarray) -> tuple[int, int] | None:
        """The nearest frontier at least ``min_distance`` away with a straight way there clear of obstacles."""
        frontiers = self._frontiers()
        if len(frontiers) == 0:
            return None
        frontiers = frontiers[~self._banned[frontiers[:, 0], frontiers[:, 1]]]
        distance = np.linalg.norm(frontiers - here, axis=1) * self.cell
        frontiers, distance = frontiers[distance >= self.min_distance], distance[distance >= self.min_distance]
        # Ties broken by the seeded rng, so equal frontiers do not always pull the same way.
        order = np.lexsort((self._rng.random(len(distance)), np.round(distance, 3)))
        obstacle = self._state == 2
        inflated = obstacle.copy()  # one cell of margin for the body
        inflated[1:] |= obstacle[:-1]
        inflated[:-1] |= obstacle[1:]
        inflated[:, 1:] |= obstacle[:, :-1]
        inflated[:, :-1] |= obstacle[:, 1:]
        for i in order[:64]:
            target = frontiers[i]
            n = int(np.abs(target - here).max()) * 2 + 1
            line = np.rint(here + (target - here) * np.linspace(0, 1, n)[:, None]).astype(int)
            if not inflated[line[2:, 0], line[2:, 1]].any():
                return int(target[0]), int(target[1])
        return None

    def _steer(self, pose: np.ndarray, offset: np.ndarray) -> np.ndarray | int:
        # The camera's forward axis (z) projected on the floor gives the heading; yaw is left positive.
        forward = pose[:2, 2]
        heading = math.atan2(forward[1], forward[0])
        bearing = math.atan2(offset[1], offset[0]) - heading
        bearing = (bearing + math.pi) % (2 * math.pi) - math.pi  # left positive (world z up)
        if abs(bearing) > math.radians(35):
            return self.command(0.0, 1.0 if bearing > 0 else -1.0)
        return self.command(1.0, float(np.clip(bearing / math.radians(15), -1, 1)))


class GoalSeeker(_Scripted):
    """PointNav by hand: turn to ``obs["goal"]`` (camera frame), go straight, turn to the freer side when blocked."""

    name = "goal_seeker"

    def check(self, observation_space, action_space, env_id) -> None:
        super().check(observation_space, action_space, env_id)
        if "goal" not in observation_space.spaces:
            raise ValueError(f"policy {self.name!r} needs obs['goal'] (MirageRoomNav-v0); {env_id} has none")

    def reset(self, seed: int) -> None:
        super().reset(seed)
        self._avoid = 0
        self._avoid_dir = 1.0

    def act(self, obs):
        left, centre, right = self.depth_bands(obs)
        if self._avoid > 0:
            self._avoid -= 1
            if self._avoid == 0:
                return self.command(1.0, 0.0)
            return self.command(0.0, self._avoid_dir)
        if self.blocked(obs):
            self._avoid_dir = 1.0 if left >= right else -1.0
            self._avoid = int(self._rng.integers(2, 6))
            return self.command(0.0, self._avoid_dir)
        goal = np.asarray(obs["goal"], np.float64)  # camera frame: x right, z forward
        bearing = -math.atan2(goal[0], goal[2])  # left positive
        if abs(bearing) > math.radians(30):
            return self.command(0.0, 1.0 if bearing > 0 else -1.0)
        return self.command(1.0, float(np.clip(bearing / math.radians(15), -1, 1)))


def _same_space(env_space: spaces.Dict, model_space: spaces.Space) -> bool:
    """Equal spaces, where SB3 may hold an image channel-first (``VecTransposeImage``) that the env gives channel-last."""
    if not isinstance(model_space, spaces.Dict) or set(env_space.spaces) != set(model_space.spaces):
        return False
    for key, space in env_space.spaces.items():
        other = model_space[key]
        if space == other:
            continue
        if (isinstance(space, spaces.Box) and isinstance(other, spaces.Box) and space.dtype == other.dtype
                and len(space.shape) == 3 and other.shape == (space.shape[2], space.shape[0], space.shape[1])):
            continue
        return False
    return True


SCRIPTED: dict[str, type[Policy]] = {
    cls.name: cls for cls in (RandomPolicy, TurnInPlace, BumpAndTurn, WallFollower, FrontierExplorer, GoalSeeker)
}


class PPOPolicy(Policy):
    """A stable-baselines3 PPO ``.zip``, acting deterministically on :class:`ImageObservation` images.

    The zip is loaded (unpickled: trust it) at construction, so a missing or unreadable file is
    an error before anything runs; :meth:`check` compares the observation space it was trained
    on with the env's (through the wrapper), so a policy for another env, resolution or frame
    stack is an error before anything runs too.
    """

    def __init__(self, path: str | Path, name: str | None = None, wrapper_kwargs: dict[str, Any] | None = None,
                 device: str = "cpu") -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"policy file {path} does not exist (see agents/zoo/README.md for the recipe "
                                    f"that builds the zoo's PPO checkpoints)")
        try:
            from stable_baselines3 import PPO
        except ImportError as err:  # pragma: no cover - the dev and agents extras install it
            raise ValueError("PPO policies need stable-baselines3: pip install -e '.[agents]'") from err
        try:
            self.model = PPO.load(path, device=device)
        except Exception as err:  # noqa: BLE001  any unreadable zip: say which file
            raise ValueError(f"policy file {path} is not a loadable stable-baselines3 PPO zip: {err}") from err
        self.path = path
        self.name = name or path.stem
        self.wrapper_kwargs = dict(wrapper_kwargs) if wrapper_kwargs is not None else None
        self.sha256 = file_sha256(path)
        self._transform = None

    def check(self, observation_space, action_space, env_id) -> None:
        from mirage_gym.wrappers import ImageObservation

        super().check(observation_space, action_space, env_id)
        kwargs = self.wrapper_kwargs if self.wrapper_kwargs is not None else DEFAULT_WRAPPER_KWARGS.get(env_id, {})
        try:
            transform = ImageObservation(observation_space, **kwargs)
        except ValueError as err:
            raise ValueError(f"policy {self.name!r} ({self.path}): {err}") from err
        if not _same_space(transform.observation_space, self.model.observation_space):
            raise ValueError(
                f"policy {self.name!r} ({self.path}) was trained for another observation space: it expects "
                f"{self.model.observation_space}, the env ({env_id}, wrapper {kwargs}) gives "
                f"{transform.observation_space} (another env, resolution or frame stack?)")
        if self.model.action_space != action_space:
            raise ValueError(f"policy {self.name!r} ({self.path}) acts in {self.model.action_space}, "
                             f"the env ({env_id}) in {action_space}")
        self._transform = transform

    def reset(self, seed: int) -> None:
        pass  # deterministic actions

    def act(self, obs):
        if self._transform is None:
            raise RuntimeError("call check() with the env's spaces before act()")
        action, _ = self.model.predict(self._transform(obs), deterministic=True)
        return action

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "ppo", "path": str(self.path), "sha256": self.sha256,
                "wrapper_kwargs": self.wrapper_kwargs}
