"""The scene: plain arrays describing a house of axis-aligned boxes, and the queries the envs need.

Geometry is stored twice, for two jobs:

* **quads** -- axis-aligned rectangles that the renderer ray-casts: the visible faces of walls,
  floors, ceilings, furniture and moving objects, each with a texture, an instance id and the
  room whose light shades it;
* **solids** -- axis-aligned boxes the camera's body collides with (walls, furniture and the
  space swept by each moving object, so a camera can never end up inside one); see
  :func:`body_clear`.

A quad perpendicular to world axis ``a`` spans the other two axes ``(b, c)`` in increasing
order: ``(y, z)`` for ``a = x``, ``(x, z)`` for ``a = y``, ``(x, y)`` for ``a = z``; these are
also its texture coordinates. The navigation grid has row ``i`` along world ``y`` and column
``j`` along world ``x``; cell ``(i, j)`` has its centre at
``grid_origin + ((j + 0.5) * grid_cell, (i + 0.5) * grid_cell)``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from mirage_gym import geometry
from mirage_gym.world.textures import TextureTable

__all__ = ["Quads", "MovingObjects", "Scene"]

ArrayLike = Tensor | np.ndarray

# Other axes (b, c) of a quad perpendicular to axis a.
PLANE_AXES = np.array([[1, 2], [0, 2], [0, 1]], dtype=np.int64)
STOP_MARGIN = 1e-3  # metres: a move cut short by an obstacle stops this far before it


@dataclass
class Quads:
    """Axis-aligned rectangles, one row each (numpy)."""

    axis: np.ndarray  # [Q] int64, 0/1/2: the axis the quad is perpendicular to
    sign: np.ndarray  # [Q] float32, +1/-1: the direction of its normal along ``axis``
    plane: np.ndarray  # [Q] float32: the coordinate of its plane along ``axis``
    lo: np.ndarray  # [Q, 2] float32: lower bounds along its (b, c) axes
    hi: np.ndarray  # [Q, 2] float32: upper bounds along its (b, c) axes
    texture: np.ndarray  # [Q] int64
    instance: np.ndarray  # [Q] int32, >= 1
    room: np.ndarray  # [Q] int64: which room's light shades it
    moving: np.ndarray  # [Q] int64: index of its moving object, -1 for static geometry

    def __len__(self) -> int:
        return int(self.axis.shape[0])

    def corners(self) -> np.ndarray:
        """World corners ``[Q, 4, 3]`` (moving quads at their path start)."""
        q = len(self)
        out = np.zeros((q, 4, 3), np.float32)
        rows = np.arange(q)
        b, c = PLANE_AXES[self.axis, 0], PLANE_AXES[self.axis, 1]
        for k, (ub, uc) in enumerate(((0, 0), (1, 0), (1, 1), (0, 1))):
            out[rows, k, self.axis] = self.plane
            out[rows, k, b] = self.hi[:, 0] if ub else self.lo[:, 0]
            out[rows, k, c] = self.hi[:, 1] if uc else self.lo[:, 1]
        return out


@dataclass
class MovingObjects:
    """Boxes that slide back and forth along straight seeded paths (numpy, one row each)."""

    start: np.ndarray  # [M, 3] float32: the box's min corner at the start of its path
    delta: np.ndarray  # [M, 3] float32: path end minus start
    period: np.ndarray  # [M] float32, seconds for a full back-and-forth
    phase: np.ndarray  # [M] float32, radians
    instance: np.ndarray  # [M] int32

    def __len__(self) -> int:
        return int(self.start.shape[0])

    def displacement(self, time: Tensor) -> Tensor:
        """Offsets ``[N, M, 3]`` of every object from its path start at times ``[N]`` (seconds)."""
        delta = torch.as_tensor(self.delta, device=time.device)
        period = torch.as_tensor(self.period, device=time.device)
        phase = torch.as_tensor(self.phase, device=time.device)
        frac = 0.5 - 0.5 * torch.cos(2 * torch.pi * time[:, None] / period[None] + phase[None])  # [N, M]
        return frac[..., None] * delta[None]


@dataclass(eq=False)
class Scene:
    """A procedural house. Build it with :func:`mirage_gym.world.make_scene`.

    Attributes are plain numpy arrays so a scene is cheap to copy, pickle and hash.
    """

    seed: int
    quads: Quads
    textures: TextureTable
    noise: np.ndarray  # [S, S] float32 value-noise lattice for the textures
    lights: np.ndarray  # [R, 3] float32: one point light per room
    light_colors: np.ndarray  # [R, 3] float32
    solid_lo: np.ndarray  # [S, 3] float32
    solid_hi: np.ndarray  # [S, 3] float32
    moving: MovingObjects
    x_lines: np.ndarray  # [cols + 1] float32: wall centre lines along x
    y_lines: np.ndarray  # [rows + 1] float32
    room_of_cell: np.ndarray  # [rows, cols] int64, -1 where the layout has no room
    ceiling_height: float
    wall_thickness: float
    room_interiors: np.ndarray  # [R, 4] float32: x0, y0, x1, y1 of each room inside its walls
    door_lo: np.ndarray  # [D, 3] float32: the passage of each door through its wall (box corners)
    door_hi: np.ndarray  # [D, 3] float32
    door_rooms: np.ndarray  # [D, 2] int64: the rooms a door joins
    camera_height: float = 1.4
    grid_cell: float = 0.25
    default_radius: float = 0.2
    _free_cache: dict[float, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ layout

    @property
    def num_rooms(self) -> int:
        return int(self.lights.shape[0])

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Minimum and maximum world xyz of the whole house, walls included."""
        half = self.wall_thickness / 2
        lo = np.array([self.x_lines[0] - half, self.y_lines[0] - half, 0.0], np.float32)
        hi = np.array([self.x_lines[-1] + half, self.y_lines[-1] + half, self.ceiling_height], np.float32)
        return lo, hi

    @property
    def grid_origin(self) -> tuple[float, float]:
        """World ``(x, y)`` of the corner of navigation cell ``(0, 0)``."""
        lo, _ = self.bounds
        return float(lo[0]), float(lo[1])

    @property
    def grid_shape(self) -> tuple[int, int]:
        lo, hi = self.bounds
        return (int(np.ceil((hi[1] - lo[1]) / self.grid_cell)), int(np.ceil((hi[0] - lo[0]) / self.grid_cell)))

    def cell_centers(self, z: float | None = None) -> np.ndarray:
        """World positions ``[gh, gw, 3]`` of the navigation cell centres at height ``z`` (camera height)."""
        gh, gw = self.grid_shape
        x0, y0 = self.grid_origin
        xs = x0 + (np.arange(gw) + 0.5) * self.grid_cell
        ys = y0 + (np.arange(gh) + 0.5) * self.grid_cell
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        zz = np.full_like(xx, self.camera_height if z is None else z)
        return np.stack([xx, yy, zz], axis=-1).astype(np.float32)

    def room_at(self, xy: np.ndarray) -> np.ndarray:
        """Room index ``[B]`` of world points ``[B, 2+]`` (split at wall centre lines), -1 outside the house."""
        xy = np.asarray(xy, dtype=np.float64)
        col = np.searchsorted(self.x_lines, xy[:, 0], side="right") - 1
        row = np.searchsorted(self.y_lines, xy[:, 1], side="right") - 1
        rows, cols = self.room_of_cell.shape
        inside = (col >= 0) & (col < cols) & (row >= 0) & (row < rows)
        out = np.full(xy.shape[0], -1, np.int64)
        out[inside] = self.room_of_cell[row[inside], col[inside]]
        return out

    # ------------------------------------------------------------------ collision queries

    def is_free(self, positions: ArrayLike, radius: float = 0.2) -> np.ndarray:
        """Whether a camera of ``radius`` metres at each of ``positions`` ``[B, 3]`` is free.

        Free means inside a room, with the camera sphere clear of the floor and ceiling, and
        the camera's body (the capsule from the floor to the camera, see :func:`body_clear`)
        not touching a wall, a piece of furniture or the lane of a moving object.
        """
        pos = _as_points(positions, "positions")
        if radius < 0:
            raise ValueError(f"radius must be >= 0, got {radius}")
        return self._is_free(pos, radius)

    def _is_free(self, pos: np.ndarray, radius: float) -> np.ndarray:
        free = (pos[:, 2] >= radius) & (pos[:, 2] <= self.ceiling_height - radius)
        free &= self.room_at(pos) >= 0
        free &= body_clear(pos, radius, self.solid_lo, self.solid_hi)
        return free

    def move(self, start: ArrayLike, end: ArrayLike, radius: float = 0.2) -> tuple[ArrayLike, ArrayLike]:
        """Move cameras from ``start`` towards ``end`` (``[B, 3]``), stopping just before any obstacle.

        Returns the positions reached ``[B, 3]`` and whether each move was cut short
        ``[B]``, as torch tensors if ``start`` is one (on its device), else numpy arrays.
        ``start`` must be free (:meth:`is_free`); the straight path is sampled more densely than
        the thinnest wall and the stop refined by bisection to about 0.1 mm, then pulled back by
        :data:`STOP_MARGIN`, so a camera never passes through a wall, however long the move, and a
        stopped camera is a free start for the next move. There is no sliding along walls.
        """
        s = _as_points(start, "start")
        e = _as_points(end, "end")
        if s.shape != e.shape:
            raise ValueError(f"start and end must have the same shape, got {s.shape} and {e.shape}")
        if radius < 0:
            raise ValueError(f"radius must be >= 0, got {radius}")
        if not self._is_free(s, radius).all():
            raise ValueError("start positions must be free (scene.is_free); some are inside an obstacle")
        # Sample the segment densely enough that no wall (>= wall_thickness thick) fits between samples.
        spacing = min(0.05, (self.wall_thickness + 2 * radius) / 3)
        length = np.linalg.norm(e - s, axis=1)
        steps = max(1, int(np.ceil(length.max(initial=0.0) / spacing)))
        frac = np.linspace(0.0, 1.0, steps + 1)[1:]  # [S]
        pts = s[:, None] + frac[None, :, None] * (e - s)[:, None]  # [B, S, 3]
        free = self._is_free(pts.reshape(-1, 3), radius).reshape(pts.shape[:2])
        blocked = ~free.all(axis=1)
        first = np.where(blocked, np.argmin(free, axis=1), steps)  # index of the first blocked sample
        lo_frac = np.where(first > 0, frac[np.maximum(first - 1, 0)], 0.0)
        hi_frac = np.where(blocked, frac[np.minimum(first, steps - 1)], 1.0)
        # Bisect between the last free and the first blocked sample to stop right at the obstacle.
        for _ in range(12):
            mid = 0.5 * (lo_frac + hi_frac)
            ok = self._is_free(s + mid[:, None] * (e - s), radius)
            lo_frac = np.where(blocked & ok, mid, lo_frac)
            hi_frac = np.where(blocked & ~ok, mid, hi_frac)
        # Pull a stopped camera back by STOP_MARGIN so that, once rounded to float32, it is still free:
        # the next move from there needs a free start. Should rounding still land inside, it stays put.
        lo_frac = np.maximum(0.0, lo_frac - STOP_MARGIN / np.maximum(length, 1e-12))
        reached = np.where(blocked[:, None], s + lo_frac[:, None] * (e - s), e).astype(np.float32)
        stuck = blocked & ~self._is_free(reached.astype(np.float64), radius)
        reached[stuck] = s[stuck]
        if isinstance(start, Tensor):
            return torch.from_numpy(reached).to(start.device), torch.from_numpy(blocked).to(start.device)
        return reached, blocked

    # ------------------------------------------------------------------ navigation grid

    def free_cells(self, radius: float = 0.2) -> np.ndarray:
        """Cells ``[gh, gw]`` whose centre at camera height is free for a sphere of ``radius``."""
        key = round(float(radius), 6)
        if key not in self._free_cache:
            centers = self.cell_centers()
            grid = self._is_free(centers.reshape(-1, 3), radius).reshape(centers.shape[:2])
            self._free_cache[key] = grid
        return self._free_cache[key]

    @property
    def navigable(self) -> np.ndarray:
        """Free floor cells ``[gh, gw]`` for the default camera radius (a copy)."""
        return self.free_cells(self.default_radius).copy()

    def cell_of(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row, column and in-grid mask of world points ``[B, 2+]``."""
        x0, y0 = self.grid_origin
        gh, gw = self.grid_shape
        col = np.floor((xy[:, 0] - x0) / self.grid_cell).astype(np.int64)
        row = np.floor((xy[:, 1] - y0) / self.grid_cell).astype(np.int64)
        inside = (row >= 0) & (row < gh) & (col >= 0) & (col < gw)
        return np.clip(row, 0, gh - 1), np.clip(col, 0, gw - 1), inside

    def reachable(self, position: ArrayLike, radius: float = 0.2) -> np.ndarray:
        """Free cells ``[gh, gw]`` connected (4-neighbourhood) to the cell of ``position`` ``[3]``."""
        pos = _as_points(position, "position", single=True)
        free = self.free_cells(radius)
        row, col, inside = self.cell_of(pos)
        out = np.zeros_like(free)
        if not inside[0] or not free[row[0], col[0]]:
            return out
        queue = deque([(int(row[0]), int(col[0]))])
        out[row[0], col[0]] = True
        gh, gw = free.shape
        while queue:
            i, j = queue.popleft()
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                a, b = i + di, j + dj
                if 0 <= a < gh and 0 <= b < gw and free[a, b] and not out[a, b]:
                    out[a, b] = True
                    queue.append((a, b))
        return out

    def coverage(
        self,
        depth: ArrayLike,
        cam_to_world: ArrayLike,
        intrinsics: ArrayLike,
        max_range: float = 3.0,
        floor_tolerance: float = 0.1,
    ) -> np.ndarray:
        """Navigable cells ``[gh, gw]`` whose floor is seen within ``max_range`` metres.

        ``depth`` ``[N, H, W]`` (metric z-depth, rendered or predicted), ``cam_to_world``
        ``[N, 4, 4]`` and ``intrinsics`` (the ``H x W`` camera) as in :mod:`mirage_gym.geometry`.
        A pixel counts when its backprojected point lies on the floor (``|z| <= floor_tolerance``).
        """
        d, pose, k = (torch.as_tensor(x).float().cpu() for x in (depth, cam_to_world, intrinsics))
        if d.dim() != 3 or pose.shape != (d.shape[0], 4, 4) or k.shape[-2:] != (3, 3):
            raise ValueError(
                f"expected depth [N, H, W], cam_to_world [N, 4, 4], intrinsics [N, 3, 3] or [3, 3]; got "
                f"{tuple(d.shape)}, {tuple(pose.shape)}, {tuple(k.shape)}"
            )
        points = geometry.backproject(d, k, pose)  # [N, H, W, 3]
        dist = (points - pose[:, None, None, :3, 3]).norm(dim=-1)
        valid = torch.isfinite(d) & (d > 0) & (dist <= max_range) & (points[..., 2].abs() <= floor_tolerance)
        pts = points[valid].numpy()
        grid = np.zeros(self.grid_shape, bool)
        row, col, inside = self.cell_of(pts)
        grid[row[inside], col[inside]] = True
        return grid & self.free_cells(self.default_radius)

    # ------------------------------------------------------------------ sampling

    def sample_pose(self, rng: np.random.Generator, radius: float = 0.2) -> Tensor:
        """A free ``cam_to_world`` ``[4, 4]`` float32 at camera height with random yaw and zero pitch."""
        position = self.sample_position(rng, radius)
        yaw = rng.uniform(-np.pi, np.pi)
        return geometry.pose_from_position_yaw_pitch(
            torch.from_numpy(position), torch.tensor(yaw), torch.tensor(0.0)
        )

    def sample_position(
        self, rng: np.random.Generator, radius: float = 0.2, cells: np.ndarray | None = None
    ) -> np.ndarray:
        """A free position ``[3]`` at camera height, uniform over the free cells (or over ``cells``)."""
        free = self.free_cells(radius) if cells is None else cells
        rows, cols = np.nonzero(free)
        if rows.size == 0:
            raise ValueError(f"no free cell for radius {radius}")
        centers = self.cell_centers()
        for _ in range(16):
            k = rng.integers(rows.size)
            p = centers[rows[k], cols[k]].copy()
            p[:2] += rng.uniform(-0.5, 0.5, 2) * self.grid_cell
            if self._is_free(p[None], radius)[0]:
                return p.astype(np.float32)
        return centers[rows[k], cols[k]].astype(np.float32)  # the centre of a free cell is free

    def sample_goal(self, rng: np.random.Generator, start_position: ArrayLike, min_distance: float = 1.0) -> np.ndarray:
        """A free goal position ``[3]`` (a cell centre at camera height) reachable from ``start_position``.

        Its straight-line distance from the start is at least ``min_distance`` metres.
        """
        start = _as_points(start_position, "start_position", single=True)[0]
        reach = self.reachable(start, self.default_radius)
        centers = self.cell_centers()
        far = np.linalg.norm(centers[..., :2] - start[:2], axis=-1) >= min_distance
        rows, cols = np.nonzero(reach & far)
        if rows.size == 0:
            raise ValueError(f"no reachable free cell at least {min_distance} m from the start {start.tolist()}")
        k = rng.integers(rows.size)
        return centers[rows[k], cols[k]].astype(np.float32)


def body_clear(pos: np.ndarray, radius: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``[B]``: whether bodies at ``pos`` ``[B, 3]`` keep ``radius`` from every box ``lo``/``hi`` ``[S, 3]``.

    A body is the segment from the floor below a camera up to the camera, thickened by
    ``radius`` (a capsule): the camera cannot pass over a table, but passes under a lintel.
    """
    if lo.shape[0] == 0:
        return np.ones(pos.shape[0], bool)
    gap_xy = np.maximum(np.maximum(lo[None, :, :2] - pos[:, None, :2], 0.0), pos[:, None, :2] - hi[None, :, :2])
    gap_z = np.maximum(lo[None, :, 2] - pos[:, None, 2], 0.0)  # boxes stand on or above the floor
    dist2 = (gap_xy**2).sum(-1) + gap_z**2
    return (dist2 >= radius * radius).all(axis=1)


def _as_points(x: ArrayLike, name: str, single: bool = False) -> np.ndarray:
    """Validate positions: ``[B, 3]`` (or ``[3]`` when ``single``) finite numbers, as float64 numpy."""
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    arr = arr.astype(np.float64)
    if single:
        if arr.shape != (3,):
            raise ValueError(f"{name} must have shape [3], got {list(arr.shape)}")
        arr = arr[None]
    elif arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name} must have shape [B, 3], got {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr
