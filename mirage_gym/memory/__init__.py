"""Spatial memory of the generated world.

* :class:`LatentCache` -- latent tokens at world points in a bounded voxel-hashed store;
  read by projecting straight onto a target camera's latent grid.
* :class:`TokenFilter` -- keeps empty and dynamic tokens out of the cache.
* :class:`PointCloudMemory` -- the pixel-space RGB point cloud of Gen3C/VMem/Spatia, the
  baseline the latent cache is measured against.
* :class:`MemoryStore` -- the interface both stores satisfy (``PersistentMemoryStore`` adds
  save/load, which the latent cache has).
"""

from mirage_gym.memory.filter import (
    FilterResult,
    TokenFilter,
    observed_space,
    pool_depth,
    pool_fraction,
    seen_through,
)
from mirage_gym.memory.latent_cache import POLICIES, LatentCache
from mirage_gym.memory.point_cloud import PointCloudMemory
from mirage_gym.memory.protocols import MemoryStore, PersistentMemoryStore

__all__ = [
    "LatentCache",
    "MemoryStore",
    "PersistentMemoryStore",
    "POLICIES",
    "PointCloudMemory",
    "TokenFilter",
    "FilterResult",
    "observed_space",
    "pool_depth",
    "pool_fraction",
    "seen_through",
]
