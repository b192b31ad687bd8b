"""The generator interface, declared once: what the environments, evaluation, benchmarks and the
viewer may rely on, satisfied by :class:`~mirage_gym.model.generator.MirageGenerator` (a generated
world) and :class:`~mirage_gym.envs.oracle.OracleGenerator` (the ground-truth renderer).

Callers branch on these declared members (``renders_ground_truth``, ``memory_modes``), never
on a concrete class. ``isinstance(obj, Generator)`` checks that the members are present.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor

if TYPE_CHECKING:  # annotations only: this module sits below both implementations
    from mirage_gym.memory.protocols import MemoryStore
    from mirage_gym.model.generator import ChunkOutput
    from mirage_gym.world import Renderer

__all__ = ["Generator"]


@runtime_checkable
class Generator(Protocol):
    """Chunked generation of ``B`` scenes' frames and metric depth for given camera poses.

    Attributes:
        renders_ground_truth: ``True`` when frames are the procedural house rendered exactly
            (the oracle): ``start`` then needs the scenes' ``renderers``.
        memory_modes: the modes :meth:`set_memory` accepts (empty: the memory cannot be chosen).
    """

    renders_ground_truth: bool
    memory_modes: tuple[str, ...]

    @property
    def memory(self) -> str:
        """The scene memory in use: ``"latent"``, ``"pixel"``, ``"none"``, or ``"oracle"``."""
        ...

    def set_memory(self, mode: str) -> None:
        """Switch the scene memory. Correct at any time: a running episode continues with an empty
        memory of the new kind (what was remembered in another kind cannot be carried over)."""
        ...

    @property
    def memory_store(self) -> MemoryStore | None:
        """The scene memory's store (``None`` without one, or before :meth:`start`)."""
        ...

    def memory_bytes(self) -> list[int]:
        """Bytes the scene memory holds, per scene (empty before :meth:`start`)."""
        ...

    @property
    def batch_size(self) -> int:
        """Scenes since the last full :meth:`start` (0 before it)."""
        ...

    @property
    def device(self) -> torch.device: ...

    @property
    def max_depth(self) -> float:
        """Metres: the largest depth the generator reports."""
        ...

    def check_geometry(self, resolution: int, chunk: int) -> None:
        """``ValueError`` unless the generator makes ``chunk``-frame chunks of square ``resolution`` frames."""
        ...

    def start(
        self,
        images: Tensor,
        cam_to_world: Tensor,
        intrinsics: Tensor,
        scenes: Sequence[int] | None = None,
        *,
        renderers: Sequence[Renderer] | None = None,
    ) -> ChunkOutput:
        """Start scenes from ``images`` ``[S, H, W, 3]`` uint8 at ``cam_to_world`` ``[S, 4, 4]``.

        ``scenes``: ``None`` starts ``B = S`` fresh scenes, otherwise the indices to restart.
        ``renderers``: the scenes' ground truth; used only where ``renders_ground_truth``.
        """
        ...

    def step(self, cam_to_world: Tensor, generator: object = None) -> ChunkOutput:
        """The next chunk of every scene for poses ``[B, T, 4, 4]`` (``generator``: torch noise generator(s))."""
        ...
