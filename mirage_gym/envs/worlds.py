"""Ground-truth worlds of the environments: procedural scenes and their renderers, cached per process.

Making a renderer bakes the scene's texture atlas (about half a second for a 4-room house),
so environments that revisit rooms (a fixed list of ``room_seeds``, evaluation sets, several
sub-environments in the same room) share one :class:`World` per room. A world is immutable
after construction, so sharing is safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from mirage_gym.world import Renderer, Scene, make_scene

__all__ = ["World", "get_world"]


@dataclass(frozen=True, eq=False)
class World:
    """A procedural room (``scene``) and its CPU ``renderer``."""

    seed: int
    scene: Scene
    renderer: Renderer


@lru_cache(maxsize=32)
def get_world(seed: int, num_rooms: int | None = None, moving_objects: int = 0) -> World:
    """The world of ``make_scene(seed, num_rooms=..., moving_objects=...)``, built once per process."""
    scene = make_scene(int(seed), num_rooms=num_rooms, moving_objects=moving_objects)
    return World(seed=int(seed), scene=scene, renderer=Renderer(scene))
