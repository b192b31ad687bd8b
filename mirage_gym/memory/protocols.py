"""The interface of a scene memory, declared once: what :class:`~mirage_gym.memory.LatentCache` and
:class:`~mirage_gym.memory.PointCloudMemory` both offer, and what their users may rely on.

Both stores hold several scenes (``scene`` ids) and are written and read with posed, calibrated
views (OpenCV camera convention, :mod:`mirage_gym.geometry`). What a value is differs: latent
tokens ``[N, C, h, w]`` for the latent cache, RGB pixels ``[N, H, W, 3]`` uint8 for the point cloud.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

from torch import Tensor

__all__ = ["MemoryStore", "PersistentMemoryStore"]


@runtime_checkable
class MemoryStore(Protocol):
    """A scene memory: write posed views, read them back for target cameras, clear, measure.

    ``len(store)`` is the number of stored items (tokens or points) over all scenes and
    ``nbytes`` the bytes they take.
    """

    def __len__(self) -> int: ...

    @property
    def nbytes(self) -> int:
        """Bytes held by the store, all scenes together."""
        ...

    def write(
        self,
        values: Tensor,
        depth: Tensor,
        cam_to_world: Tensor,
        intrinsics: Tensor,
        keep: Tensor | None = None,
        scene: Tensor | int | None = None,
    ) -> None:
        """Store ``N`` views: ``values`` with metric ``depth`` at ``cam_to_world`` ``[N, 4, 4]`` (``keep``: filter)."""
        ...

    def read(
        self,
        cam_to_world: Tensor,
        intrinsics: Tensor,
        height: int,
        width: int,
        scene: Tensor | int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Project the memory onto ``M`` target cameras: values and a validity mask ``[M, height, width]``."""
        ...

    def points(self, scene: int = 0) -> tuple[Tensor, Tensor]:
        """World points ``[P, 3]`` of one scene and their values ``[P, ...]`` (copies)."""
        ...

    def clear(self, scene: int | None = None) -> None:
        """Forget one scene, or every scene with ``None``."""
        ...


@runtime_checkable
class PersistentMemoryStore(MemoryStore, Protocol):
    """A :class:`MemoryStore` that can be saved to a file and loaded back (the latent cache)."""

    def save(self, path: str | os.PathLike) -> None: ...

    @classmethod
    def load(cls, path: str | os.PathLike, device: object = None) -> PersistentMemoryStore: ...
