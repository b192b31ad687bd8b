"""A top-down map of the scene memory: its points seen from above, the camera and its path.

The map is a raster of ``cell``-metre squares over the house (north up: world ``+y`` is the
top of the image, ``+x`` the right). Each square shows the highest memory point below
``max_height`` that falls in it -- the ceiling is left out, or it would hide the whole room --
over a faint floor plan of the ground truth (room floors, walls and furniture) for
orientation. The camera's path is a thin line, the camera a dot with its field of view.

Under generated physics the map also shows what the physics holds: the cells of generated
obstacles the body can touch (red), and a cross where the last move was stopped (red: an
obstacle; amber: space the world has never shown). An episode started from a picture has no
house: its map is a square of :data:`PICTURE_MAP_EXTENT` metres around the start, with no
floor plan.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from mirage_gym.world import Scene

__all__ = ["TopDownMap"]

_OUTSIDE = (14, 14, 18)
_FLOOR = (38, 38, 44)
_SOLID = (70, 70, 78)
_PATH = (150, 150, 160)
_CAMERA = (60, 220, 255)
_OBSTACLE = (230, 60, 60)
_BLOCKED = {"obstacle": (255, 70, 70), "unseen": (255, 190, 40)}
PICTURE_MAP_EXTENT = 16.0  # metres: the side of the map of a picture's world (no house gives bounds)


class TopDownMap:
    """Draws one scene's memory from above.

    Args:
        scene: the ground-truth house (its bounds, floors, walls and furniture), or ``None`` for a
            world started from a picture (then ``centre`` gives the map's middle).
        cell: metres per map square (a memory point fills one square).
        size: about this many pixels along the longer side (a whole number of pixels per square).
        max_height: points above this height (metres) are not drawn; default: 0.25 m below the ceiling.
        fov: the camera's horizontal field of view in degrees (the wedge drawn at the camera).
        centre: world ``(x, y)`` of the middle of a map without a scene (default: the origin).
    """

    def __init__(
        self, scene: Scene | None, cell: float = 0.05, size: int = 480, max_height: float | None = None,
        fov: float = 90.0, centre: np.ndarray | None = None,
    ) -> None:
        if not (math.isfinite(cell) and cell > 0):
            raise ValueError(f"cell must be a positive number of metres, got {cell!r}")
        if size < 16:
            raise ValueError(f"size must be >= 16 pixels, got {size}")
        if scene is None:
            middle = np.zeros(2) if centre is None else np.asarray(centre, np.float64)[:2]
            lo = middle - PICTURE_MAP_EXTENT / 2
            hi = middle + PICTURE_MAP_EXTENT / 2
        else:
            lo, hi = scene.bounds
        self.origin = np.array([lo[0], hi[1]], np.float64)  # world (x, y) of the map's top-left corner
        self.cell = float(cell)
        self.shape = (int(math.ceil((hi[1] - lo[1]) / cell)), int(math.ceil((hi[0] - lo[0]) / cell)))
        self.scale = max(1, size // max(self.shape))  # pixels per square
        ceiling = 2.5 if scene is None else scene.ceiling_height  # a picture's ceiling is unknown: a room's
        self.max_height = ceiling - 0.25 if max_height is None else float(max_height)
        self.fov = float(fov)
        self._background = self._floor_plan(scene)

    @property
    def pixel_shape(self) -> tuple[int, int]:
        """``(height, width)`` of the drawn map."""
        return self.shape[0] * self.scale, self.shape[1] * self.scale

    def to_pixels(self, xy: np.ndarray) -> np.ndarray:
        """World ``(x, y)`` ``[..., 2]`` -> map pixel ``(column, row)`` ``[..., 2]`` (float)."""
        xy = np.asarray(xy, np.float64)
        col = (xy[..., 0] - self.origin[0]) / self.cell * self.scale
        row = (self.origin[1] - xy[..., 1]) / self.cell * self.scale
        return np.stack([col, row], axis=-1)

    def _floor_plan(self, scene: Scene | None) -> np.ndarray:
        image = np.empty((*self.pixel_shape, 3), np.uint8)
        image[:] = _OUTSIDE
        if scene is None:
            return image
        for boxes, color in ((scene.room_interiors.reshape(-1, 2, 2), _FLOOR),
                             (np.stack([scene.solid_lo[:, :2], scene.solid_hi[:, :2]], axis=1), _SOLID)):
            for lo, hi in boxes:
                a = np.round(self.to_pixels(lo)).astype(int)
                b = np.round(self.to_pixels(hi)).astype(int)
                cv2.rectangle(image, (a[0], b[1]), (b[0] - 1, a[1] - 1), color, thickness=cv2.FILLED)
        return image

    def _splat(self, points: np.ndarray, colors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The colour ``[gh, gw, 3]`` of the highest point per square, and which squares hold one."""
        gh, gw = self.shape
        grid = np.zeros((gh * gw, 3), np.uint8)
        filled = np.zeros(gh * gw, bool)
        keep = np.isfinite(points).all(axis=1) & (points[:, 2] <= self.max_height)
        points, colors = points[keep], colors[keep]
        col = np.floor((points[:, 0] - self.origin[0]) / self.cell).astype(np.int64)
        row = np.floor((self.origin[1] - points[:, 1]) / self.cell).astype(np.int64)
        inside = (row >= 0) & (row < gh) & (col >= 0) & (col < gw)
        square = (row * gw + col)[inside]
        if square.size:
            order = np.lexsort((points[inside, 2], square))  # by square, then height: each square's last is highest
            square = square[order]
            last = np.r_[square[1:] != square[:-1], True]
            grid[square[last]] = colors[inside][order][last]
            filled[square[last]] = True
        return grid.reshape(gh, gw, 3), filled.reshape(gh, gw)

    def draw(self, points: np.ndarray, colors: np.ndarray, path: np.ndarray, pose: np.ndarray,
             physics: dict | None = None, blocked_by: str | None = None) -> np.ndarray:
        """The map ``[H, W, 3]`` uint8.

        Args:
            points: ``[P, 3]`` world points of the memory; colors: ``[P, 3]`` uint8, their colours.
            path: ``[K, 3]`` camera positions so far (oldest first).
            pose: ``[4, 4]`` the camera's current ``cam_to_world``.
            physics: generated physics' grids (:meth:`GeneratedPhysics.maps`): its obstacle cells are drawn.
            blocked_by: what stopped the last move (``"obstacle"``, ``"unseen"``): a cross at the camera.
        """
        points = np.asarray(points, np.float32).reshape(-1, 3)
        colors = np.asarray(colors, np.uint8).reshape(-1, 3)
        if len(points) != len(colors):
            raise ValueError(f"points and colors must have the same length, got {len(points)} and {len(colors)}")
        grid, filled = self._splat(points, colors)
        image = self._background.copy()
        if filled.any():
            big = np.repeat(np.repeat(filled, self.scale, 0), self.scale, 1)
            image[big] = np.repeat(np.repeat(grid, self.scale, 0), self.scale, 1)[big]
        if physics is not None:
            self._draw_obstacles(image, physics)
        self._draw_camera(image, np.asarray(path, np.float64).reshape(-1, 3), np.asarray(pose, np.float64))
        if blocked_by is not None:
            self._draw_block(image, np.asarray(pose, np.float64)[:2, 3], _BLOCKED.get(blocked_by, _BLOCKED["obstacle"]))
        return image

    def _draw_obstacles(self, image: np.ndarray, physics: dict) -> None:
        """Blend generated physics' obstacle cells (its own ``voxel`` grid) into the map."""
        grid = np.asarray(physics["obstacle"], bool)
        if not grid.any():
            return
        x0, y0 = physics["obstacle_origin"]
        cell = float(physics.get("obstacle_cell", self.cell))
        h, w = image.shape[:2]
        # The world point under every map pixel's centre, looked up in the obstacle grid (rows along +y).
        x = self.origin[0] + (np.arange(w) + 0.5) / self.scale * self.cell
        y = self.origin[1] - (np.arange(h) + 0.5) / self.scale * self.cell
        j = np.floor((x - x0) / cell).astype(np.int64)
        i = np.floor((y - y0) / cell).astype(np.int64)
        gi, gj = grid.shape
        ok_i, ok_j = (i >= 0) & (i < gi), (j >= 0) & (j < gj)
        mask = np.zeros((h, w), bool)
        mask[np.ix_(ok_i, ok_j)] = grid[np.ix_(i[ok_i], j[ok_j])]
        image[mask] = (0.45 * image[mask] + 0.55 * np.array(_OBSTACLE)).astype(np.uint8)

    def _draw_block(self, image: np.ndarray, xy: np.ndarray, color: tuple[int, int, int]) -> None:
        c = self.to_pixels(xy)
        r = max(4, 3 * self.scale)
        for d in ((1, 1), (1, -1)):
            p0 = (int(round(c[0] - r * d[0])), int(round(c[1] - r * d[1])))
            p1 = (int(round(c[0] + r * d[0])), int(round(c[1] + r * d[1])))
            cv2.line(image, p0, p1, color, 2, cv2.LINE_AA)

    def _draw_camera(self, image: np.ndarray, path: np.ndarray, pose: np.ndarray) -> None:
        shift = 4  # cv2 draws with sub-pixel precision through fixed-point coordinates
        def fixed(xy: np.ndarray) -> np.ndarray:
            return np.round(self.to_pixels(xy) * (1 << shift)).astype(np.int32)

        if len(path) > 1:
            cv2.polylines(image, [fixed(path[:, :2])], False, _PATH, 1, cv2.LINE_AA, shift)
        position = pose[:3, 3]
        forward = pose[:3, 2]
        yaw = math.atan2(forward[1], forward[0])
        reach = 1.0  # metres of the field-of-view wedge
        half = math.radians(self.fov) / 2
        wedge = np.array([position[:2]] + [
            position[:2] + reach * np.array([math.cos(yaw + a), math.sin(yaw + a)]) for a in (half, -half)
        ])
        cv2.polylines(image, [fixed(wedge)], True, _CAMERA, 1, cv2.LINE_AA, shift)
        radius = max(2, self.scale * 2) << shift
        cv2.circle(image, tuple(int(v) for v in fixed(position[:2])), radius, _CAMERA, cv2.FILLED, cv2.LINE_AA, shift)
