"""Procedural houses: rooms on a grid, doors between them, furniture and moving boxes.

The layout is a random connected set of cells of a 3 x 3 grid with random column widths
and row depths; each cell is a room. Walls are slabs centred on the grid lines; a
random spanning tree of the room adjacencies (plus sometimes an extra edge) gets doors.
Furniture is placed piece by piece, and a piece is kept only if every free cell stays
reachable from every other, so every room can be walked into.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mirage_gym.world.scene import PLANE_AXES, MovingObjects, Quads, Scene, body_clear
from mirage_gym.world.textures import Pattern, TextureTable, random_texture

__all__ = ["make_scene"]

WALL_THICKNESS = 0.15
DOOR_WIDTH = 1.1
DOOR_HEIGHT = 2.1
GOLDEN = 0.6180339887
CAMERA_HEIGHT = 1.4
WALL_PATTERNS = (Pattern.PLAIN, Pattern.STRIPES, Pattern.BRICKS, Pattern.DOTS, Pattern.BLOTCHES, Pattern.CHECKER)

# (name, size ranges x/y/z in metres, against a wall?, texture patterns)
FURNITURE = (
    ("table", (0.9, 1.6), (0.7, 1.0), (0.7, 0.8), False, (Pattern.WOOD, Pattern.PLAIN)),
    ("shelf", (0.8, 1.6), (0.3, 0.45), (1.6, 2.2), True, (Pattern.WOOD, Pattern.STRIPES, Pattern.PLAIN)),
    ("bed", (1.9, 2.1), (1.3, 1.6), (0.45, 0.6), True, (Pattern.CHECKER, Pattern.STRIPES, Pattern.DOTS)),
    ("cabinet", (0.6, 1.2), (0.45, 0.6), (0.8, 1.1), True, (Pattern.WOOD, Pattern.PLAIN, Pattern.DOTS)),
    ("sofa", (1.6, 2.2), (0.8, 0.95), (0.75, 0.9), True, (Pattern.BLOTCHES, Pattern.PLAIN, Pattern.CHECKER)),
    ("pillar", (0.3, 0.45), (0.3, 0.45), (None, None), False, (Pattern.BRICKS, Pattern.STRIPES, Pattern.PLAIN)),
    ("crate", (0.5, 0.8), (0.5, 0.8), (0.5, 0.9), False, (Pattern.WOOD, Pattern.CHECKER, Pattern.DOTS)),
)


class _Builder:
    """Collects quads, solids and textures while a house is generated."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.quads: list[tuple] = []  # (axis, sign, plane, lo_b, lo_c, hi_b, hi_c, texture, instance, room, moving)
        self.solids: list[tuple[np.ndarray, np.ndarray]] = []
        self.textures: list[tuple] = []
        self.next_instance = 1
        self.hue = rng.random()

    def texture(self, patterns: tuple[int, ...], saturation: tuple, value: tuple, scale: tuple) -> int:
        self.hue = (self.hue + GOLDEN) % 1.0
        self.textures.append(random_texture(self.rng, self.hue, patterns, saturation, value, scale))
        return len(self.textures) - 1

    def instance(self) -> int:
        self.next_instance += 1
        return self.next_instance - 1

    def quad(
        self, axis: int, sign: float, plane: float, lo, hi, texture: int, instance: int, room: int, moving: int = -1
    ) -> None:
        self.quads.append((axis, sign, plane, lo[0], lo[1], hi[0], hi[1], texture, instance, room, moving))

    def box_faces(self, lo: np.ndarray, hi: np.ndarray, *, skip_bottom: bool = True) -> list[tuple]:
        """The faces ``(axis, sign, plane, lo_bc, hi_bc)`` of an axis-aligned box, outward normals."""
        faces = []
        for axis in range(3):
            b, c = PLANE_AXES[axis]
            for sign, plane in ((-1.0, lo[axis]), (1.0, hi[axis])):
                if axis == 2 and sign < 0 and skip_bottom:
                    continue
                faces.append((axis, sign, plane, (lo[b], lo[c]), (hi[b], hi[c])))
        return faces


def make_scene(seed: int, *, num_rooms: int | None = None, moving_objects: int = 0) -> Scene:
    """A procedural house; the same arguments always give the same scene.

    Args:
        seed: random seed of the layout, furniture, textures and moving paths.
        num_rooms: 1 to 9 rooms (default: 1 to 4, drawn from the seed).
        moving_objects: boxes that slide along seeded straight paths (``time`` in seconds).
    """
    if num_rooms is not None and not 1 <= int(num_rooms) <= 9:
        raise ValueError(f"num_rooms must be in 1..9, got {num_rooms}")
    if moving_objects < 0:
        raise ValueError(f"moving_objects must be >= 0, got {moving_objects}")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 5)) if num_rooms is None else int(num_rooms)
    room_of_cell = _grow_layout(rng, n)
    rows, cols = room_of_cell.shape
    x_lines = np.concatenate([[0.0], np.cumsum(rng.uniform(3.6, 5.4, cols))]).astype(np.float32)
    y_lines = np.concatenate([[0.0], np.cumsum(rng.uniform(3.6, 5.0, rows))]).astype(np.float32)
    height = float(rng.uniform(2.6, 3.0))
    th = WALL_THICKNESS
    b = _Builder(rng)

    rooms = [(r, c) for r in range(rows) for c in range(cols) if room_of_cell[r, c] >= 0]
    room_rect = {}
    for r, c in rooms:
        room_rect[room_of_cell[r, c]] = (x_lines[c], y_lines[r], x_lines[c + 1], y_lines[r + 1])

    # Floors and ceilings: one quad per room, reaching the wall centre lines so door passages have a floor.
    lights, light_colors = [], []
    wall_tex: dict[tuple[int, int, float], int] = {}
    wall_inst: dict[tuple[int, int, float], int] = {}
    for room in range(n):
        x0, y0, x1, y1 = room_rect[room]
        floor_tex = b.texture((Pattern.WOOD, Pattern.CHECKER, Pattern.BLOTCHES), (0.25, 0.6), (0.35, 0.7), (0.3, 0.6))
        ceil_tex = b.texture((Pattern.PLAIN, Pattern.CHECKER), (0.05, 0.2), (0.8, 0.95), (0.5, 0.8))
        b.quad(2, 1.0, 0.0, (x0, y0), (x1, y1), floor_tex, b.instance(), room)
        b.quad(2, -1.0, height, (x0, y0), (x1, y1), ceil_tex, b.instance(), room)
        for axis in (0, 1):
            for sign in (-1.0, 1.0):
                wall_tex[room, axis, sign] = b.texture(WALL_PATTERNS, (0.2, 0.65), (0.55, 0.9), (0.25, 0.6))
                wall_inst[room, axis, sign] = b.instance()
        lights.append(((x0 + x1) / 2, (y0 + y1) / 2, height - 0.3))
        warmth = rng.uniform(-1, 1)
        light_colors.append((1.0 + 0.08 * warmth, 1.0, 1.0 - 0.08 * warmth))

    # Walls: slabs on the grid lines; lines along y (at x_lines) span the corners, lines along x fit between.
    doors = _choose_doors(rng, room_of_cell)
    wall_boxes: list[tuple[np.ndarray, np.ndarray, int]] = []  # (lo, hi, door texture or -1 for plain wall)
    for c in range(cols + 1):
        for r in range(rows):
            if _room(room_of_cell, r, c - 1) < 0 and _room(room_of_cell, r, c) < 0:
                continue
            lo = np.array([x_lines[c] - th / 2, y_lines[r] - th / 2, 0.0])
            hi = np.array([x_lines[c] + th / 2, y_lines[r + 1] + th / 2, height])
            wall_boxes += _split_for_door(b, rng, lo, hi, 1, ("v", r, c) in doors)
    for r in range(rows + 1):
        for c in range(cols):
            if _room(room_of_cell, r - 1, c) < 0 and _room(room_of_cell, r, c) < 0:
                continue
            lo = np.array([x_lines[c] + th / 2, y_lines[r] - th / 2, 0.0])
            hi = np.array([x_lines[c + 1] - th / 2, y_lines[r] + th / 2, height])
            wall_boxes += _split_for_door(b, rng, lo, hi, 0, ("h", r, c) in doors)
    wall_lo = np.array([w[0] for w in wall_boxes], np.float32)
    wall_hi = np.array([w[1] for w in wall_boxes], np.float32)
    door_inst: dict[int, int] = {}
    for lo, hi, door_tex in wall_boxes:
        b.solids.append((lo, hi))
        for axis, sign, plane, flo, fhi in b.box_faces(lo, hi, skip_bottom=(lo[2] == 0.0)):
            if axis == 2 and sign > 0 and hi[2] >= height:
                continue  # hidden by the ceiling
            # Keep only faces seen from inside a room: a point just in front of the face is free space.
            bc = PLANE_AXES[axis]
            front = np.zeros(3)
            front[axis] = plane + sign * 0.01
            front[bc] = (np.array(flo) + np.array(fhi)) / 2
            if not _inside_house(front, x_lines, y_lines, room_of_cell, height) or _in_boxes(front, wall_lo, wall_hi):
                continue
            room = _room_at(front, x_lines, y_lines, room_of_cell)
            if door_tex >= 0 and (axis == 2 or _is_jamb(axis, lo, hi)):
                inst = door_inst.setdefault(door_tex, b.instance())
                b.quad(axis, sign, plane, flo, fhi, door_tex, inst, room)
            else:
                b.quad(axis, sign, plane, flo, fhi, wall_tex[room, axis, -sign], wall_inst[room, axis, -sign], room)

    structure = len(b.solids)
    cell = 0.25
    # Moving boxes: slide along a straight axis-aligned lane; the lane's swept box is an obstacle.
    mv_start, mv_delta, mv_period, mv_phase, mv_inst = [], [], [], [], []
    attempts = 0
    while len(mv_start) < moving_objects and attempts < 200 * max(moving_objects, 1):
        attempts += 1
        room = int(rng.integers(n))
        x0, y0, x1, y1 = room_rect[room]
        size = rng.uniform([0.35, 0.35, 0.35], [0.6, 0.6, 0.9])
        axis = int(rng.integers(2))
        length = rng.uniform(1.0, 2.5)
        lo = np.array([rng.uniform(x0 + 0.4, x1 - 0.4 - size[0]), rng.uniform(y0 + 0.4, y1 - 0.4 - size[1]), 0.0])
        hi = lo + size
        sweep_hi = hi.copy()
        sweep_hi[axis] += length
        if sweep_hi[axis] > (x1, y1)[axis] - 0.4:
            continue
        swept = (lo.astype(np.float32), sweep_hi.astype(np.float32))
        if not _clear(swept, b.solids[structure:], wall_boxes, margin=0.3):
            continue
        b.solids.append(swept)
        if not _connected(b.solids, x_lines, y_lines, room_of_cell, cell):
            b.solids.pop()
            continue
        k = len(mv_start)
        tex = b.texture((Pattern.CHECKER, Pattern.STRIPES, Pattern.DOTS), (0.75, 1.0), (0.75, 1.0), (0.12, 0.25))
        inst = 10_000 + k  # dynamic ids are far from static ones
        delta = np.zeros(3)
        delta[axis] = length
        for ax, sign, plane, flo, fhi in b.box_faces(lo, hi):
            b.quad(ax, sign, plane, flo, fhi, tex, inst, room, moving=k)
        mv_start.append(lo)
        mv_delta.append(delta)
        mv_period.append(rng.uniform(3.0, 8.0))
        mv_phase.append(rng.uniform(0, 2 * np.pi))
        mv_inst.append(inst)
    if len(mv_start) < moving_objects:
        raise ValueError(f"could not fit {moving_objects} moving objects in scene {seed}; ask for fewer")

    # Furniture, kept only while the free space stays connected.
    for room in range(n):
        x0, y0, x1, y1 = room_rect[room]
        target, placed = int(rng.integers(3, 7)), 0
        for _ in range(30):
            if placed == target:
                break
            kind = FURNITURE[int(rng.integers(len(FURNITURE)))]
            box = _place(rng, kind, (x0 + th / 2, y0 + th / 2, x1 - th / 2, y1 - th / 2), height)
            if box is None or not _clear(box, b.solids[structure:], wall_boxes, margin=0.6):
                continue
            b.solids.append(box)
            if not _connected(b.solids, x_lines, y_lines, room_of_cell, cell):
                b.solids.pop()
                continue
            placed += 1
            tex = b.texture(kind[5], (0.35, 0.8), (0.3, 0.85), (0.15, 0.4))
            inst = b.instance()
            for axis, sign, plane, flo, fhi in b.box_faces(*box):
                b.quad(axis, sign, plane, flo, fhi, tex, inst, room)

    # Door passages (the lintels span them) and the rooms they join, for the renderer's occlusion culling.
    passages = [(lo.copy(), hi.copy()) for lo, hi, door in wall_boxes if door >= 0 and lo[2] > 0.0]
    door_rooms = []
    for lo, hi in passages:
        lo[2], hi[2] = 0.0, DOOR_HEIGHT
        thin = int(np.argmin((hi - lo)[:2]))
        centre = (lo + hi) / 2
        sides = []
        for sign in (-1.0, 1.0):
            p = centre.copy()
            p[thin] += sign * WALL_THICKNESS
            sides.append(_room_at(p, x_lines, y_lines, room_of_cell))
        door_rooms.append(sides)
    interiors = np.array([room_rect[r] for r in range(n)], np.float32) + np.array([1, 1, -1, -1], np.float32) * th / 2

    q = np.array(b.quads, dtype=np.float64).reshape(-1, 11)
    quads = Quads(
        axis=q[:, 0].astype(np.int64),
        sign=q[:, 1].astype(np.float32),
        plane=q[:, 2].astype(np.float32),
        lo=q[:, 3:5].astype(np.float32),
        hi=q[:, 5:7].astype(np.float32),
        texture=q[:, 7].astype(np.int64),
        instance=q[:, 8].astype(np.int32),
        room=q[:, 9].astype(np.int64),
        moving=q[:, 10].astype(np.int64),
    )
    t = b.textures
    textures = TextureTable(
        pattern=np.array([x[0] for x in t], np.int64),
        color_a=np.stack([x[1] for x in t]).astype(np.float32),
        color_b=np.stack([x[2] for x in t]).astype(np.float32),
        scale=np.array([x[3] for x in t], np.float32),
        rotate=np.array([x[4] for x in t], bool),
        offset=np.stack([x[5] for x in t]).astype(np.float32),
    )
    moving = MovingObjects(
        start=np.array(mv_start, np.float32).reshape(-1, 3),
        delta=np.array(mv_delta, np.float32).reshape(-1, 3),
        period=np.array(mv_period, np.float32),
        phase=np.array(mv_phase, np.float32),
        instance=np.array(mv_inst, np.int32),
    )
    solids = b.solids
    return Scene(
        seed=int(seed),
        quads=quads,
        textures=textures,
        noise=rng.random((256, 256)).astype(np.float32),
        lights=np.array(lights, np.float32),
        light_colors=np.array(light_colors, np.float32),
        solid_lo=np.array([s[0] for s in solids], np.float32),
        solid_hi=np.array([s[1] for s in solids], np.float32),
        moving=moving,
        x_lines=x_lines,
        y_lines=y_lines,
        room_of_cell=room_of_cell,
        ceiling_height=height,
        wall_thickness=th,
        room_interiors=interiors,
        door_lo=np.array([p[0] for p in passages], np.float32).reshape(-1, 3),
        door_hi=np.array([p[1] for p in passages], np.float32).reshape(-1, 3),
        door_rooms=np.array(door_rooms, np.int64).reshape(-1, 2),
        grid_cell=cell,
        camera_height=CAMERA_HEIGHT,
    )


# ---------------------------------------------------------------------- layout helpers


def _grow_layout(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random connected set of ``n`` cells of a 3 x 3 grid, cropped; room ids in row-major order."""
    cells = {(int(rng.integers(3)), int(rng.integers(3)))}
    while len(cells) < n:
        r, c = sorted(cells)[int(rng.integers(len(cells)))]
        dr, dc = ((1, 0), (-1, 0), (0, 1), (0, -1))[int(rng.integers(4))]
        if 0 <= r + dr < 3 and 0 <= c + dc < 3:
            cells.add((r + dr, c + dc))
    r0, c0 = min(r for r, _ in cells), min(c for _, c in cells)
    r1, c1 = max(r for r, _ in cells), max(c for _, c in cells)
    grid = np.full((r1 - r0 + 1, c1 - c0 + 1), -1, np.int64)
    for k, (r, c) in enumerate(sorted(cells)):
        grid[r - r0, c - c0] = k
    return grid


def _room(grid: np.ndarray, r: int, c: int) -> int:
    rows, cols = grid.shape
    return int(grid[r, c]) if 0 <= r < rows and 0 <= c < cols else -1


def _choose_doors(rng: np.random.Generator, grid: np.ndarray) -> set[tuple[str, int, int]]:
    """Walls with a door: a random spanning tree of adjacent rooms, plus sometimes one extra door.

    A door is named by its wall: ``("v", r, c)`` is the wall on line ``x_lines[c]`` in row ``r``,
    ``("h", r, c)`` the wall on line ``y_lines[r]`` in column ``c``.
    """
    rows, cols = grid.shape
    edges = []
    for r in range(rows):
        for c in range(cols):
            if grid[r, c] < 0:
                continue
            if _room(grid, r, c + 1) >= 0:
                edges.append((("v", r, c + 1), grid[r, c], grid[r, c + 1]))
            if _room(grid, r + 1, c) >= 0:
                edges.append((("h", r + 1, c), grid[r, c], grid[r + 1, c]))
    order = rng.permutation(len(edges))
    parent = list(range(int(grid.max()) + 1))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    doors, spare = set(), []
    for k in order:
        wall, a, b = edges[k]
        if find(a) != find(b):
            parent[find(a)] = find(b)
            doors.add(wall)
        else:
            spare.append(wall)
    if spare and rng.random() < 0.5:
        doors.add(spare[0])
    return doors


def _split_for_door(b: _Builder, rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, along: int, door: bool):
    """A wall slab as boxes ``(lo, hi, door_texture)``: whole, or two pieces and a lintel around a door."""
    if not door:
        return [(lo, hi, -1)]
    span = hi[along] - lo[along]
    centre = lo[along] + rng.uniform(0.35 + DOOR_WIDTH / 2, span - 0.35 - DOOR_WIDTH / 2)
    d0, d1 = centre - DOOR_WIDTH / 2, centre + DOOR_WIDTH / 2
    frame = b.texture((Pattern.WOOD, Pattern.PLAIN), (0.3, 0.6), (0.3, 0.6), (0.1, 0.2))
    left_hi = hi.copy()
    left_hi[along] = d0
    right_lo = lo.copy()
    right_lo[along] = d1
    lintel_lo, lintel_hi = lo.copy(), hi.copy()
    lintel_lo[along], lintel_hi[along], lintel_lo[2] = d0, d1, DOOR_HEIGHT
    return [(lo, left_hi, frame), (right_lo, hi, frame), (lintel_lo, lintel_hi, frame)]


def _is_jamb(axis: int, lo: np.ndarray, hi: np.ndarray) -> bool:
    """Whether a face perpendicular to ``axis`` of wall box ``lo..hi`` is a door side (crosses the thin axis)."""
    thin = int(np.argmin((hi - lo)[:2]))
    return axis != thin


def _room_at(p: np.ndarray, x_lines: np.ndarray, y_lines: np.ndarray, grid: np.ndarray) -> int:
    c = int(np.searchsorted(x_lines, p[0], side="right")) - 1
    r = int(np.searchsorted(y_lines, p[1], side="right")) - 1
    return _room(grid, r, c)


def _inside_house(p: np.ndarray, x_lines: np.ndarray, y_lines: np.ndarray, grid: np.ndarray, height: float) -> bool:
    return 0.0 <= p[2] <= height and _room_at(p, x_lines, y_lines, grid) >= 0


def _in_boxes(p: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> bool:
    return bool(((p > lo) & (p < hi)).all(axis=1).any())


def _place(rng: np.random.Generator, kind: tuple, rect: tuple, height: float) -> tuple[np.ndarray, np.ndarray] | None:
    """A box for a furniture ``kind`` in the room interior ``rect`` (x0, y0, x1, y1), or None."""
    _, sx, sy, sz, against_wall, _ = kind
    size = np.array([rng.uniform(*sx), rng.uniform(*sy), height if sz[0] is None else rng.uniform(*sz)])
    if rng.random() < 0.5:
        size[[0, 1]] = size[[1, 0]]
    x0, y0, x1, y1 = rect
    if x1 - x0 < size[0] + 0.2 or y1 - y0 < size[1] + 0.2:
        return None
    if against_wall:
        # Long side against one of the four walls.
        side = int(rng.integers(4))
        if side < 2:
            size[[0, 1]] = np.sort(size[:2])  # thin along x
            x = x0 if side == 0 else x1 - size[0]
            y = rng.uniform(y0, y1 - size[1])
        else:
            size[[0, 1]] = np.sort(size[:2])[::-1]  # thin along y
            y = y0 if side == 2 else y1 - size[1]
            x = rng.uniform(x0, x1 - size[0])
            if x1 - x0 < size[0]:
                return None
    else:
        x = rng.uniform(x0 + 0.6, max(x0 + 0.6, x1 - 0.6 - size[0]))
        y = rng.uniform(y0 + 0.6, max(y0 + 0.6, y1 - 0.6 - size[1]))
    lo = np.array([x, y, 0.0])
    return lo.astype(np.float32), (lo + size).astype(np.float32)


def _clear(box: tuple, furniture: list, walls: list, margin: float) -> bool:
    """Whether ``box`` keeps ``margin`` from other furniture and stays out of door passages."""
    lo, hi = box
    for flo, fhi in furniture:
        if (lo - margin < fhi).all() and (hi + margin > flo).all():
            return False
    for wlo, whi, door in walls:
        if door < 0 or wlo[2] == 0.0:
            continue
        # Keep 1 m clear around each door opening (its lintel spans it), so doors stay usable.
        if (lo[:2] - 1.0 < whi[:2]).all() and (hi[:2] + 1.0 > wlo[:2]).all():
            return False
    return True


def _connected(solids: list, x_lines: np.ndarray, y_lines: np.ndarray, grid: np.ndarray, cell: float) -> bool:
    """Whether the free cells (default radius, with a margin) form one connected region."""
    lo = np.array([s[0] for s in solids], np.float32)
    hi = np.array([s[1] for s in solids], np.float32)
    x0, y0 = x_lines[0] - WALL_THICKNESS / 2, y_lines[0] - WALL_THICKNESS / 2
    gw = int(np.ceil((x_lines[-1] + WALL_THICKNESS / 2 - x0) / cell))
    gh = int(np.ceil((y_lines[-1] + WALL_THICKNESS / 2 - y0) / cell))
    xs = x0 + (np.arange(gw) + 0.5) * cell
    ys = y0 + (np.arange(gh) + 0.5) * cell
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    pts = np.stack([xx, yy, np.full_like(xx, CAMERA_HEIGHT)], -1).reshape(-1, 3)
    col = np.searchsorted(x_lines, pts[:, 0], side="right") - 1
    row = np.searchsorted(y_lines, pts[:, 1], side="right") - 1
    rows, cols = grid.shape
    ok = (col >= 0) & (col < cols) & (row >= 0) & (row < rows)
    inside = np.zeros(len(pts), bool)
    inside[ok] = grid[row[ok], col[ok]] >= 0
    # The clearance of trajectory planning (radius 0.2 + half a cell), so planned paths stay connected too.
    radius = 0.2 + cell * 0.55
    free = inside & body_clear(pts, radius, lo, hi)
    free = free.reshape(gh, gw)
    _, count = ndimage.label(free)
    return count == 1
