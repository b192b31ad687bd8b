"""Z-buffered splatting shared by the latent cache and the point-cloud baseline.

Both memories end a read the same way: points already projected to flat cell
indices with a camera depth are reduced to one winner per cell, the nearest.
Packing ``(depth, index)`` into one int64 makes that a single ``scatter_reduce``
(``amin``) with a deterministic tie-break (equal depth: the lowest index wins),
and lets callers accumulate blocks of points into the same buffer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["EMPTY", "new_zbuffer", "splat", "resolve", "occluded_cells"]

# Sentinel of an empty cell; any packed (depth, index) is smaller.
EMPTY = torch.iinfo(torch.int64).max
_INDEX_BITS = 32
_INDEX_MASK = (1 << _INDEX_BITS) - 1


def new_zbuffer(num_cells: int, device: torch.device | str | None = None) -> Tensor:
    """An empty packed z-buffer ``[num_cells]`` int64."""
    return torch.full((num_cells,), EMPTY, dtype=torch.int64, device=device)


def splat(zbuffer: Tensor, cells: Tensor, depth: Tensor, index: Tensor) -> None:
    """Reduce points into ``zbuffer`` in place: each cell keeps its nearest point.

    Args:
        zbuffer: ``[num_cells]`` int64 from :func:`new_zbuffer` (or an earlier ``splat``).
        cells: ``[K]`` long flat cell index of each point.
        depth: ``[K]`` positive camera depth (callers drop ``z <= near`` first).
        index: ``[K]`` long, ``0 <= index < 2**32``: what the caller wants back per cell.
    """
    # Positive float32 values order like their int32 bit patterns, so (depth bits, index)
    # packed into an int64 orders by depth first and index second.
    depth_bits = depth.float().contiguous().view(torch.int32).long()
    packed = (depth_bits << _INDEX_BITS) | index
    zbuffer.scatter_reduce_(0, cells, packed, reduce="amin")


def resolve(zbuffer: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Winner ``index`` (long), ``depth`` (float32, 0 where empty) and ``mask`` of every cell."""
    mask = zbuffer != EMPTY
    packed = torch.where(mask, zbuffer, torch.zeros_like(zbuffer))
    index = packed & _INDEX_MASK
    depth = (packed >> _INDEX_BITS).to(torch.int32).view(torch.float32)
    return index, depth, mask


def occluded_cells(depth: Tensor, mask: Tensor, margin: float, min_neighbors: int) -> Tensor:
    """Cells whose winner shows through a hole of a nearer surface.

    A cell is rejected when at least ``min_neighbors`` of its 8 neighbours are filled
    and nearer than ``depth / (1 + margin)``. One- and two-cell holes in a surface have
    6-8 such neighbours; a background cell beside a straight silhouette has 3 and one in
    the inner corner of an L-shaped silhouette 5, so with ``min_neighbors >= 6`` genuine
    depth edges are left intact while bleed-through of far tokens is removed.

    Args:
        depth: ``[M, h, w]`` winner depth; mask: ``[M, h, w]`` filled cells.

    Returns:
        ``[M, h, w]`` bool, True where the cell should be emptied.
    """
    m, h, w = depth.shape
    filled = torch.where(mask, depth, torch.full_like(depth, float("inf")))
    padded = F.pad(filled[:, None], (1, 1, 1, 1), value=float("inf"))
    neighbors = F.unfold(padded, kernel_size=3).view(m, 9, h, w)
    neighbors = torch.cat([neighbors[:, :4], neighbors[:, 5:]], dim=1)  # drop the centre
    nearer = neighbors * (1.0 + margin) < depth[:, None]
    return mask & (nearer.sum(dim=1) >= min_neighbors)
