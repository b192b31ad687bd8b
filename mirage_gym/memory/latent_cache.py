"""The latent cache: latent tokens stored as world points in a voxel-hashed store.

A written token is lifted to the world point of its cell centre
(:func:`mirage_gym.geometry.backproject`) and kept with its full latent vector. A
read projects every token of the target camera's scene onto the target's latent
grid, z-buffered, so the generator is conditioned on latents directly: no pixel
rendering, no VAE re-encode.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from mirage_gym.geometry import grid_tangents, points_to_cells, project
from mirage_gym.memory.filter import seen_through
from mirage_gym.memory.checks import check_intrinsics, check_mask, check_poses, check_scenes, check_tensor, lift_valid
from mirage_gym.memory.voxel_keys import COORD_LIMIT, MAX_SCENES, pack_keys, scene_bounds, voxel_coords
from mirage_gym.memory.zbuffer import new_zbuffer, occluded_cells, resolve, splat

__all__ = ["LatentCache", "POLICIES", "INTERPOLATIONS"]

POLICIES = ("newest", "nearest")
INTERPOLATIONS = ("nearest", "bilinear")
# Bilinear reads: a token adds to a cell only within this relative depth of the cell's z-buffer winner
# (the same surface), and only with a weight above _MIN_WEIGHT (a token at a cell centre stays in its cell).
_SURFACE_TOLERANCE = 0.1
_MIN_WEIGHT = 1e-3
_FORMAT = "mirage_gym.LatentCache/1"
# A cell's step to its neighbour along a surface seen at a slant is up to this many times what it spans face-on
# (1 / cos of the slant); a longer step crosses a depth edge rather than a surface.
_MAX_SLANT = 4.0
# A footprint covers a cell another token holds as its own only where it lies this much (relative depth) in front.
_FOOTPRINT_MARGIN = 0.3


def gather_ranges(starts: Tensor, ends: Tensor) -> tuple[Tensor, Tensor]:
    """Concatenated indices of the ranges ``[starts[k], ends[k])`` and the range id of each."""
    lengths = ends - starts
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=starts.device), lengths)
    offsets = torch.cumsum(lengths, 0) - lengths
    within = torch.arange(segment.numel(), device=starts.device) - offsets[segment]
    return starts[segment] + within, segment


def _stable_order(order: Tensor, values: Tensor, descending: bool = False) -> Tensor:
    """Refine ``order`` by ``values`` keeping earlier orderings among ties (one lexsort pass)."""
    return order[torch.sort(values[order], stable=True, descending=descending).indices]


class LatentCache:
    """A bounded, voxel-hashed store of latent tokens at world points, for many scenes.

    **Store.** Five flat tensors sorted by key: ``keys`` int64 ``(scene, ix, iy, iz)``
    (:mod:`~mirage_gym.memory.voxel_keys`), ``xyz`` float32 -- the exact backprojected
    cell centre, not the voxel centre --, ``latents`` ``[P, C]``, ``stamps`` int64 (the
    last written frame that observed the voxel, counted over all writes) and ``dist``
    float32 (distance to the camera that wrote the token). All updates are vectorised
    (sort / unique / searchsorted); there is no Python loop over tokens or frames.

    **One token per voxel**, so the size is bounded by the scene, not by the number of
    frames: rewriting a view replaces tokens in place. ``policy`` picks the survivor:

    * ``"newest"`` (default): the latest write wins. The generator refines and corrects
      what it has already produced, and the freshest latent is the one consistent with
      what the agent saw last; stale or mistaken tokens are overwritten at once.
    * ``"nearest"``: the token written from closest to its camera wins (ties: the newest).
      A closer view covers a smaller footprint per token, so it keeps the finest
      detail, but a voxel is never refreshed from farther away.

    Within one write, ``"newest"`` orders frames by their index in the batch (a later
    frame wins) and, within a frame, prefers the nearest token.

    **Capacity** is per scene. When a write leaves a scene with more than ``capacity``
    tokens, the least recently written voxels (smallest stamp) are evicted first; among
    tokens of the same frame, the farthest from its camera goes first (it is the
    coarsest). A token that is re-observed gets a fresh stamp even if it is kept.

    **Reading** projects all tokens of the target's scene into the target camera
    (:func:`~mirage_gym.geometry.project`, :func:`~mirage_gym.geometry.points_to_cells`)
    and z-buffers them: the nearest token wins a cell, ties go to the smaller key; its
    latent is copied bit for bit. Writing a grid and reading it with the same camera
    gives back the same latents at every valid cell as long as no two cells share a
    voxel (a voxel smaller than a cell's footprint at its depth) -- the cell centre
    re-projects into its own cell.

    **Interpolation** (``interpolation``). ``"nearest"`` (default) copies each cell's
    z-buffer winner. A moved camera puts a token anywhere inside a cell, up to half a cell
    (2 pixels of a 4x autoencoder) from the centre its latent describes, and latents do not
    decode shifted content: with ground-truth depth, a view read from a cache written 5 degrees
    away decodes 8 dB below the autoencoder (``mirage-gym eval``'s reprojection figure).
    ``"bilinear"`` places every visible token by its sub-cell position instead: it adds to the
    4 cells around its projection with bilinear weights, only into cells whose winner lies on
    the same surface (within 10 % of its depth), and each cell is the weighted mean. The
    z-buffer still decides which cells are covered, so both modes cover the same cells, and a
    token read from its own camera stays in its own cell.

    **Footprint** (``max_footprint``, default 1: off). A token describes one cell's worth of surface
    as seen from where it was written; a camera ``r`` times nearer sees that surface span ``r`` cells
    a side, and with one cell per token a wall the agent walks up to falls apart into scattered cells
    the generator paints over. With ``max_footprint`` ``F > 1`` a token seen from nearer also takes the
    cells its footprint covers (up to ``F`` a side), so the remembered wall stays whole: enlarged, as
    coarse as the view it was written from. The footprint is the token's surface patch, oriented: at
    write time each token keeps half its grid step to the next cell along each axis, on its own
    surface (:func:`~mirage_gym.geometry.grid_tangents`), and a cell is covered where its ray meets
    that patch, at the depth where it meets it. A floor or a wall seen at a slant covers the
    foreshortened quad it spans, receding with the surface, not an upright square (which would stand
    as a false obstacle in the depth). A footprint takes a cell another token holds as its own only
    where it lies clearly (``_FOOTPRINT_MARGIN``) in front: on the same surface the token's own cell
    is the better estimate.

    **Occlusion test** (``occlusion_margin``, default ``0.5``; ``None`` disables it). A
    token seen from closer than it was written covers less than a cell and leaves holes
    in near surfaces through which far tokens bleed. A cell is emptied when at least
    ``occlusion_neighbors`` (default 6) of its 8 neighbours hold tokens nearer than
    ``depth / (1 + margin)``: the signature of a hole, never of a silhouette edge (3
    such neighbours, 5 in an inner corner), so the round trip above stays exact.

    **Carving** (:meth:`carve`, the cross-chunk dynamic check). A newly observed frame that
    sees *through* a cached token -- its depth around the token's pixel is clearly beyond
    the token -- shows free space where the cache holds a surface: whatever was there has
    moved away, and the token is dropped. Static surfaces agree with every new view and stay.

    **Empty tokens.** Cells whose depth is non-finite or ``<= 0``, or that ``keep``
    rejects, are not written. Non-finite poses or intrinsics are errors.

    Every public method validates all of its input before changing anything; bad input
    raises ``ValueError`` naming the argument and leaves the cache as it was.
    """

    def __init__(
        self,
        channels: int,
        voxel_size: float = 0.05,
        capacity: int = 200_000,
        num_scenes: int = 1,
        policy: str = "newest",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        occlusion_margin: float | None = 0.5,
        occlusion_neighbors: int = 6,
        interpolation: str = "nearest",
        max_footprint: int = 1,
    ) -> None:
        if not isinstance(channels, int) or channels <= 0:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        if not isinstance(voxel_size, (int, float)) or not 0.0 < float(voxel_size) < float("inf"):
            raise ValueError(f"voxel_size must be a positive finite number, got {voxel_size!r}")
        if not isinstance(capacity, int) or capacity <= 0:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        if not isinstance(num_scenes, int) or not 0 < num_scenes <= MAX_SCENES:
            raise ValueError(f"num_scenes must be an int in [1, {MAX_SCENES}], got {num_scenes!r}")
        if capacity * num_scenes >= 2**31:
            raise ValueError(f"capacity * num_scenes must be below 2**31, got {capacity} * {num_scenes}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        if occlusion_margin is not None and not 0.0 <= float(occlusion_margin) < float("inf"):
            raise ValueError(f"occlusion_margin must be None or a non-negative number, got {occlusion_margin!r}")
        if not isinstance(occlusion_neighbors, int) or not 1 <= occlusion_neighbors <= 8:
            raise ValueError(f"occlusion_neighbors must be an int in [1, 8], got {occlusion_neighbors!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        if isinstance(max_footprint, bool) or not isinstance(max_footprint, int) or max_footprint < 1:
            raise ValueError(f"max_footprint must be an int >= 1, got {max_footprint!r}")
        self.channels = channels
        self.voxel_size = float(voxel_size)
        self.capacity = capacity
        self.num_scenes = num_scenes
        self.policy = policy
        self.dtype = dtype
        self.device = torch.device("cpu" if device is None else device)
        self.occlusion_margin = None if occlusion_margin is None else float(occlusion_margin)
        self.occlusion_neighbors = occlusion_neighbors
        self.interpolation = interpolation
        self.max_footprint = max_footprint
        self.frames_written = 0  # stamps come from this counter
        self._set_store(*self._empty_store())

    # ------------------------------------------------------------------ store
    def _empty_store(self) -> tuple[Tensor, ...]:
        dev = self.device
        return (
            torch.empty(0, dtype=torch.int64, device=dev),
            torch.empty(0, 3, dtype=torch.float32, device=dev),
            torch.empty(0, self.channels, dtype=self.dtype, device=dev),
            torch.empty(0, dtype=torch.int64, device=dev),
            torch.empty(0, dtype=torch.float32, device=dev),
            torch.empty(0, dtype=torch.float32, device=dev),
            torch.empty(0, 2, 3, dtype=torch.float32, device=dev),
        )

    def _set_store(
        self, keys: Tensor, xyz: Tensor, latents: Tensor, stamps: Tensor, dist: Tensor, extent: Tensor, patch: Tensor
    ) -> None:
        self._keys, self._xyz, self._latents, self._stamps = keys, xyz, latents, stamps
        self._dist, self._extent, self._patch = dist, extent, patch

    def _columns(self) -> tuple[Tensor, ...]:
        return self._keys, self._xyz, self._latents, self._stamps, self._dist, self._extent, self._patch

    def _select(self, index: Tensor) -> None:
        self._set_store(*(t[index] for t in self._columns()))

    def __len__(self) -> int:
        return self._keys.numel()

    @property
    def nbytes(self) -> int:
        """Bytes held by the store: keys, points, latents, stamps, distances, extents and patches."""
        return sum(t.numel() * t.element_size() for t in self._columns())

    def num_tokens(self, scene: int | None = None) -> int:
        """Tokens held for one scene (all scenes with ``None``)."""
        if scene is None:
            return len(self)
        start, end = self._scene_range(scene)
        return end - start

    def _scene_range(self, scene: int) -> tuple[int, int]:
        if isinstance(scene, bool) or not isinstance(scene, int) or not 0 <= scene < self.num_scenes:
            raise ValueError(f"scene must be an int in [0, {self.num_scenes}), got {scene!r}")
        starts, ends = scene_bounds(self._keys, torch.tensor([scene], device=self.device))
        return int(starts[0]), int(ends[0])

    def points(self, scene: int = 0) -> tuple[Tensor, Tensor]:
        """World points ``[P, 3]`` and latents ``[P, C]`` of one scene (copies, key order)."""
        start, end = self._scene_range(scene)
        return self._xyz[start:end].clone(), self._latents[start:end].clone()

    def clear(self, scene: int | None = None) -> None:
        """Forget one scene's tokens, or everything (and the frame counter) with ``None``."""
        if scene is None:
            self._set_store(*self._empty_store())
            self.frames_written = 0
            return
        start, end = self._scene_range(scene)
        keep = torch.ones(len(self), dtype=torch.bool, device=self.device)
        keep[start:end] = False
        self._select(keep)

    def __repr__(self) -> str:
        return (
            f"LatentCache(channels={self.channels}, voxel_size={self.voxel_size}, capacity={self.capacity}, "
            f"num_scenes={self.num_scenes}, policy={self.policy!r}, interpolation={self.interpolation!r}, "
            f"max_footprint={self.max_footprint}, "
            f"tokens={len(self)}, nbytes={self.nbytes})"
        )

    # ------------------------------------------------------------------ write
    def write(
        self,
        latents: Tensor,
        depth: Tensor,
        cam_to_world: Tensor,
        intrinsics: Tensor,
        keep: Tensor | None = None,
        scene: Tensor | int | None = None,
    ) -> None:
        """Store the tokens of ``N`` latent grids.

        Args:
            latents: ``[N, C, h, w]`` latent grids.
            depth: ``[N, h, w]`` metric depth of every token (camera ``z``); non-finite or
                non-positive values mark empty tokens, which are not written.
            cam_to_world: ``[N, 4, 4]`` poses.
            intrinsics: ``[3, 3]`` or ``[N, 3, 3]``, the camera of the ``h x w`` grid.
            keep: ``[N, h, w]`` bool, the tokens the filter let through (``None``: all).
            scene: ``[N]`` scene ids (``None``: scene 0; an int: that scene for all).
        """
        latents = check_tensor("latents", latents, 4)
        n, c, h, w = latents.shape
        if c != self.channels:
            raise ValueError(f"latents must have {self.channels} channels, got {c}")
        if not latents.is_floating_point() or not torch.isfinite(latents).all():
            raise ValueError("latents must be finite floating-point values (found NaN/inf or integers)")
        depth = check_tensor("depth", depth, 3)
        if tuple(depth.shape) != (n, h, w):
            raise ValueError(f"depth must have shape {(n, h, w)} to match latents, got {tuple(depth.shape)}")
        if not depth.is_floating_point():
            raise ValueError(f"depth must be floating point, got {depth.dtype}")
        poses = check_poses("cam_to_world", cam_to_world, n).to(self.device)
        k = check_intrinsics("intrinsics", intrinsics, n).to(self.device)
        if keep is not None:
            keep = check_mask("keep", keep, (n, h, w)).to(self.device)
        scene_ids = check_scenes("scene", scene, n, self.num_scenes, self.device)

        surface, points = lift_valid(depth, None, k, poses)
        valid = surface if keep is None else surface & keep
        flat = valid.reshape(-1)
        xyz = points.reshape(-1, 3)[flat]
        tokens = latents.to(self.device, self.dtype).permute(0, 2, 3, 1).reshape(-1, c)[flat]
        frame = torch.arange(n, device=self.device).repeat_interleave(h * w)[flat]
        coords = voxel_coords(xyz, self.voxel_size)
        if coords.numel() and (coords.min() < -COORD_LIMIT or coords.max() >= COORD_LIMIT):
            raise ValueError(
                f"depth and cam_to_world put points outside the addressable +-{COORD_LIMIT * self.voxel_size:g} m "
                f"for voxel_size={self.voxel_size}; use a larger voxel_size"
            )
        keys = pack_keys(coords, scene_ids[frame])
        dist = (xyz - poses[frame, :3, 3]).norm(dim=-1)
        depth = depth.to(self.device, torch.float32)
        span = torch.where(surface, depth, torch.zeros_like(depth)) / k[:, 0, 0, None, None]  # metres a cell spans there
        extent = span.reshape(-1)[flat]
        patch = self._patches(points, surface, poses, span).reshape(-1, 2, 3)[flat]
        stamps = self.frames_written + frame

        # ---- everything is validated: from here on the store changes.
        self._merge(*self._deduplicate(keys, xyz, tokens, stamps, dist, extent, patch))
        self._evict(torch.unique(scene_ids))
        self.frames_written += n

    @staticmethod
    def _patches(points: Tensor, surface: Tensor, poses: Tensor, span: Tensor) -> Tensor:
        """The surface patch each cell of ``N`` grids saw: two half-axes ``[N, h, w, 2, 3]`` in the world.

        Half the surface's step to the next cell along each grid axis (:func:`grid_tangents`): a wall seen
        face-on gives a square of ``span`` (metres a cell spans at its depth) a side, a floor or a wall seen
        at a slant a patch stretched along the slant. A step longer than ``_MAX_SLANT`` spans crosses a
        depth edge (or there is no neighbour): that axis is taken facing the writing camera.
        """
        du, dv = grid_tangents(points, surface)
        axes = []
        for step, camera_axis in ((du, poses[:, None, None, :3, 0]), (dv, poses[:, None, None, :3, 1])):
            length = step.norm(dim=-1)
            sound = (length > 0) & (length <= _MAX_SLANT * span)
            axes.append(torch.where(sound[..., None], step, camera_axis * span[..., None]) / 2)
        return torch.stack(axes, dim=-2)

    def _deduplicate(
        self, keys: Tensor, xyz: Tensor, tokens: Tensor, stamps: Tensor, dist: Tensor, extent: Tensor, patch: Tensor
    ) -> tuple[Tensor, ...]:
        """One token per voxel among new tokens, chosen by the policy; sorted by key."""
        order = torch.arange(keys.numel(), device=self.device)
        if self.policy == "newest":  # key, then latest frame, then nearest
            order = _stable_order(order, dist)
            order = _stable_order(order, stamps, descending=True)
        else:  # key, then nearest, then latest frame
            order = _stable_order(order, stamps, descending=True)
            order = _stable_order(order, dist)
        order = _stable_order(order, keys)
        unique_keys, counts = torch.unique_consecutive(keys[order], return_counts=True)
        winner = order[torch.cumsum(counts, 0) - counts]
        group = torch.repeat_interleave(torch.arange(unique_keys.numel(), device=self.device), counts)
        latest = torch.zeros_like(unique_keys).scatter_reduce(0, group, stamps[order], "amax", include_self=False)
        return unique_keys, xyz[winner], tokens[winner], latest, dist[winner], extent[winner], patch[winner]

    def _merge(
        self, keys: Tensor, xyz: Tensor, tokens: Tensor, stamps: Tensor, dist: Tensor, extent: Tensor, patch: Tensor
    ) -> None:
        """Merge sorted unique new tokens into the sorted store."""
        size = len(self)
        pos = torch.searchsorted(self._keys, keys)
        hit = (pos < size) & (self._keys[pos.clamp(max=max(size - 1, 0))] == keys) if size else pos < 0
        if self.policy == "newest":
            replace = hit
        else:
            replace = hit.clone()
            replace[hit] = dist[hit] <= self._dist[pos[hit]]
        rows = pos[replace]
        self._xyz[rows] = xyz[replace]
        self._latents[rows] = tokens[replace]
        self._dist[rows] = dist[replace]
        self._extent[rows] = extent[replace]
        self._patch[rows] = patch[replace]
        self._stamps[pos[hit]] = stamps[hit]  # new stamps are always the latest

        miss = ~hit
        added = int(miss.sum())
        if added == 0:
            return
        # Sorted merge without a sort: each side's final position is its own rank plus
        # the number of keys of the other side that precede it.
        new_keys = keys[miss]
        new_pos = pos[miss] + torch.arange(added, device=self.device)
        old_pos = torch.arange(size, device=self.device) + torch.searchsorted(new_keys, self._keys)
        merged = []
        for old, new in zip(
            self._columns(),
            (new_keys, xyz[miss], tokens[miss], stamps[miss], dist[miss], extent[miss], patch[miss]),
            strict=True,
        ):
            out = old.new_empty((size + added, *old.shape[1:]))
            out[old_pos] = old
            out[new_pos] = new
            merged.append(out)
        self._set_store(*merged)

    def _evict(self, scenes: Tensor) -> None:
        """Bring every scene in ``scenes`` back to ``capacity``: oldest stamp, then farthest, first."""
        starts, ends = scene_bounds(self._keys, scenes)
        excess = (ends - starts - self.capacity).clamp(min=0)
        over = excess > 0
        if not bool(over.any()):
            return
        index, segment = gather_ranges(starts[over], ends[over])
        order = torch.arange(index.numel(), device=self.device)
        order = _stable_order(order, self._dist[index], descending=True)
        order = _stable_order(order, self._stamps[index])
        order = _stable_order(order, segment)  # already grouped; keeps the within-scene order
        seg_sorted = segment[order]
        lengths = ends[over] - starts[over]
        rank = torch.arange(index.numel(), device=self.device) - (torch.cumsum(lengths, 0) - lengths)[seg_sorted]
        evicted = index[order[rank < excess[over][seg_sorted]]]
        keep = torch.ones(len(self), dtype=torch.bool, device=self.device)
        keep[evicted] = False
        self._select(keep)

    # ------------------------------------------------------------------ carve
    def carve(
        self,
        depth: Tensor,
        cam_to_world: Tensor,
        intrinsics: Tensor,
        scene: Tensor | int | None = None,
        *,
        tolerance: float = 0.1,
        radius: int = 1,
        min_votes: int = 1,
        min_depth: float = 0.05,
        max_depth: float = 50.0,
        align_scale: bool = True,
        return_cells: bool = False,
    ) -> int | tuple[int, Tensor]:
        """Drop the tokens that new frames see through (:func:`~mirage_gym.memory.seen_through`).

        Every token of a frame's scene is projected into the frame; a token goes when at least
        ``min_votes`` frames of its scene observed free space where it is: depth beyond
        ``z / (1 - tolerance)`` over the whole ``(2 radius + 1)^2`` window around its projection. Call it with a chunk's frames *before* writing them.

        Args:
            depth: ``[N, H, W]`` metric depth of the new frames (any grid: pixels or tokens).
            cam_to_world: ``[N, 4, 4]`` their poses.
            intrinsics: ``[3, 3]`` or ``[N, 3, 3]``, the camera of the ``H x W`` grid.
            scene: ``[N]`` scene ids (``None``: scene 0; an int: that scene for all).
            tolerance, radius, min_depth, max_depth, align_scale: of :func:`seen_through`.
            min_votes: frames (of the same scene) that must see through a token.
            return_cells: also return ``freed`` ``[N, H, W]`` bool, the cells of each frame
                onto which a dropped token projected (where the frame may now write).

        Returns:
            the number of tokens dropped (and ``freed`` with ``return_cells``).
        """
        depth = check_tensor("depth", depth, 3)
        if not depth.is_floating_point():
            raise ValueError(f"depth must be floating point, got {depth.dtype}")
        n, height, width = depth.shape
        poses = check_poses("cam_to_world", cam_to_world, n).to(self.device)
        k = check_intrinsics("intrinsics", intrinsics, n).to(self.device)
        scene_ids = check_scenes("scene", scene, n, self.num_scenes, self.device)
        if not isinstance(min_votes, int) or isinstance(min_votes, bool) or min_votes < 1:
            raise ValueError(f"min_votes must be a positive int, got {min_votes!r}")
        if not 0.0 <= float(tolerance) < 1.0:
            raise ValueError(f"tolerance must be in [0, 1), got {tolerance!r}")
        if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
            raise ValueError(f"radius must be a non-negative int, got {radius!r}")
        if not 0.0 <= min_depth < max_depth:
            raise ValueError(f"need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}")
        depth = depth.to(self.device).float()

        freed = torch.zeros(n, height, width, dtype=torch.bool, device=self.device)
        starts, ends = scene_bounds(self._keys, scene_ids)
        longest = int((ends - starts).max()) if n else 0
        if longest == 0:
            return (0, freed) if return_cells else 0
        # Each frame against its scene's tokens, padded to the longest scene: one batched projection.
        span = torch.arange(longest, device=self.device)
        inside = span[None, :] < (ends - starts)[:, None]
        index = torch.where(inside, starts[:, None] + span[None, :], torch.zeros_like(span)[None, :])
        through, cells = seen_through(
            self._xyz[index], depth, poses, k,
            tolerance=float(tolerance), radius=radius, min_depth=min_depth, max_depth=max_depth,
            align_scale=align_scale,
        )
        through &= inside
        votes = torch.zeros(len(self), dtype=torch.int32, device=self.device)
        votes.index_add_(0, index[through], torch.ones_like(index[through], dtype=torch.int32))
        drop = votes >= min_votes
        removed = int(drop.sum())
        if removed:
            if return_cells:
                hit = through & drop[index]
                frame = torch.arange(n, device=self.device)[:, None].expand_as(hit)
                freed.view(n, -1)[frame[hit], cells[hit]] = True
            self._select(~drop)
        return (removed, freed) if return_cells else removed

    # ------------------------------------------------------------------- read
    def read(
        self,
        cam_to_world: Tensor,
        intrinsics: Tensor,
        height: int,
        width: int,
        scene: Tensor | int | None = None,
        return_depth: bool = False,
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
        """Project the cache onto the latent grids of ``M`` target cameras.

        Args:
            cam_to_world: ``[M, 4, 4]`` target poses.
            intrinsics: ``[3, 3]`` or ``[M, 3, 3]``, the camera of the ``height x width`` grid.
            height, width: the latent grid.
            scene: ``[M]`` scene id of each target (``None``: scene 0; an int: for all).
            return_depth: also return the depth of the winning tokens.

        Returns:
            ``latents`` ``[M, C, h, w]`` (zeros where empty), ``mask`` ``[M, h, w]`` bool, and
            with ``return_depth`` ``depth`` ``[M, h, w]`` (0 where empty).
        """
        poses = check_tensor("cam_to_world", cam_to_world, 3)
        m = poses.shape[0]
        poses = check_poses("cam_to_world", poses, m).to(self.device)
        k = check_intrinsics("intrinsics", intrinsics, m).to(self.device)
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        scene_ids = check_scenes("scene", scene, m, self.num_scenes, self.device)

        cells_per_view = height * width
        zbuffer = new_zbuffer(m * cells_per_view, self.device)
        starts, ends = scene_bounds(self._keys, scene_ids)
        longest = int((ends - starts).max()) if m else 0
        if longest > 0:
            # Pad each camera's scene range to the longest one: one batched projection.
            span = torch.arange(longest, device=self.device)
            inside = span[None, :] < (ends - starts)[:, None]
            index = torch.where(inside, starts[:, None] + span[None, :], torch.zeros_like(span)[None, :])
            uv, z = project(self._xyz[index], k, poses)
            view = torch.arange(m, device=self.device)[:, None].expand_as(inside)
            if self.max_footprint > 1:  # each token in its own cell and in the cells its footprint covers
                self._splat_footprints(zbuffer, uv, z, index, inside, view, k, poses, height, width)
            else:
                cells, valid = points_to_cells(uv, z, height, width)
                valid &= inside
                flat_cells = view * cells_per_view + cells[..., 0] * width + cells[..., 1]
                splat(zbuffer, flat_cells[valid], z[valid], index[valid])
        winner, depth, mask = resolve(zbuffer)
        depth, mask = depth.view(m, height, width), mask.view(m, height, width)
        if self.occlusion_margin is not None:
            mask &= ~occluded_cells(depth, mask, self.occlusion_margin, self.occlusion_neighbors)
        flat_mask = mask.reshape(-1)
        latents = torch.zeros(m * cells_per_view, self.channels, dtype=self.dtype, device=self.device)
        latents[flat_mask] = self._latents[winner[flat_mask]]
        if self.interpolation == "bilinear" and longest > 0:
            front = inside & (z > 1e-3)
            self._bilinear(latents, uv[front], z[front], index[front], view[front], depth.reshape(-1), flat_mask,
                           height, width)
        latents = latents.view(m, height, width, self.channels).permute(0, 3, 1, 2).contiguous()
        if return_depth:
            return latents, mask, torch.where(mask, depth, torch.zeros_like(depth))
        return latents, mask

    def _splat_footprints(
        self, zbuffer: Tensor, uv: Tensor, z: Tensor, index: Tensor, inside: Tensor, view: Tensor, k: Tensor,
        poses: Tensor, height: int, width: int,
    ) -> None:
        """Splat every token into its own cell, and one seen from nearer than it was written also into the cells
        its surface patch covers.

        A token describes the patch of surface its cell saw where it was written (``_patch``: two
        half-axes in the surface's plane). A cell of the reading camera (``k``, ``poses``) is covered when
        the ray through its centre meets the token's plane inside that patch, at the depth where it
        meets it: a wall seen face-on covers a square, a floor or a wall seen at a slant the foreshortened
        quad it really spans, with the depth rising across it as the surface recedes. Coverage is counted
        up to ``max_footprint`` cells a side.
        """
        # Only the tokens that win their own cell spread: a hidden token's footprint is hidden too. The
        # contest runs on the grid grown by the largest reach, so tokens just outside the view that
        # reach into it take part.
        margin = self.max_footprint // 2 + 1
        grown_h, grown_w = height + 2 * margin, width + 2 * margin
        u, v = uv[..., 0], uv[..., 1]
        col, row = torch.floor(u).long() + margin, torch.floor(v).long() + margin
        front = inside & (z > 1e-3) & (col >= 0) & (col < grown_w) & (row >= 0) & (row < grown_h)
        cell = view * grown_h * grown_w + row.clamp(0, grown_h - 1) * grown_w + col.clamp(0, grown_w - 1)
        contest = new_zbuffer(view.shape[0] * grown_h * grown_w, self.device)
        splat(contest, cell[front], z[front], index[front])
        won = front & (resolve(contest)[0][cell] == index)
        # The contest's interior is the plain one-cell-per-token splat of the view itself.
        zbuffer.copy_(contest.view(-1, grown_h, grown_w)[:, margin:margin + height, margin:margin + width].reshape(-1))

        # Seen from as far as it was written or farther, a token's own cell is its footprint.
        spread = won & (self._extent[index] * k[view, 0, 0] / z.clamp_min(1e-6) > 1.0)
        u, v, z, index, view = (t[spread] for t in (u, v, z, index, view))
        fx, fy, cx, cy = k[view, 0, 0], k[view, 1, 1], k[view, 0, 2], k[view, 1, 2]
        centre = torch.stack([(u - cx) / fx * z, (v - cy) / fy * z, z], dim=-1)  # the token, camera frame
        axes = self._patch[index] @ poses[view, :3, :3]  # world half-axes -> camera frame (rows: R^T a)
        # Tokens of files from before oriented patches face the reader: a square of ``extent`` a side.
        unknown = (self._patch[index] == 0).flatten(1).all(dim=1)
        if bool(unknown.any()):
            side = self._extent[index][unknown] / 2
            square = torch.zeros(int(unknown.sum()), 2, 3, device=self.device)
            square[:, 0, 0], square[:, 1, 1] = side, side
            axes[unknown] = square
        # Half the patch's size in cells, from the linearised projection at the token, widened by how much
        # nearer the patch's near corner comes (so the window holds the whole of a near patch).
        du = (axes[..., 0] - axes[..., 2] * (u - cx)[:, None] / fx[:, None]) * fx[:, None] / z[:, None]
        dv = (axes[..., 1] - axes[..., 2] * (v - cy)[:, None] / fy[:, None]) * fy[:, None] / z[:, None]
        nearer = z / (z - axes[..., 2].abs().sum(-1)).clamp_min(z / 2)
        half = torch.maximum(du.abs().sum(-1), dv.abs().sum(-1)) * nearer
        cap = self.max_footprint / 2
        reach = torch.ceil(half.clamp(max=cap) + 0.5).long()  # cells to look at on each side of the token's own
        normal = torch.linalg.cross(axes[:, 0], axes[:, 1], dim=-1)
        spread_buffer = new_zbuffer(zbuffer.numel(), self.device)
        for r in torch.unique(reach).tolist():
            pick = reach == r
            offsets = torch.arange(-r, r + 1, device=self.device, dtype=u.dtype)
            col = torch.floor(u[pick])[:, None, None] + offsets[None, None, :]
            row = torch.floor(v[pick])[:, None, None] + offsets[None, :, None]
            row, col = torch.broadcast_tensors(row, col)
            # Each cell's ray (z = 1) meets the token's plane at depth t = (n . centre) / (n . ray).
            ray = torch.stack([(col + 0.5 - cx[pick, None, None]) / fx[pick, None, None],
                               (row + 0.5 - cy[pick, None, None]) / fy[pick, None, None], torch.ones_like(col)], -1)
            n, c = normal[pick][:, None, None], centre[pick][:, None, None]
            facing = (ray * n).sum(-1)
            t = (c * n).sum(-1) / torch.where(facing.abs() > 1e-9, facing, 1e-9)
            offset = ray * t[..., None] - c
            a, b = axes[pick, 0][:, None, None], axes[pick, 1][:, None, None]
            ok = ((offset * a).sum(-1).abs() <= (a * a).sum(-1)) & ((offset * b).sum(-1).abs() <= (b * b).sum(-1))
            ok &= (t > 1e-3) & (facing.abs() > 1e-9)
            ok &= ((col + 0.5 - u[pick][:, None, None]).abs() <= cap) & ((row + 0.5 - v[pick][:, None, None]).abs() <= cap)
            ok &= (col >= 0) & (col < width) & (row >= 0) & (row < height)
            flat = view[pick][:, None, None] * height * width + row.long() * width + col.long()
            count = ok.sum(dim=(1, 2))
            splat(spread_buffer, flat[ok], t[ok], index[pick].repeat_interleave(count))
        # A token keeps its own cell against footprints of the same surface (whose depth there differs only
        # by the patch's estimate); a footprint takes it only where it lies clearly in front.
        _, own_depth, own = resolve(zbuffer)
        _, footprint_depth, covered = resolve(spread_buffer)
        take = covered & (~own | (footprint_depth * (1.0 + _FOOTPRINT_MARGIN) < own_depth))
        zbuffer.copy_(torch.where(take, spread_buffer, zbuffer))

    def _bilinear(
        self, latents: Tensor, uv: Tensor, z: Tensor, index: Tensor, view: Tensor, depth: Tensor, covered: Tensor,
        height: int, width: int,
    ) -> None:
        """Replace the covered cells of ``latents`` ``[M h w, C]`` by the bilinear mean of the tokens on their
        surface."""
        cells_per_view = height * width
        total = torch.zeros_like(latents)
        weight = torch.zeros(latents.shape[0], dtype=latents.dtype, device=self.device)
        x, y = uv[:, 0] - 0.5, uv[:, 1] - 0.5  # cell-centre coordinates
        x0, y0 = torch.floor(x), torch.floor(y)
        for dx in (0.0, 1.0):
            for dy in (0.0, 1.0):
                col, row = x0 + dx, y0 + dy
                w = (1.0 - (x - col).abs()) * (1.0 - (y - row).abs())
                ok = (w > _MIN_WEIGHT) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
                cell = view * cells_per_view + row.clamp(0, height - 1).long() * width + col.clamp(0, width - 1).long()
                ok &= covered[cell] & (z <= depth[cell] * (1.0 + _SURFACE_TOLERANCE))
                total.index_add_(0, cell[ok], self._latents[index[ok]] * w[ok, None].to(latents.dtype))
                weight.index_add_(0, cell[ok], w[ok].to(latents.dtype))
        # A covered cell always counts its own winner (weight >= 1/4 in the cell it projects into, at its own depth).
        mean = covered & (weight > 0)
        latents[mean] = total[mean] / weight[mean, None]

    # -------------------------------------------------------------- save/load
    def save(self, path: str | os.PathLike) -> None:
        """Write the cache to a safetensors file (atomically: a failed save keeps the old file)."""
        path = Path(path)
        metadata = {
            "format": _FORMAT,
            "channels": str(self.channels),
            "voxel_size": repr(self.voxel_size),
            "capacity": str(self.capacity),
            "num_scenes": str(self.num_scenes),
            "policy": self.policy,
            "dtype": str(self.dtype).removeprefix("torch."),
            "occlusion_margin": repr(self.occlusion_margin),
            "occlusion_neighbors": str(self.occlusion_neighbors),
            "interpolation": self.interpolation,
            "max_footprint": str(self.max_footprint),
            "frames_written": str(self.frames_written),
        }
        tensors = {
            "keys": self._keys,
            "xyz": self._xyz,
            "latents": self._latents,
            "stamps": self._stamps,
            "dist": self._dist,
            "extent": self._extent,
            "patch": self._patch,
        }
        tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=metadata)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str | None = None) -> LatentCache:
        """Read a cache written by :meth:`save`.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: the file is not a valid LatentCache file (the message names it).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"LatentCache file not found: {path}")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except Exception as err:  # safetensors raises several types for damaged files
            raise ValueError(f"{path} is not a readable safetensors file: {err}") from err
        try:
            if metadata.get("format") != _FORMAT:
                raise ValueError(f"format tag is {metadata.get('format')!r}, expected {_FORMAT!r}")
            margin = metadata["occlusion_margin"]
            cache = cls(
                channels=int(metadata["channels"]),
                voxel_size=float(metadata["voxel_size"]),
                capacity=int(metadata["capacity"]),
                num_scenes=int(metadata["num_scenes"]),
                policy=metadata["policy"],
                dtype=getattr(torch, metadata["dtype"]),
                device=device,
                occlusion_margin=None if margin == "None" else float(margin),
                occlusion_neighbors=int(metadata["occlusion_neighbors"]),
                interpolation=metadata.get("interpolation", "nearest"),  # files from before bilinear reads
                max_footprint=int(metadata.get("max_footprint", "1")),  # files from before footprints
            )
            cache.frames_written = int(metadata["frames_written"])
            cache._load_store(tensors)
        except (KeyError, ValueError, TypeError, AttributeError) as err:
            raise ValueError(f"{path} is not a valid LatentCache file: {err}") from err
        return cache

    def _load_store(self, tensors: dict[str, Tensor]) -> None:
        names = ("keys", "xyz", "latents", "stamps", "dist", "extent", "patch")
        expected = dict(zip(names, self._empty_store(), strict=True))
        if "keys" in tensors:
            size = tensors["keys"].shape[0]
            if "extent" not in tensors:  # files from before footprints: no extents, no footprints
                tensors = {**tensors, "extent": torch.zeros(size)}
            if "patch" not in tensors:  # files from before oriented footprints: patches face the reader
                tensors = {**tensors, "patch": torch.zeros(size, 2, 3)}
        if set(tensors) != set(expected):
            raise ValueError(f"tensors {sorted(tensors)} instead of {sorted(expected)}")
        size = tensors["keys"].shape[0]
        for name, empty in expected.items():
            t = tensors[name]
            if t.dtype != empty.dtype or tuple(t.shape) != (size, *empty.shape[1:]):
                raise ValueError(f"tensor {name!r} has {t.dtype} {tuple(t.shape)}, expected {empty.dtype} {(size, *empty.shape[1:])}")
        keys = tensors["keys"]
        if size and (keys.min() < 0 or (keys[1:] <= keys[:-1]).any()):
            raise ValueError("keys are not strictly increasing")
        scenes = torch.arange(self.num_scenes)
        starts, ends = scene_bounds(keys, scenes)
        if int(ends[-1]) != size or ((ends - starts) > self.capacity).any():
            raise ValueError("keys name unknown scenes or a scene exceeds the capacity")
        self._set_store(*(tensors[name].to(self.device) for name in expected))
