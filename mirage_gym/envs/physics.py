"""Physics of the generated world: what the frames have shown is what the body bumps into.

``physics="generated"`` needs no procedural house: it works from a user's start picture or a
real Wan2.2 model exactly as from the default model or the oracle. Everything here is computed
from what a generator returns with every chunk -- metric depth, camera poses, the camera of the
depth grid -- and, when the generator keeps one, the world points of its
:class:`~mirage_gym.memory.LatentCache`. This module never imports :mod:`mirage_gym.world`.

One :class:`GeneratedPhysics` per sub-environment; the env calls, per episode and per step::

    physics.reset(start_pose)                                    # the body stands at the start
    physics.observe(depth, cam_to_world, intrinsics, cache)      # the start frame
    end, blocked = physics.move(origin, target)                  # every step, before generating
    new_m2 = physics.observe(depth, cam_to_world, intrinsics, cache)  # after generating the chunk
    physics.explored_area()                                      # square metres of floor shown

**Conventions** are :mod:`mirage_gym.geometry`'s: OpenCV camera, world ``z`` up, the floor at
``floor_height`` (``0``, the plane the camera stands on: a generator has no floor of its own, the
camera's pose says where it is). Depth is camera ``z`` in metres.

**The body** is the ground-truth body of :meth:`mirage_gym.world.Scene.move`
(:func:`mirage_gym.world.scene.body_clear`): a sphere of ``radius`` at the camera on a vertical
segment down to the floor (a capsule). A surface point ``p`` touches the body at ``c`` when
``|p_xy - c_xy|^2 + max(p_z - c_z, 0)^2 < radius^2``: anything below the camera counts by its
horizontal distance (the camera cannot pass over a table), anything above it by its distance to
the sphere (it passes under a lintel or a ceiling). Low clutter and the ceiling are therefore no
special cases; only the floor is.

**Obstacles** are surface points, kept on a 2D grid over the floor plane (cells of ``voxel``
metres; a cell holds the height of its lowest point, which is the only one that matters for a
capsule standing on the floor):

* the current chunk's depth, back-projected (every ``stride``-th pixel of its last frame, see
  ``keyframes``, within ``obstacle_range``: ``max_range`` plus a body radius and a voxel, so a
  body over shown floor knows every surface it can touch; depth at or beyond ``max_depth``
  means "nothing hit" and is no surface);
* the persistent surfaces of the world: with a ``cache`` (the generator's ``LatentCache``, or its
  points), its stored tokens, which persist when the camera looks away and are what the
  generator will paint again when it looks back (an evicted token stops blocking, as it stops
  being drawn); without one (the oracle, ``memory="none"``/``"pixel"``), every chunk's points are
  kept here instead.

Points within ``floor_band`` metres of the floor are floor, not obstacles: the floor is what
the body stands on, and generated depth is never exact -- a 10 % depth error on a floor point
3 m away lifts it by about 0.1-0.15 m, so a band of zero would fill the room with phantom
obstacles. The band is the height of the lowest obstacle the body ignores (a rug, a threshold);
the procedural houses have nothing lower than 0.45 m. A move is clipped where the body would
first touch an obstacle, refined by bisection and pulled back by :data:`STOP_MARGIN`, like
``Scene.move`` (no sliding). A body that a new chunk shows overlapping a surface may still move
in any direction that does not take it deeper.

**Space the world has never shown is not walkable.** A move is allowed only while the body's
centre stays over floor the frames have shown to be free: cells where a ray of some frame
reached the floor or passed through the body's height band (``floor + floor_band`` up to the
camera) before its surface, within ``max_range`` (the cell's column is tested at
``view_heights`` heights; a point counts as seen when it projects into a frame in front of that
pixel's depth by more than ``free_margin``), plus the footprint the body stood on at reset.
Elsewhere the move stops at the edge of the shown space and counts as blocked
(:attr:`GeneratedPhysics.last_block` says ``"unseen"`` rather than ``"obstacle"``). So walking
backwards (or sideways, out of view) through space the generator never drew is impossible,
not free: an agent must look where it goes, which is also what makes the generated world the
world it moves in (a generator can only be consistent with what it has shown). Walking back
over floor it has seen is allowed. A body backing up cannot creep on either: the frames look
ahead, so they never show the floor behind the body. ``tests/test_physics.py`` checks that a
backward walk is stopped within the start footprint while the house would have let it go on,
that backing up while looking ahead (generated physics moving the body) gets no further, and
that the same walk after turning round to look is allowed. The price: a move out of view
(backwards, sideways) into space the house has free but no frame has shown is blocked; ``mirage-gym
eval collisions`` counts these stops apart.

**Explored area** (:meth:`GeneratedPhysics.explored_area`) is that seen floor in square metres
(``free_cell``-metre cells; the reset footprint does not count): a reward that needs no ground
truth, and whose total is unknown. :func:`goal_from_offset` and :func:`goal_distance` make
PointNav goals as metric offsets from the start, with success by Euclidean distance.

Everything is deterministic numpy; inputs are validated (``ValueError``) before any state
changes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch import Tensor

__all__ = [
    "PHYSICS",
    "STOP_MARGIN",
    "GeneratedPhysics",
    "goal_from_offset",
    "goal_distance",
    "check_physics",
]

PHYSICS = ("generated", "ground_truth")
STOP_MARGIN = 1e-3  # metres: a move cut short stops this far before the obstacle (as Scene.move)
REFINE_SAMPLES = 64  # a stop is refined by two rounds of this many samples (1/4096 of the move, as 12 bisections)
KEYFRAMES = 1  # frames of each chunk taken in by default (its last; see GeneratedPhysics)


def check_physics(value: Any) -> str:
    """``value`` if it names a physics (:data:`PHYSICS`), else ``ValueError``."""
    if not isinstance(value, str) or value not in PHYSICS:
        raise ValueError(f"physics must be one of {PHYSICS}, got {value!r}")
    return value


def _number(name: str, value: Any, *, positive: bool = True, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and (value < 0 or (value == 0 and not allow_zero)):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return value


def _array(name: str, value: Any, shape: tuple[int | None, ...]) -> np.ndarray:
    """``value`` as finite float64 numpy of ``shape`` (``None``: any size), else ``ValueError``."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be an array of numbers: {err}") from err
    if arr.ndim != len(shape) or any(s is not None and a != s for a, s in zip(arr.shape, shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} must have shape {want}, got {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


class _Grid:
    """Dense 2D arrays over the floor plane that grow to cover what is written.

    Cell ``(i, j)`` (global integers) covers ``x in [j, j + 1) * cell``, ``y in [i, i + 1) * cell``;
    its centre is ``((j + 0.5) * cell, (i + 0.5) * cell)``. Reads outside the grid give ``fill``.
    """

    GROW = 32  # cells of slack added on every side when the grid grows

    def __init__(self, cell: float, dtype: Any, fill: Any) -> None:
        self.cell = cell
        self.dtype = dtype
        self.fill = fill
        self.clear()

    def clear(self) -> None:
        self.i0 = 0
        self.j0 = 0
        self.data = np.full((0, 0), self.fill, self.dtype)

    def cells(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.floor(xy[..., 1] / self.cell).astype(np.int64), np.floor(xy[..., 0] / self.cell).astype(np.int64))

    def centres(self, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (j + 0.5) * self.cell, (i + 0.5) * self.cell

    def _grow(self, i: np.ndarray, j: np.ndarray) -> None:
        if i.size == 0:
            return
        h, w = self.data.shape
        lo_i, hi_i, lo_j, hi_j = int(i.min()), int(i.max()), int(j.min()), int(j.max())
        if h and w and lo_i >= self.i0 and hi_i < self.i0 + h and lo_j >= self.j0 and hi_j < self.j0 + w:
            return
        if h and w:
            lo_i, lo_j = min(lo_i, self.i0), min(lo_j, self.j0)
            hi_i, hi_j = max(hi_i, self.i0 + h - 1), max(hi_j, self.j0 + w - 1)
        i0, j0 = lo_i - self.GROW, lo_j - self.GROW
        data = np.full((hi_i + self.GROW - i0 + 1, hi_j + self.GROW - j0 + 1), self.fill, self.dtype)
        if h and w:
            data[self.i0 - i0 : self.i0 - i0 + h, self.j0 - j0 : self.j0 - j0 + w] = self.data
        self.i0, self.j0, self.data = i0, j0, data

    def read(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        h, w = self.data.shape
        li, lj = i - self.i0, j - self.j0
        inside = (li >= 0) & (li < h) & (lj >= 0) & (lj < w)
        out = np.full(i.shape, self.fill, self.dtype)
        out[inside] = self.data[li[inside], lj[inside]]
        return out

    def minimum(self, i: np.ndarray, j: np.ndarray, values: np.ndarray) -> None:
        self._grow(i, j)
        np.minimum.at(self.data, (i - self.i0, j - self.j0), values.astype(self.dtype))

    def set(self, i: np.ndarray, j: np.ndarray, value: Any) -> None:
        self._grow(i, j)
        self.data[i - self.i0, j - self.j0] = value


class GeneratedPhysics:
    """Collisions, free space and explored floor of one sub-environment, from its generated frames.

    See the module docstring for the rules. Args:
        radius: the body's radius (the env's ``camera_radius``), metres.
        voxel: obstacle cell size, metres (stops agree with ground truth within about this).
        free_cell: cell size of the seen-floor grid (exploration, unseen space), metres.
        floor_height: world ``z`` of the floor the camera stands on.
        floor_band: points less than this above the floor are floor, not obstacles.
        max_range: horizontal range, metres, beyond which a frame's depth neither adds
            obstacles nor shows free floor (generated depth is least reliable far away).
        free_margin: a point is seen free when it is this much in front of its pixel's depth.
        max_depth: depth at or beyond this means "nothing hit" (``None``: every depth is a surface).
        stride: use every ``stride``-th pixel of the depth (cost; ``1`` for all).
        view_heights: heights at which a cell's column is tested against the frames.
        footprint: radius, metres, of the floor around the start that counts as walkable before any
            frame shows it (``None``: ``radius``, the body's own footprint). Smaller is stricter:
            ``0.1`` stops more moves near the start as unseen (oracle agreement in shown space
            0.873 instead of 0.861, but overall 0.559 instead of 0.573).
        obstacle_range: horizontal range, metres, within which a frame's depth adds obstacles
            (``None``: ``max_range + radius + voxel``, so every obstacle a body over shown floor can
            touch is kept).
        keyframes: frames of each chunk taken in, evenly spaced and always including the last
            (``None``: every frame). A chunk's camera moves at most ``max_translation`` and
            ``max_rotation`` (15 degrees, well inside the field of view) from one chunk's last
            frame to the next, so the frames between show what the two ends show, and taking
            the ends only costs a fraction of the time (the cache still holds every frame's tokens).
    """

    def __init__(
        self,
        radius: float = 0.2,
        *,
        voxel: float = 0.05,
        free_cell: float = 0.1,
        floor_height: float = 0.0,
        floor_band: float = 0.1,
        max_range: float = 3.0,
        free_margin: float = 0.05,
        max_depth: float | None = None,
        stride: int = 2,
        view_heights: int = 5,
        keyframes: int | None = KEYFRAMES,
        footprint: float | None = None,
        obstacle_range: float | None = None,
    ) -> None:
        self.radius = _number("radius", radius)
        self.voxel = _number("voxel", voxel)
        self.free_cell = _number("free_cell", free_cell)
        self.floor_height = _number("floor_height", floor_height, positive=False)
        self.floor_band = _number("floor_band", floor_band, allow_zero=True)
        self.max_range = _number("max_range", max_range)
        self.free_margin = _number("free_margin", free_margin, allow_zero=True)
        self.max_depth = None if max_depth is None else _number("max_depth", max_depth)
        for name, value in (("stride", stride), ("view_heights", view_heights)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.stride = int(stride)
        self.view_heights = int(view_heights)
        if keyframes is not None and (isinstance(keyframes, bool) or not isinstance(keyframes, (int, np.integer))
                                      or keyframes < 1):
            raise ValueError(f"keyframes must be an int >= 1 or None, got {keyframes!r}")
        self.keyframes = None if keyframes is None else int(keyframes)
        self._rays: dict[tuple, np.ndarray] = {}  # camera rays per (depth grid, intrinsics)
        self.footprint = self.radius if footprint is None else _number("footprint", footprint, allow_zero=True)
        self.obstacle_range = (self.max_range + self.radius + self.voxel if obstacle_range is None
                               else _number("obstacle_range", obstacle_range))
        # Obstacles: lowest surface height per cell (inf: none); persistent ones kept apart from the chunk's.
        self._kept = _Grid(self.voxel, np.float32, np.inf)  # own memory (no cache) or the cache's points
        self._chunk = _Grid(self.voxel, np.float32, np.inf)  # the last chunk's points
        self._seen = _Grid(self.free_cell, bool, False)  # floor shown free
        self._stood = _Grid(self.free_cell, bool, False)  # the reset footprint
        reach = int(math.ceil(self.radius / self.voxel)) + 1
        di, dj = np.meshgrid(np.arange(-reach, reach + 1), np.arange(-reach, reach + 1), indexing="ij")
        # Cells whose nearest point can be within the radius of a point in the centre cell.
        near = (np.maximum(np.abs(di) - 1, 0) ** 2 + np.maximum(np.abs(dj) - 1, 0) ** 2) * self.voxel**2 < self.radius**2
        self._off_i, self._off_j = di[near].ravel(), dj[near].ravel()
        cells = int(math.ceil(self.max_range / self.free_cell)) + 1
        fi, fj = np.meshgrid(np.arange(-cells, cells + 1), np.arange(-cells, cells + 1), indexing="ij")
        keep = (fi**2 + fj**2) * self.free_cell**2 <= (self.max_range + self.free_cell) ** 2
        self._view_i, self._view_j = fi[keep].ravel(), fj[keep].ravel()
        self._camera_z: float | None = None
        self.last_block: str | None = None  # "obstacle", "unseen" or None: why the last move stopped

    # ------------------------------------------------------------------ episode

    def reset(self, start: Any) -> None:
        """Forget everything and stand the body at ``start`` (a ``cam_to_world`` ``[4, 4]`` or a position ``[3]``).

        The body's own footprint (the cells within ``radius`` of the start) is walkable: the world
        put the camera there.
        """
        arr = _array("start", start, (None,) * (2 if np.ndim(start) == 2 else 1))
        if arr.shape == (4, 4):
            position = arr[:3, 3]
        elif arr.shape == (3,):
            position = arr
        else:
            raise ValueError(f"start must be a cam_to_world [4, 4] or a position [3], got shape {list(arr.shape)}")
        if position[2] - self.floor_height < self.radius:
            raise ValueError(f"the camera at z={position[2]:g} is less than radius={self.radius:g} above the floor "
                             f"(z={self.floor_height:g})")
        for grid in (self._kept, self._chunk, self._seen, self._stood):
            grid.clear()
        self._camera_z = float(position[2])
        self.last_block = None
        r = int(math.ceil(self.footprint / self.free_cell)) + 1
        i, j = self._stood.cells(position[None, :2])
        di, dj = np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1), indexing="ij")
        ci, cj = i[0] + di.ravel(), j[0] + dj.ravel()
        cx, cy = self._stood.centres(ci, cj)
        inside = (cx - position[0]) ** 2 + (cy - position[1]) ** 2 <= self.footprint**2
        inside[np.argmin((cx - position[0]) ** 2 + (cy - position[1]) ** 2)] = True  # the start's own cell
        self._stood.set(ci[inside], cj[inside], True)

    def _check_reset(self) -> None:
        if self._camera_z is None:
            raise RuntimeError("call reset() first")

    # ------------------------------------------------------------------ observation

    def observe(
        self,
        depth: Any,
        cam_to_world: Any,
        intrinsics: Any,
        cache: Any = None,
        scene: int = 0,
    ) -> float:
        """Take in a chunk: ``depth`` ``[T, H, W]`` (or ``[H, W]``), ``cam_to_world`` ``[T, 4, 4]`` (or ``[4, 4]``),
        ``intrinsics`` ``[3, 3]``, the camera of the ``H x W`` depth grid.

        ``cache`` is the generator's persistent memory of surfaces: a
        :class:`~mirage_gym.memory.LatentCache` (its scene ``scene``), or its world points
        ``[P, 3]``; ``None`` keeps every chunk's surfaces here instead. Returns the floor area,
        square metres, shown for the first time by this chunk.
        """
        self._check_reset()
        d = _array("depth", depth, (None,) * (3 if np.ndim(depth) == 3 else 2))
        if d.ndim == 2:
            d = d[None]
        poses = _array("cam_to_world", cam_to_world, (None,) * (3 if np.ndim(cam_to_world) == 3 else 2))
        if poses.ndim == 2:
            poses = poses[None]
        if poses.shape != (d.shape[0], 4, 4):
            raise ValueError(f"cam_to_world must have shape [{d.shape[0]}, 4, 4] to match depth {list(d.shape)}, "
                             f"got {list(poses.shape)}")
        k = _array("intrinsics", intrinsics, (3, 3))
        if k[0, 0] <= 0 or k[1, 1] <= 0:
            raise ValueError("intrinsics must have positive focal lengths")
        if min(d.shape[1:]) < 1:
            raise ValueError(f"depth must have at least one pixel, got {list(d.shape)}")
        kept = self._cache_points(cache, scene)
        if self.keyframes is not None and d.shape[0] > self.keyframes:
            pick = np.unique(np.round(np.linspace(d.shape[0] - 1, 0, self.keyframes, endpoint=False)).astype(int))
            d, poses = d[pick], poses[pick]

        points = self._surface_points(d, poses, k)
        self._chunk.clear()
        self._add(self._chunk, points)
        if kept is None:
            self._add(self._kept, points)
        else:
            self._kept.clear()
            self._add(self._kept, kept)
        return self._carve(d, poses, k) * self.free_cell**2

    def _cache_points(self, cache: Any, scene: int) -> np.ndarray | None:
        if cache is None:
            return None
        if hasattr(cache, "points") and callable(cache.points):
            if isinstance(scene, bool) or not isinstance(scene, (int, np.integer)):
                raise ValueError(f"scene must be an int, got {scene!r}")
            xyz = cache.points(int(scene))[0]
            return _array("cache points", xyz, (None, 3))
        return _array("cache", cache, (None, 3))

    def _surface_points(self, d: np.ndarray, poses: np.ndarray, k: np.ndarray) -> np.ndarray:
        """World points ``[P, 3]`` of the depth's surfaces within range (every ``stride``-th pixel)."""
        s = self.stride
        o = s // 2
        d = d[:, o::s, o::s]
        t, h, w = d.shape
        key = (h, w, s, *k.ravel().tolist())
        rays = self._rays.get(key)
        if rays is None:
            k = k.copy()
            k[:2] /= s
            k[:2, 2] += 0.5 - (o + 0.5) / s  # the camera of the kept pixels (geometry.subsample_intrinsics)
            x = (np.arange(w) + 0.5 - k[0, 2]) / k[0, 0]
            y = (np.arange(h) + 0.5 - k[1, 2]) / k[1, 1]
            rays = np.stack(np.broadcast_arrays(x[None, :], y[:, None], np.ones((h, w))), axis=-1).reshape(-1, 3)
            self._rays = {key: rays}
        # Within max_range horizontally: a ray's horizontal reach is depth * |R_xy ray|, so test it per frame.
        out = []
        for f in range(t):
            depth = d[f].reshape(-1)
            valid = depth > 0
            if self.max_depth is not None:
                valid &= depth < self.max_depth * (1 - 1e-4)
            idx = np.flatnonzero(valid)
            if idx.size == 0:
                continue
            world_dirs = rays[idx] @ poses[f, :3, :3].T  # [P, 3]
            cam = world_dirs * depth[idx, None]
            near = cam[:, 0] ** 2 + cam[:, 1] ** 2 <= self.obstacle_range**2
            out.append(cam[near] + poses[f, :3, 3])
        return np.concatenate(out) if out else np.zeros((0, 3))

    def _add(self, grid: _Grid, points: np.ndarray) -> None:
        """Write the obstacle points (those above the floor band) of ``points`` ``[P, 3]`` into ``grid``."""
        pts = points[points[:, 2] > self.floor_height + self.floor_band]
        if pts.size:
            i, j = grid.cells(pts[:, :2])
            grid.minimum(i, j, pts[:, 2])

    def _carve(self, d: np.ndarray, poses: np.ndarray, k: np.ndarray) -> int:
        """Mark the cells whose column the frames show free; returns how many are new."""
        t, h, w = d.shape
        new = 0
        lo = self.floor_height + self.floor_band
        heights = np.linspace(lo, max(self._camera_z, lo), self.view_heights)
        for f in range(t):
            pose = poses[f]
            ci, cj = self._seen.cells(pose[None, :2, 3])
            i, j = ci[0] + self._view_i, cj[0] + self._view_j
            cx, cy = self._seen.centres(i, j)
            pts = np.empty((i.size, heights.size, 3))
            pts[..., 0] = cx[:, None]
            pts[..., 1] = cy[:, None]
            pts[..., 2] = heights[None, :]
            cam = (pts - pose[:3, 3]) @ pose[:3, :3]  # world -> camera (rotation transposed)
            z = cam[..., 2]
            front = z > 1e-3
            safe = np.where(front, z, 1.0)
            col = np.floor(k[0, 0] * cam[..., 0] / safe + k[0, 2]).astype(np.int64)
            row = np.floor(k[1, 1] * cam[..., 1] / safe + k[1, 2]).astype(np.int64)
            inside = front & (col >= 0) & (col < w) & (row >= 0) & (row < h)
            pixel = np.where(inside, d[f][np.clip(row, 0, h - 1), np.clip(col, 0, w - 1)], 0.0)
            seen = inside & (z < pixel - self.free_margin)
            horizontal = np.hypot(cx - pose[0, 3], cy - pose[1, 3])
            hit = seen.any(axis=1) & (horizontal <= self.max_range)
            if hit.any():
                before = self._seen.read(i[hit], j[hit])
                new += int((~before).sum())
                self._seen.set(i[hit], j[hit], True)
        return new

    # ------------------------------------------------------------------ queries

    def explored_area(self) -> float:
        """Square metres of floor the frames have shown free this episode."""
        return float(self._seen.data.sum()) * self.free_cell**2

    def _gap2(self, pts: np.ndarray) -> np.ndarray:
        """Squared distance ``[B]`` from each body at ``pts`` ``[B, 3]`` to its nearest obstacle point (inf: none)."""
        i, j = self._kept.cells(pts[:, :2])
        ii, jj = i[:, None] + self._off_i[None], j[:, None] + self._off_j[None]
        z = np.minimum(self._kept.read(ii, jj), self._chunk.read(ii, jj)).astype(np.float64)
        cx, cy = self._kept.centres(ii, jj)
        d2 = (cx - pts[:, 0:1]) ** 2 + (cy - pts[:, 1:2]) ** 2 + np.maximum(z - pts[:, 2:3], 0.0) ** 2
        d2[~np.isfinite(z)] = np.inf
        return d2.min(axis=1)

    def _walkable(self, pts: np.ndarray) -> np.ndarray:
        i, j = self._seen.cells(pts[:, :2])
        return self._seen.read(i, j) | self._stood.read(i, j)

    def is_free(self, positions: Any) -> np.ndarray:
        """``[B]`` bool: whether a body at each of ``positions`` ``[B, 3]`` is clear of every shown
        surface and stands on floor the frames have shown (or its reset footprint)."""
        self._check_reset()
        pts = _array("positions", positions, (None, 3))
        return (self._gap2(pts) >= self.radius**2) & self._walkable(pts)

    def move(self, origin: Any, target: Any) -> tuple[np.ndarray, bool]:
        """Move the body from ``origin`` ``[3]`` towards ``target`` ``[3]``; stop before an obstacle or unseen space.

        Returns the position reached (float32 ``[3]``) and whether the move was cut short;
        :attr:`last_block` says why (``"obstacle"``, ``"unseen"``, or ``None`` when it was not).
        The path is sampled every ``min(voxel, free_cell) / 2`` metres and the stop refined by
        bisection, then pulled back by :data:`STOP_MARGIN`, as in ``Scene.move``.
        """
        self._check_reset()
        s = _array("origin", origin, (3,))
        e = _array("target", target, (3,))
        r2 = self.radius**2
        start_gap = self._gap2(s[None])[0]
        if not self._walkable(s[None])[0]:  # only float32 rounding at the edge of seen space gets here
            self._stood.set(*self._stood.cells(s[None, :2]), True)

        def ok(frac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            pts = s[None] + frac[:, None] * (e - s)[None]
            gap = self._gap2(pts)
            # A body already touching something may move as long as it does not go deeper.
            clear = (gap >= r2) | (gap >= start_gap - 1e-12)
            return clear, self._walkable(pts)

        length = float(np.linalg.norm(e - s))
        spacing = min(self.voxel, self.free_cell) / 2
        steps = max(1, int(math.ceil(length / spacing)))
        frac = np.linspace(0.0, 1.0, steps + 1)[1:]
        clear, walk = ok(frac)
        good = clear & walk
        if good.all():
            self.last_block = None
            return e.astype(np.float32), False
        first = int(np.argmin(good))
        self.last_block = "obstacle" if not clear[first] else "unseen"
        lo = frac[first - 1] if first > 0 else 0.0
        hi = frac[first]
        for _ in range(2):  # batched refinement: the last good sample before the first bad one, twice
            samples = lo + (hi - lo) * np.arange(1, REFINE_SAMPLES + 1) / (REFINE_SAMPLES + 1)
            c, w = ok(samples)
            bad = ~(c & w)
            if bad.any():
                j = int(np.argmax(bad))
                lo, hi = (samples[j - 1] if j > 0 else lo), samples[j]
            else:
                lo = samples[-1]
        lo = max(0.0, lo - STOP_MARGIN / max(length, 1e-12))
        reached = (s + lo * (e - s)).astype(np.float32)
        c, w = ok(np.array([lo]))
        if lo > 0 and not (c[0] and w[0]):  # float32 rounding landed inside: stay put
            reached = s.astype(np.float32)
        return reached, True

    def maps(self) -> dict[str, Any]:
        """What the physics holds, for a viewer: ``obstacle`` (bool, cells holding a surface the body
        can touch, ``voxel`` m, given as ``obstacle_cell``) and ``seen`` (bool, floor shown free,
        ``free_cell`` m) grids, each with the world ``(x, y)`` of its cell ``(0, 0)``'s corner as
        ``*_origin``; rows run along ``y``."""
        self._check_reset()
        low = _Grid(self.voxel, np.float32, np.inf)
        for grid in (self._kept, self._chunk):
            i, j = np.nonzero(np.isfinite(grid.data))
            low.minimum(i + grid.i0, j + grid.j0, grid.data[i, j])
        return {
            "obstacle": low.data < self._camera_z + self.radius,
            "obstacle_origin": (low.j0 * low.cell, low.i0 * low.cell),
            "obstacle_cell": self.voxel,
            "seen": self._seen.data.copy(),
            "seen_origin": (self._seen.j0 * self._seen.cell, self._seen.i0 * self._seen.cell),
        }


def goal_from_offset(start: Any, offset: Any) -> np.ndarray:
    """A PointNav goal ``[3]`` (float32, at the camera's height) ``offset`` ``(forward, left)`` metres from the start.

    ``start`` is the start ``cam_to_world`` ``[4, 4]``; forward is along its heading (the view
    direction projected on the floor), left is 90 degrees counter-clockwise from it. A generated
    world has no map, so a goal is a metric offset from where the episode began.
    """
    pose = _array("start", start, (4, 4))
    off = _array("offset", offset, (2,))
    forward = pose[:3, 2].copy()
    forward[2] = 0.0
    norm = np.linalg.norm(forward)
    if norm < 1e-6:
        raise ValueError("the start camera looks straight up or down: no heading to measure the offset from")
    fx, fy = forward[:2] / norm
    goal = pose[:3, 3] + np.array([off[0] * fx - off[1] * fy, off[0] * fy + off[1] * fx, 0.0])
    return goal.astype(np.float32)


def goal_distance(position: Any, goal: Any) -> float:
    """Euclidean distance, metres, on the floor plane from ``position`` ``[3]`` to ``goal`` ``[3]``
    (success is ``goal_distance(...) <= success_distance``)."""
    p = _array("position", position, (3,))
    g = _array("goal", goal, (3,))
    return float(np.hypot(*(g[:2] - p[:2])))

