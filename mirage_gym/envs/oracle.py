"""Oracle mode: the ground-truth renderer behind the generator interface.

``generator="oracle"`` makes an environment's observations the procedural ground truth,
rendered exactly for the chunk's poses (moving objects at each frame's time). It is named as
such because it is not a generated world: use it to debug agents and tasks and to measure
upper bounds (what an agent could do with a perfect world model). It is never a fallback.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mirage_gym.model.generator import ChunkOutput
from mirage_gym.world import Renderer

__all__ = ["OracleGenerator"]


class OracleGenerator:
    """Renders the ground truth behind the :class:`~mirage_gym.model.protocols.Generator` interface.

    Each scene has its own clock: :meth:`start` sets it to 0 and every frame of :meth:`step`
    advances it by ``frame_time`` seconds, as the environments' clocks do. The oracle keeps
    no memory of its own (the world itself is the memory), so :meth:`memory_bytes` is zero.
    It has no latents: ``ChunkOutput.latents`` has zero channels and ``cache_mask`` is empty.

    Args:
        frame_time: seconds per frame.
        max_depth: depth beyond this (or where no surface is hit) is reported as ``max_depth``.
    """

    renders_ground_truth = True  # start() needs the scenes' renderers
    memory_modes: tuple[str, ...] = ()  # the world itself is the memory: nothing to choose
    memory = "oracle"

    def __init__(self, frame_time: float = 0.25, max_depth: float = 20.0) -> None:
        if frame_time <= 0 or max_depth <= 0:
            raise ValueError(f"frame_time and max_depth must be positive, got {frame_time} and {max_depth}")
        self.frame_time = float(frame_time)
        self.max_depth = float(max_depth)
        self._renderers: list[Renderer] = []
        self._times: Tensor | None = None  # [B] seconds
        self._intrinsics: Tensor | None = None
        self._image_size: tuple[int, int] | None = None

    @property
    def batch_size(self) -> int:
        return 0 if self._times is None else int(self._times.shape[0])

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def memory_store(self) -> None:
        return None

    def memory_bytes(self) -> list[int]:
        return [0] * self.batch_size

    def set_memory(self, mode: str) -> None:
        if mode != self.memory:
            raise ValueError(f"the oracle renders the ground truth and keeps no memory; memory={mode!r} applies to a "
                             "generated world")

    def check_geometry(self, resolution: int, chunk: int) -> None:
        """Any square resolution and chunk length can be rendered."""

    def _depth(self, depth: Tensor) -> Tensor:
        return torch.nan_to_num(depth, posinf=self.max_depth).clamp(0.0, self.max_depth)

    def start(
        self,
        images: Tensor,
        cam_to_world: Tensor,
        intrinsics: Tensor,
        scenes: Sequence[int] | None = None,
        *,
        renderers: Sequence[Renderer] | None = None,
    ) -> ChunkOutput:
        """Start scenes from ``images`` ``[S, H, W, 3]`` at ``cam_to_world`` ``[S, 4, 4]``.

        ``renderers`` are the ground truth of the ``S`` scenes; ``scenes`` as in
        :meth:`MirageGenerator.start`. Returns the images with their ground-truth depth.
        """
        if images.dim() != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 [S, H, W, 3], got {images.dtype} {tuple(images.shape)}")
        s, height, width = images.shape[:3]
        if renderers is None:
            raise ValueError("the oracle renders the ground truth: start() needs the scenes' renderers")
        if tuple(cam_to_world.shape) != (s, 4, 4) or len(renderers) != s:
            raise ValueError(f"need cam_to_world [{s}, 4, 4] and {s} renderers, got {tuple(cam_to_world.shape)} "
                             f"and {len(renderers)}")
        if scenes is None:
            index = list(range(s))
        else:
            index = [int(i) for i in scenes]
            if len(index) != s or len(set(index)) != s or not all(0 <= i < self.batch_size for i in index):
                raise ValueError(f"scenes must list {s} distinct indices in [0, {self.batch_size}), got {index}")
        depth = torch.stack([
            r.render(cam_to_world[i : i + 1], intrinsics, height, width, time=0.0).depth[0]
            for i, r in enumerate(renderers)
        ])
        if scenes is None:
            self._renderers = list(renderers)
            self._times = torch.zeros(s)
            self._intrinsics = intrinsics.float().cpu()
            self._image_size = (height, width)
        else:
            for slot, i in enumerate(index):
                self._renderers[i] = renderers[slot]
                self._times[i] = 0.0
        return ChunkOutput(
            rgb=images.cpu()[:, None],
            depth=self._depth(depth)[:, None],
            latents=torch.zeros(s, 0, 1, 0, 0),
            cache_mask=torch.zeros(s, 1, 0, 0, dtype=torch.bool),
        )

    def step(self, cam_to_world: Tensor, generator: object = None) -> ChunkOutput:
        """Render the chunk ``cam_to_world`` ``[B, T, 4, 4]`` of every scene (``generator`` is unused: no noise)."""
        if self._times is None:
            raise RuntimeError("call start() before step()")
        b = self.batch_size
        if cam_to_world.dim() != 4 or cam_to_world.shape[0] != b or cam_to_world.shape[2:] != (4, 4):
            raise ValueError(f"cam_to_world must be [{b}, T, 4, 4], got {tuple(cam_to_world.shape)}")
        n = cam_to_world.shape[1]
        height, width = self._image_size
        frame_times = self._times[:, None] + self.frame_time * torch.arange(1, n + 1)[None]  # [B, T]
        outs = [
            r.render(cam_to_world[i].cpu(), self._intrinsics, height, width, time=frame_times[i])
            for i, r in enumerate(self._renderers)
        ]
        self._times = frame_times[:, -1].clone()
        return ChunkOutput(
            rgb=torch.stack([o.rgb for o in outs]),
            depth=self._depth(torch.stack([o.depth for o in outs])),
            latents=torch.zeros(b, 0, n, 0, 0),
            cache_mask=torch.zeros(b, n, 0, 0, dtype=torch.bool),
        )
