"""The tasks of the environments: what a step is worth, when an episode ends, what info reports.

A :class:`Task` owns its reset options (and their validation), its per-episode state (the
floor seen so far, a goal), its observations, its info keys and its reward terms; the
simulator only calls its hooks:

=========================================  ===================================================
hook                                       returns
=========================================  ===================================================
``check_option(key, value)``               one sub-env's validated option value (``ValueError``)
``start(episode, rng, options)``           the episode's :class:`TaskState` (nothing mutated)
``observation_spaces()`` / ``observe``     extra observation entries (e.g. ``"goal"``)
``rewards(state, transition, new_floor)``  the reward terms ``{name: float}``, of ``reward_terms``
``terminated(state)``                      whether the episode ends (after ``rewards``)
``info(state)``                            the task's info entries (``"coverage"``, ``"explored_m2"``, ...)
=========================================  ===================================================

:meth:`Task.step` and :meth:`Task.reset_info` tie them together: every info carries
``reward_<term>`` for each declared term (0 at reset), and the reward is their sum. Adding a
task is one subclass plus its registration::

    gymnasium.register("MyTask-v0", entry_point="mirage_gym.envs:MirageRoomEnv",
                       vector_entry_point="mirage_gym.envs:MirageRoomVectorEnv",
                       kwargs={"task": MyTask()}, max_episode_steps=200)

(a task keeps its per-episode state in its :class:`TaskState`, so one instance serves every env).

Every episode runs under one physics (:attr:`Episode.physics`, see
:mod:`mirage_gym.envs.physics`), and the built-in tasks measure in that world:

* ``"ground_truth"``: computed on the procedural house, never on generated frames, so rewards
  are exact and do not depend on how good the generator is (below);
* ``"generated"``: computed on the generated world, with no house at all (a start picture has
  none): exploration is the floor area the generated frames have shown free, in square metres
  (:class:`GeneratedCoverage`), and PointNav goals are metric offsets from the start whose
  distance is Euclidean (:func:`~mirage_gym.envs.physics.goal_from_offset`).

Every task reports exploration under two names, each with one meaning under both physics, so a
dataset or an evaluation that mixes episodes cannot mix units:

* ``info["explored_m2"]``: the floor area shown so far this episode, square metres (the start
  view included; it never decreases within an episode). Each physics measures it its own way
  (below, and :class:`GeneratedCoverage`), so the same walk does not give the same number under
  both: generated physics counts 0.1 m cells whose column a frame shows free within 3 m
  horizontally, the house counts navigable 0.25 m cells whose floor a 32x32 render shows within
  3 m of the camera. With the oracle in a house, generated physics reported 2-2.7 times the
  house's area (``mirage-gym eval rl --quick``, three policies). Compare it within one physics,
  or by rank;
* ``info["coverage"]``: the fraction of the house's navigable floor seen, in [0, 1]. Only a house
  has a total: under generated physics it is :data:`UNKNOWN_COVERAGE` (``inf``), a float outside
  [0, 1], so the keys and dtypes of the info are the same in every episode, a mean over a mix of
  episodes is ``inf`` rather than silently wrong, and ``math.isfinite`` tells the two apart. Not
  ``nan``: ``nan != nan``, and Gymnasium's ``check_env`` compares infos with ``==``, so it would
  fail every env under generated physics.

The exploration reward is the newly shown floor, m^2, under both (the step's increase of
``explored_m2``).

Under ground-truth physics:

* **Coverage** -- after every step the chunk's camera poses are rendered with ground-truth
  depth at :data:`COVERAGE_RESOLUTION` pixels (cheap: a few milliseconds) and
  :meth:`Scene.coverage` marks the navigable floor cells seen within 3 m. A cell counts once
  per episode. Every task keeps it (``info["coverage"]``, their fraction of the navigable floor;
  ``info["explored_m2"]``, their number times the cell area); exploration is rewarded by it.
* **Geodesic distance** -- shortest paths over the free navigation cells (8-neighbourhood,
  no corner cutting) from the goal, computed once per episode with Dijkstra; the distance
  of a position is the smallest ``|p - c| + D(c)`` over the 3x3 cells ``c`` around it, so it is
  continuous within a cell and equals the straight-line distance near the goal.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra
from torch import Tensor

from mirage_gym import geometry
from mirage_gym.envs.physics import goal_distance, goal_from_offset
from mirage_gym.envs.worlds import World
from mirage_gym.world import Scene

__all__ = [
    "COVERAGE_RESOLUTION",
    "MAX_OFFSET_GOAL_DISTANCE",
    "UNKNOWN_COVERAGE",
    "Coverage",
    "Episode",
    "ExplorationTask",
    "GeneratedCoverage",
    "NavState",
    "PointNavTask",
    "Task",
    "TaskState",
    "TaskStep",
    "Transition",
    "geodesic_distances",
    "reward_key",
]

COVERAGE_RESOLUTION = 32  # pixels of the ground-truth depth used for coverage
MAX_OFFSET_GOAL_DISTANCE = 4.0  # metres: the farthest goal drawn as an offset (generated physics)
# info["coverage"] under generated physics, which has no house and so no total floor: a float outside [0, 1]
# that equals itself (nan would not, and Gymnasium's check_env compares infos with ==). See the module.
UNKNOWN_COVERAGE = math.inf


def reward_key(term: str) -> str:
    """The info key of a reward term (``"explored"`` -> ``"reward_explored"``, as Gymnasium's MuJoCo envs)."""
    return f"reward_{term}"


@dataclass(frozen=True)
class Episode:
    """A sub-env's new episode as a task sees it in :meth:`Task.start`."""

    world: World | None  # the procedural house (scene and renderer); None for a start picture (no house)
    start_pose: Tensor  # [4, 4] cam_to_world of the start view
    fov: float  # degrees, the env camera's field of view
    physics: str = "ground_truth"  # "ground_truth" (the house decides) or "generated" (the generated world does)

    @property
    def scene(self) -> Scene:
        if self.world is None:
            raise RuntimeError("this episode has no procedural house (it started from a picture)")
        return self.world.scene

    @property
    def start(self) -> np.ndarray:
        """The start position ``[3]`` (float32, metres)."""
        return self.start_pose[:3, 3].numpy()


@dataclass(frozen=True)
class Transition:
    """One step of a sub-env as a task sees it in :meth:`Task.step` (collisions already applied)."""

    world: World | None  # the procedural house; None for an episode started from a picture
    poses: Tensor  # [T, 4, 4] the chunk's poses: the motion that was allowed
    times: Tensor  # [T] seconds since the episode start, of each frame
    collided: bool  # whether the move was stopped (an obstacle, or under generated physics unseen space)
    depth: np.ndarray  # [T, H, W] the chunk's generated depth (metres, clipped to the observation space)
    physics: str = "ground_truth"  # the episode's physics
    blocked_by: str | None = None  # "obstacle", "unseen" (generated physics only) or None
    generated_floor: float = 0.0  # m^2 of floor the chunk's generated frames showed for the first time (generated)

    @property
    def position(self) -> np.ndarray:
        """Where the step ended ``[3]`` (float32, metres)."""
        return self.poses[-1, :3, 3].numpy()


class Coverage:
    """The navigable floor cells of the house seen this episode (ground-truth depth, see the module)."""

    def __init__(self, episode: Episode) -> None:
        self.world = episode.world
        self.intrinsics = geometry.intrinsics_from_fov(episode.fov, COVERAGE_RESOLUTION, COVERAGE_RESOLUTION)
        self.covered = self._seen(episode.start_pose[None], torch.zeros(1))  # [gh, gw] bool
        self.navigable = int(self.world.scene.navigable.sum())

    def _seen(self, poses: Tensor, times: Tensor) -> np.ndarray:
        size = COVERAGE_RESOLUTION
        depth = self.world.renderer.render(poses, self.intrinsics, size, size, time=times).depth
        return self.world.scene.coverage(depth, poses, self.intrinsics)

    def update(self, poses: Tensor, times: Tensor) -> float:
        """Mark what ``poses`` ``[T, 4, 4]`` at ``times`` ``[T]`` see; returns the newly seen floor in m^2."""
        seen = self._seen(poses, times)
        new_cells = int((seen & ~self.covered).sum())
        self.covered |= seen
        return new_cells * self.world.scene.grid_cell**2

    def observe(self, transition: Transition) -> float:
        """The floor first seen in ``transition``, m^2 (see :meth:`update`)."""
        return self.update(transition.poses, transition.times)

    @property
    def fraction(self) -> float:
        """Fraction of the navigable floor seen this episode."""
        return float(self.covered.sum()) / max(self.navigable, 1)

    @property
    def area(self) -> float:
        """Square metres of navigable floor seen this episode."""
        return float(self.covered.sum()) * self.world.scene.grid_cell**2


class GeneratedCoverage:
    """The floor the generated frames have shown free this episode (generated physics: no house, no total).

    The simulator's :class:`~mirage_gym.envs.physics.GeneratedPhysics` measures it and hands each
    step's new area over in :attr:`Transition.generated_floor`.
    """

    def __init__(self) -> None:
        self.area = 0.0  # m^2 shown so far, the start view included (the simulator adds it before the first step)

    def observe(self, transition: Transition) -> float:
        self.area += float(transition.generated_floor)
        return float(transition.generated_floor)

    @property
    def fraction(self) -> float:
        """:data:`UNKNOWN_COVERAGE`: a generated world has no known total floor to be a fraction of."""
        return UNKNOWN_COVERAGE


def episode_coverage(episode: Episode) -> Coverage | GeneratedCoverage:
    """The coverage measure of ``episode``'s physics."""
    return GeneratedCoverage() if episode.physics == "generated" else Coverage(episode)


@dataclass
class TaskState:
    """Per-episode state every task keeps; a task with more state subclasses it."""

    coverage: Coverage | GeneratedCoverage


@dataclass
class NavState(TaskState):
    """Per-episode state of PointNav: the goal and the distance field towards it."""

    goal: np.ndarray  # [3] world position
    distances: np.ndarray | None  # [gh, gw] metres from each cell centre to the goal (inf: unreachable); None:
    # generated physics, where the distance is Euclidean
    distance: float  # current distance of the camera (geodesic in the house, Euclidean in a generated world)
    success: bool = False


@dataclass(frozen=True)
class TaskStep:
    """What :meth:`Task.step` returns: the reward (the sum of the terms), termination, the info entries."""

    reward: float
    terminated: bool
    info: dict[str, Any]


class Task(ABC):
    """What a task adds to options, observations, rewards and info. See the module for the hooks.

    Class attributes:
        option_dims: the task's reset options, each with the number of dimensions of one
            sub-env's value (a vector env's reset may add one leading dimension: one value per
            reset sub-env, split by the simulator before :meth:`check_option`).
        reward_terms: the names of the reward terms :meth:`rewards` returns, reported in
            ``info["reward_<term>"]``.
    """

    option_dims: ClassVar[Mapping[str, int]] = {}
    reward_terms: ClassVar[tuple[str, ...]] = ()

    def __init__(self, collision_penalty: float = 0.1) -> None:
        if not isinstance(collision_penalty, (int, float)) or not math.isfinite(collision_penalty) \
                or collision_penalty < 0:
            raise ValueError(f"collision_penalty must be finite and >= 0, got {collision_penalty!r}")
        self.collision_penalty = float(collision_penalty)

    @property
    def option_keys(self) -> frozenset[str]:
        return frozenset(self.option_dims)

    # ------------------------------------------------------------------ hooks

    def check_option(self, key: str, value: Any) -> Any:
        """One sub-env's value of the task's option ``key``, validated and converted (``ValueError``)."""
        return value

    def observation_spaces(self) -> dict[str, spaces.Space]:
        return {}

    def start(self, episode: Episode, rng: np.random.Generator, options: dict[str, Any]) -> TaskState:
        """The episode's state (``options``: the task's checked options; draw only from ``rng``)."""
        return TaskState(coverage=episode_coverage(episode))

    def observe(self, state: TaskState, cam_to_world: np.ndarray) -> dict[str, np.ndarray]:
        return {}

    @abstractmethod
    def rewards(self, state: TaskState, transition: Transition, new_floor: float) -> dict[str, float]:
        """The reward terms of one step, one per name in :attr:`reward_terms` (``new_floor``: m^2 first seen)."""

    def terminated(self, state: TaskState) -> bool:
        return False

    def info(self, state: TaskState) -> dict[str, Any]:
        """The task's info entries, at reset and after every step (the same keys and types each time).

        ``"explored_m2"`` is the floor area shown so far (m^2) under both physics; ``"coverage"``
        is the fraction of the house's navigable floor seen, :data:`UNKNOWN_COVERAGE` (``inf``) under
        generated physics (a generated world has no known total).
        """
        return {"coverage": float(state.coverage.fraction), "explored_m2": float(state.coverage.area)}

    # ------------------------------------------------------------------ called by the simulator

    def reset_info(self, state: TaskState) -> dict[str, Any]:
        return {**self.info(state), **{reward_key(term): 0.0 for term in self.reward_terms}}

    def step(self, state: TaskState, transition: Transition) -> TaskStep:
        new_floor = state.coverage.observe(transition)
        terms = self.rewards(state, transition, new_floor)
        if list(terms) != list(self.reward_terms):
            raise RuntimeError(f"{type(self).__name__}.rewards returned the terms {list(terms)}, but its "
                               f"reward_terms declare {list(self.reward_terms)}")
        reward = sum(terms.values())
        info = {**self.info(state), **{reward_key(term): float(value) for term, value in terms.items()}}
        return TaskStep(reward=float(reward), terminated=bool(self.terminated(state)), info=info)

    def _collision(self, transition: Transition) -> float:
        return -self.collision_penalty if transition.collided else 0.0


class ExplorationTask(Task):
    """``MirageRoom-v0``: newly shown floor (m^2) minus ``collision_penalty`` per collision.

    Reward terms: ``explored`` (the floor first seen in the step, m^2, under both physics: the
    step's increase of ``info["explored_m2"]``) and ``collision``.
    """

    reward_terms = ("explored", "collision")

    def rewards(self, state, transition, new_floor):
        return {"explored": new_floor, "collision": self._collision(transition)}


class PointNavTask(Task):
    """``MirageRoomNav-v0``: Habitat-style PointNav with a dense geodesic progress reward.

    Reward terms: ``progress`` (the decrease of the geodesic distance to the goal, metres),
    ``collision`` (``-collision_penalty`` per collision) and ``success`` (``success_bonus`` when
    the camera gets within ``success_distance``, geodesic, of the goal, which ends the episode).
    Reset option ``goal``: a world position ``[3]`` on the free floor, reachable from the start.

    Under generated physics there is no house to be reachable in: a drawn goal is a metric offset
    from the start, ``min_goal_distance`` to :data:`MAX_OFFSET_GOAL_DISTANCE` metres away in a
    uniformly drawn direction, at the camera's height; distance and success are Euclidean on
    the floor plane (an option ``goal`` is taken as given).
    """

    option_dims = {"goal": 1}
    reward_terms = ("progress", "collision", "success")

    def __init__(
        self,
        collision_penalty: float = 0.1,
        success_distance: float = 0.5,
        success_bonus: float = 10.0,
        min_goal_distance: float = 1.0,
    ) -> None:
        super().__init__(collision_penalty)
        if not success_distance > 0 or not min_goal_distance > success_distance or not success_bonus >= 0 \
                or not math.isfinite(min_goal_distance) or not math.isfinite(success_bonus):
            raise ValueError(
                f"need success_distance > 0, min_goal_distance > success_distance and success_bonus >= 0 (finite), "
                f"got {success_distance}, {min_goal_distance} and {success_bonus}"
            )
        self.success_distance = float(success_distance)
        self.success_bonus = float(success_bonus)
        self.min_goal_distance = float(min_goal_distance)

    def check_option(self, key, value):
        goal = np.asarray(value, dtype=np.float64)
        if goal.shape != (3,) or not np.isfinite(goal).all():
            raise ValueError(f"options['goal'] must be a finite world position [3], got shape {list(goal.shape)}")
        return goal

    def observation_spaces(self) -> dict[str, spaces.Space]:
        # Houses are at most a few tens of metres across.
        return {"goal": spaces.Box(-100.0, 100.0, (3,), np.float32)}

    def start(self, episode, rng, options):
        start = episode.start
        if episode.physics == "generated":  # no house: a metric offset from the start, Euclidean distance
            if "goal" in options:
                goal = options["goal"].astype(np.float32)
            else:
                distance = rng.uniform(self.min_goal_distance, max(self.min_goal_distance, MAX_OFFSET_GOAL_DISTANCE))
                angle = rng.uniform(-math.pi, math.pi)
                goal = goal_from_offset(episode.start_pose, (distance * math.cos(angle), distance * math.sin(angle)))
            goal[2] = start[2]
            return NavState(coverage=episode_coverage(episode), goal=goal, distances=None,
                            distance=goal_distance(start, goal))
        scene = episode.scene
        if "goal" in options:
            goal = options["goal"].astype(np.float32)
        else:
            goal = scene.sample_goal(rng, start, self.min_goal_distance)
        distances = geodesic_distances(scene, goal)
        distance = geodesic_distance(scene, distances, start)
        if not math.isfinite(distance):
            raise ValueError(f"the goal {goal.tolist()} cannot be reached from the start {start.tolist()}")
        return NavState(coverage=Coverage(episode), goal=goal, distances=distances, distance=distance)

    def observe(self, state: NavState, cam_to_world: np.ndarray) -> dict[str, np.ndarray]:
        rot, centre = cam_to_world[:3, :3], cam_to_world[:3, 3]
        return {"goal": (rot.T @ (state.goal - centre)).astype(np.float32)}

    def rewards(self, state: NavState, transition, new_floor):
        if state.distances is None:  # generated physics: Euclidean on the floor plane
            distance = goal_distance(transition.position, state.goal)
        else:
            distance = geodesic_distance(transition.world.scene, state.distances, transition.position)
            if not math.isfinite(distance):  # nowhere near a reachable cell: no progress either way
                distance = state.distance
        progress = state.distance - distance
        state.distance = distance
        state.success = distance <= self.success_distance
        return {
            "progress": progress,
            "collision": self._collision(transition),
            "success": self.success_bonus if state.success else 0.0,
        }

    def terminated(self, state: NavState) -> bool:
        return state.success

    def info(self, state: NavState) -> dict[str, Any]:
        return {**super().info(state), "success": bool(state.success), "distance_to_goal": float(state.distance)}


def geodesic_distances(scene: Scene, goal: np.ndarray) -> np.ndarray:
    """Metres from every navigation cell centre to ``goal`` ``[3]`` over free cells (``inf``: unreachable).

    8-neighbourhood; a diagonal move needs both orthogonal neighbours free (no corner cutting).
    The goal's own cell is the source, at its straight-line distance from the goal.
    """
    free = scene.free_cells(scene.default_radius)
    gh, gw = free.shape
    ids = np.arange(gh * gw).reshape(gh, gw)
    ri, ci = np.nonzero(free)
    rows, cols, weights = [], [], []
    for di, dj in ((0, 1), (1, 0), (1, 1), (1, -1)):  # each undirected edge once
        rj, cj = ri + di, ci + dj
        inside = (rj >= 0) & (rj < gh) & (cj >= 0) & (cj < gw)
        a_r, a_c, b_r, b_c = ri[inside], ci[inside], rj[inside], cj[inside]
        ok = free[b_r, b_c]
        if di and dj:  # diagonal: both orthogonal neighbours must be free
            ok &= free[a_r + di, a_c] & free[a_r, a_c + dj]
        rows.append(ids[a_r[ok], a_c[ok]])
        cols.append(ids[b_r[ok], b_c[ok]])
        weights.append(np.full(int(ok.sum()), scene.grid_cell * math.hypot(di, dj)))
    graph = coo_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(gh * gw, gh * gw)
    ).tocsr()
    row, col, inside = scene.cell_of(goal[None])
    if not inside[0] or not free[row[0], col[0]]:
        raise ValueError(f"the goal {goal.tolist()} is not on a free navigation cell")
    source = int(ids[row[0], col[0]])
    dist = dijkstra(graph, directed=False, indices=source).reshape(gh, gw)
    centre = scene.cell_centers()[row[0], col[0]]
    return dist + float(np.linalg.norm(centre[:2] - goal[:2]))


GEODESIC_SEARCH_CELLS = 4  # how far (cells) geodesic_distance looks for a reachable cell around a position


def geodesic_distance(scene: Scene, distances: np.ndarray, position: np.ndarray) -> float:
    """Geodesic distance of ``position`` ``[3]``: the smallest ``|p - c| + D(c)`` over the cells around it.

    The 3x3 cells around it first; where none of them reaches the goal (a body pressed against a wall
    or in a doorway can stand where the navigation grid, with its clearance, counts every nearby cell
    as blocked), rings further out, up to :data:`GEODESIC_SEARCH_CELLS` cells; ``inf`` only beyond that.
    """
    gh, gw = distances.shape
    row, col, _ = scene.cell_of(np.asarray(position, np.float64)[None])
    centres = scene.cell_centers()
    for ring in range(1, GEODESIC_SEARCH_CELLS + 1):
        r0, r1 = max(0, row[0] - ring), min(gh, row[0] + ring + 1)
        c0, c1 = max(0, col[0] - ring), min(gw, col[0] + ring + 1)
        near = np.linalg.norm(centres[r0:r1, c0:c1, :2] - np.asarray(position)[:2], axis=-1) + distances[r0:r1, c0:c1]
        if np.isfinite(near).any():
            return float(near.min())
    return math.inf
