"""The fixed evaluation trajectories: seeded camera paths through rooms held out from training.

Four kinds, each chosen for what it tests:

* ``orbit`` -- circle a piece of furniture looking at it: parallax, and a full circle comes
  back to its first pose;
* ``walk_and_return`` -- walk out, turn at least 90 degrees away, retrace the exact poses:
  revisits after the start view has left the screen;
* ``look_around`` -- a 360 degree turn in place that ends at the first pose;
* ``random_walk`` -- a long wander through the house (with moving objects when asked):
  drift, new areas, and what the dynamic filter lets into the memory.

Room seeds start at :data:`~mirage_gym.config.EVAL_ROOM_SEED_OFFSET`: no room seen
in training is ever evaluated. Everything is a pure function of the arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from mirage_gym.config import EVAL_ROOM_SEED_OFFSET
from mirage_gym.world import Scene, make_scene, trajectories

__all__ = ["KINDS", "EvalTrajectory", "make_trajectory", "eval_trajectories"]

KINDS = ("orbit", "walk_and_return", "look_around", "random_walk")
_MAKERS = {
    "orbit": trajectories.orbit,
    "walk_and_return": trajectories.walk_and_return,
    "look_around": trajectories.look_around,
    "random_walk": trajectories.random_walk,
}
_ATTEMPTS = 16  # rooms tried when a trajectory does not fit (an orbit needs a free circle)


@dataclass
class EvalTrajectory:
    """One evaluation path: ``1 + chunks * chunk`` poses (the start frame, then whole chunks)."""

    kind: str
    room_seed: int
    scene: Scene
    cam_to_world: Tensor  # [N, 4, 4]

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.room_seed}"

    @property
    def num_frames(self) -> int:
        return int(self.cam_to_world.shape[0])


def make_trajectory(
    kind: str, room_seed: int, num_frames: int, *, moving_objects: int = 0, seed: int = 0
) -> EvalTrajectory:
    """The ``kind`` trajectory of ``num_frames`` poses in room ``room_seed`` (held out: >= the offset).

    If the house has no space for it (an orbit needs a free circle, moving objects need free
    paths), the next rooms
    ``room_seed + 1, + 2, ...`` are tried; the result names the room actually used.
    """
    if kind not in _MAKERS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if room_seed < EVAL_ROOM_SEED_OFFSET:
        raise ValueError(f"room_seed must be held out from training (>= {EVAL_ROOM_SEED_OFFSET}), got {room_seed}")
    if moving_objects < 0:
        raise ValueError(f"moving_objects must be >= 0, got {moving_objects}")
    last: Exception | None = None
    for attempt in range(_ATTEMPTS):
        room = room_seed + attempt
        try:
            scene = make_scene(room, moving_objects=moving_objects)
        except ValueError as err:  # the moving objects do not fit in this house
            last = err
            continue
        rng = np.random.default_rng([room, KINDS.index(kind), seed])
        try:
            poses = _MAKERS[kind](scene, rng, num_frames)
        except RuntimeError as err:  # no free orbit in this room
            last = err
            continue
        return EvalTrajectory(kind=kind, room_seed=room, scene=scene, cam_to_world=poses)
    raise RuntimeError(f"no room in {room_seed}..{room_seed + _ATTEMPTS - 1} fits a {kind} trajectory: {last}")


def eval_trajectories(
    kinds: Sequence[str],
    rooms: int,
    chunk: int,
    chunks: dict[str, int],
    *,
    moving_objects: int = 2,
    seed: int = 0,
) -> list[EvalTrajectory]:
    """``rooms`` trajectories of each kind, ``1 + chunks[kind] * chunk`` frames each.

    Room ``r`` of every kind starts from seed ``EVAL_ROOM_SEED_OFFSET + 100 * r`` (spaced so that
    retries of one room never reach the next); only ``random_walk`` rooms get ``moving_objects``
    (the revisit trajectories compare static scenes).
    """
    if rooms < 1 or chunk < 1:
        raise ValueError(f"rooms and chunk must be >= 1, got {rooms} and {chunk}")
    unknown = [k for k in kinds if k not in _MAKERS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {list(kinds)}")
    missing = [k for k in kinds if int(chunks.get(k, 0)) < 1]
    if missing:
        raise ValueError(f"chunks must give >= 1 chunk for every kind, missing or < 1: {missing}")
    out = []
    for kind in kinds:
        for r in range(rooms):
            frames = 1 + int(chunks[kind]) * chunk
            movers = moving_objects if kind == "random_walk" else 0
            out.append(make_trajectory(kind, EVAL_ROOM_SEED_OFFSET + 100 * r, frames, moving_objects=movers, seed=seed))
    return out
