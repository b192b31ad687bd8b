"""Packing ``(scene, voxel ix, iy, iz)`` into one sortable int64 key.

Layout, most significant first: 12 bits of scene (ids ``< 4095``), then 17 bits per voxel
coordinate (offset so that ``[-2**16, 2**16)`` maps to ``[0, 2**17)``). The sign bit
stays 0, so integer order is (scene, ix, iy, iz) lexicographic order: every scene
is one contiguous range of a sorted key array, found with two ``searchsorted``.
With 5 cm voxels the addressable world is +-3.2 km per axis; with 1 mm voxels +-65 m.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MAX_SCENES", "COORD_LIMIT", "voxel_coords", "pack_keys", "scene_bounds"]

_COORD_BITS = 17
_SCENE_SHIFT = 3 * _COORD_BITS  # 51
# One id short of the 12 bits, so the end bound ``(scene + 1) << 51`` never overflows int64.
MAX_SCENES = (1 << (63 - _SCENE_SHIFT)) - 1  # 4095
COORD_LIMIT = 1 << (_COORD_BITS - 1)  # voxel coordinates must lie in [-COORD_LIMIT, COORD_LIMIT)
_COORD_MASK = (1 << _COORD_BITS) - 1


def voxel_coords(xyz: Tensor, voxel_size: float) -> Tensor:
    """Integer voxel coordinates ``[..., 3]`` (long) of world points ``[..., 3]``."""
    return torch.floor(xyz / voxel_size).long()


def pack_keys(coords: Tensor, scene: Tensor) -> Tensor:
    """Keys ``[K]`` int64 from voxel coordinates ``[K, 3]`` and scene ids ``[K]``.

    Callers check ``-COORD_LIMIT <= coords < COORD_LIMIT`` and ``0 <= scene < MAX_SCENES``.
    """
    biased = coords + COORD_LIMIT
    return (
        (scene.long() << _SCENE_SHIFT)
        | (biased[:, 0] << (2 * _COORD_BITS))
        | (biased[:, 1] << _COORD_BITS)
        | biased[:, 2]
    )


def scene_bounds(keys: Tensor, scene: Tensor) -> tuple[Tensor, Tensor]:
    """``[start, end)`` of each scene id in ``scene`` within the sorted ``keys``."""
    scene = scene.long()
    starts = torch.searchsorted(keys, scene << _SCENE_SHIFT)
    ends = torch.searchsorted(keys, (scene + 1) << _SCENE_SHIFT)
    return starts, ends
