"""The tasks of the environments: exploration (coverage) and point-goal navigation (PointNav).

Both are computed on the ground-truth scene, never on generated frames, so rewards are
exact and do not depend on how good the generator is:

* **Coverage** -- after every step the chunk's camera poses are rendered with ground-truth
  depth at :data:`COVERAGE_RESOLUTION` pixels (cheap: a few milliseconds) and
  :meth:`Scene.coverage` marks the navigable floor cells seen within 3 m. A cell counts once
  per episode.
* **Geodesic distance** -- shortest paths over the free navigation cells (8-neighbourhood,
  no corner cutting) from the goal, computed once per episode with Dijkstra; the distance
  of a position is the smallest ``|p - c| + D(c)`` over the 3x3 cells ``c`` around it, so it is
  continuous within a cell and equals the straight-line distance near the goal.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

from mirage_gym.world import Scene

__all__ = ["COVERAGE_RESOLUTION", "Task", "ExplorationTask", "PointNavTask", "NavState", "geodesic_distances"]

COVERAGE_RESOLUTION = 32  # pixels of the ground-truth depth used for coverage


@dataclass
class NavState:
    """Per-episode state of PointNav: the goal and the geodesic distance field towards it."""

    goal: np.ndarray  # [3] world position
    distances: np.ndarray  # [gh, gw] metres from each cell centre to the goal (inf: unreachable)
    distance: float  # current geodesic distance of the camera


class Task(ABC):
    """What a task adds to observations, options and rewards."""

    option_keys: frozenset[str] = frozenset()

    def __init__(self, collision_penalty: float = 0.1) -> None:
        if not math.isfinite(collision_penalty) or collision_penalty < 0:
            raise ValueError(f"collision_penalty must be finite and >= 0, got {collision_penalty}")
        self.collision_penalty = float(collision_penalty)

    def observation_spaces(self) -> dict[str, spaces.Space]:
        return {}

    def plan(self, scene: Scene, start: np.ndarray, rng: np.random.Generator, options: dict[str, Any]) -> Any:
        """Validate the task's reset options and draw its per-episode state (nothing is mutated)."""
        return None

    def observe(self, state: Any, cam_to_world: np.ndarray) -> dict[str, np.ndarray]:
        return {}

    @abstractmethod
    def reward(
        self, scene: Scene, state: Any, position: np.ndarray, collided: bool, new_cells: int
    ) -> tuple[float, bool, dict[str, Any]]:
        """Reward, termination and extra info of one step (``new_cells``: navigable cells first seen now)."""


class ExplorationTask(Task):
    """``MirageRoom-v0``: newly covered navigable floor (m^2) minus ``collision_penalty`` per collision."""

    def reward(self, scene, state, position, collided, new_cells):
        area = new_cells * scene.grid_cell**2
        return area - self.collision_penalty * float(collided), False, {}


class PointNavTask(Task):
    """``MirageRoomNav-v0``: Habitat-style PointNav with a dense geodesic progress reward.

    Reward per step: the decrease of the geodesic distance to the goal (metres), minus
    ``collision_penalty`` per collision, plus ``success_bonus`` when the camera gets within
    ``success_distance`` (geodesic) of the goal, which ends the episode.
    """

    option_keys = frozenset({"goal"})

    def __init__(
        self,
        collision_penalty: float = 0.1,
        success_distance: float = 0.5,
        success_bonus: float = 10.0,
        min_goal_distance: float = 1.0,
    ) -> None:
        super().__init__(collision_penalty)
        if not success_distance > 0 or not min_goal_distance > success_distance or not success_bonus >= 0:
            raise ValueError(
                f"need success_distance > 0, min_goal_distance > success_distance and success_bonus >= 0, got "
                f"{success_distance}, {min_goal_distance} and {success_bonus}"
            )
        self.success_distance = float(success_distance)
        self.success_bonus = float(success_bonus)
        self.min_goal_distance = float(min_goal_distance)

    def observation_spaces(self) -> dict[str, spaces.Space]:
        # Houses are at most a few tens of metres across.
        return {"goal": spaces.Box(-100.0, 100.0, (3,), np.float32)}

    def plan(self, scene, start, rng, options):
        if "goal" in options:
            goal = np.asarray(options["goal"], dtype=np.float64)
            if goal.shape != (3,) or not np.isfinite(goal).all():
                raise ValueError(f"options['goal'] must be a finite world position [3], got shape {goal.shape}")
            goal = goal.astype(np.float32)
        else:
            goal = scene.sample_goal(rng, start, self.min_goal_distance)
        distances = geodesic_distances(scene, goal)
        distance = geodesic_distance(scene, distances, start)
        if not math.isfinite(distance):
            raise ValueError(f"the goal {goal.tolist()} cannot be reached from the start {start.tolist()}")
        return NavState(goal=goal, distances=distances, distance=distance)

    def observe(self, state: NavState, cam_to_world: np.ndarray) -> dict[str, np.ndarray]:
        rot, centre = cam_to_world[:3, :3], cam_to_world[:3, 3]
        return {"goal": (rot.T @ (state.goal - centre)).astype(np.float32)}

    def reward(self, scene, state: NavState, position, collided, new_cells):
        distance = geodesic_distance(scene, state.distances, position)
        progress = state.distance - distance
        state.distance = distance
        success = distance <= self.success_distance
        reward = progress - self.collision_penalty * float(collided) + self.success_bonus * float(success)
        return reward, success, {"success": success, "distance_to_goal": distance}


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


def geodesic_distance(scene: Scene, distances: np.ndarray, position: np.ndarray) -> float:
    """Geodesic distance of ``position`` ``[3]``: the smallest ``|p - c| + D(c)`` over the 3x3 cells around it."""
    gh, gw = distances.shape
    row, col, _ = scene.cell_of(np.asarray(position, np.float64)[None])
    r0, r1 = max(0, row[0] - 1), min(gh, row[0] + 2)
    c0, c1 = max(0, col[0] - 1), min(gw, col[0] + 2)
    centres = scene.cell_centers()[r0:r1, c0:c1, :2]
    near = np.linalg.norm(centres - np.asarray(position)[:2], axis=-1) + distances[r0:r1, c0:c1]
    return float(near.min())
