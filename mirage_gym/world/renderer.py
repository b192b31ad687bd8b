"""Batched ray casting of a :class:`~mirage_gym.world.scene.Scene`: RGB, metric depth, instances.

Why ray casting of axis-aligned quads: every surface of the world is an axis-aligned
rectangle, so a ray-quad test is a multiply for the hit distance and a range test per
in-plane axis. Per batch of cameras the renderer

1. moves the quads of moving objects to each camera's time,
2. culls, per camera, the quads that face away or lie outside the view frustum (most of
   them) and bounds each survivor's projection by a pixel box,
3. tests each surviving quad only on the pixels of its box (views of the image tensors, no
   copies), keeping the nearest hit: the work is about the image area times the depth
   complexity (about 2), no Python loop over pixels, and
4. shades with one lookup per pixel into a texture atlas baked when the renderer is made:
   textures and lights are fixed in the world, so each static surface point's colour is
   computed once (procedural albedo in world-space surface coordinates, ambient light plus
   the quad's room light with Lambert and distance falloff). Moving objects are lit per pixel.

Everything is float32 torch and runs on any device; on a CPU, ``torch.set_num_threads``
decides how many cores it uses (see ``mirage-gym bench render``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mirage_gym import geometry
from mirage_gym.world.scene import PLANE_AXES, Scene
from mirage_gym.world.textures import albedo, texture_params

__all__ = ["RenderOutput", "Renderer"]

AMBIENT = 0.38
DIFFUSE = 0.95
FALLOFF = 4.0  # metres at which the room light has dropped to half
NEAR = 1e-4
EDGE = 1e-4  # quads are tested slightly enlarged so that shared edges leave no cracks
TEXEL = 0.02  # metres: the resolution of the baked texture atlas


@dataclass
class RenderOutput:
    """One rendered batch (all tensors on the renderer's device)."""

    rgb: Tensor  # [N, H, W, 3] uint8
    depth: Tensor  # [N, H, W] float32, camera z in metres
    instance: Tensor  # [N, H, W] int32, a stable id per surface/object (0: nothing hit)
    dynamic: Tensor  # [N, H, W] bool, the pixel shows a moving object


class Renderer:
    """Renders a scene from batches of cameras. ``device`` may be any torch device.

    Making one bakes the scene's texture atlas (about 0.5 s and 3 MB per 4-room house on a CPU);
    reuse it for every frame of a scene.
    """

    def __init__(self, scene: Scene, device: torch.device | str = "cpu") -> None:
        self.scene = scene
        self.device = torch.device(device)
        q = scene.quads
        dev = self.device

        def t(x, dtype=None):
            return torch.as_tensor(x, device=dev, dtype=dtype)

        self.axis = t(q.axis)
        self.sign = t(q.sign)
        self.plane = t(q.plane)
        self.lo = t(q.lo)
        self.hi = t(q.hi)
        self.texture = t(q.texture)
        self.instance = t(q.instance, torch.int32)
        self.room = t(q.room)
        self.moving = t(q.moving)
        self.corners = t(q.corners())  # [Q, 4, 3]
        self.plane_axes = t(PLANE_AXES)
        self.has_moving = len(scene.moving) > 0
        self.noise = t(scene.noise)
        self.quad_axis = self.axis.to(torch.int8)
        self.quad_pattern = t(scene.textures.pattern)[self.texture].to(torch.int8)
        self.quad_textures = t(texture_params(scene.textures))[self.texture].T.contiguous()  # [11, Q]
        room = self.room
        self.quad_lights = torch.cat(
            [t(scene.lights)[room], t(scene.light_colors)[room], self.sign[:, None]], dim=1
        ).T.contiguous()  # [7, Q]: light xyz, light rgb, normal sign
        self.quad_instance = self.instance
        self.quad_dynamic = self.moving >= 0
        self._occlusion_tables(scene)
        self._bake_atlas()

    def _occlusion_tables(self, scene: Scene) -> None:
        """Door openings per room and, per room, the quads that lie beyond its walls."""
        dev = self.device
        self.interiors = torch.as_tensor(scene.room_interiors, device=dev)  # [R, 4]
        lo = torch.as_tensor(scene.door_lo, device=dev)
        hi = torch.as_tensor(scene.door_hi, device=dev)
        openings, owners = [], []
        for d in range(lo.shape[0]):
            thin = int(torch.argmin((hi[d] - lo[d])[:2]))
            along = 1 - thin
            for face in (lo[d, thin], hi[d, thin]):  # the opening on each side of the wall
                rect = torch.zeros(4, 3, device=dev)
                rect[:, thin] = face
                rect[:, along] = torch.stack([lo[d, along], hi[d, along], hi[d, along], lo[d, along]])
                rect[:, 2] = torch.stack([lo[d, 2], lo[d, 2], hi[d, 2], hi[d, 2]])
                openings.append(rect)
                owners.append(d)
        self.door_corners = torch.stack(openings) if openings else torch.zeros(0, 4, 3, device=dev)  # [2D, 4, 3]
        rooms = torch.as_tensor(scene.door_rooms, device=dev)
        owner = torch.as_tensor(owners, dtype=torch.long, device=dev)
        r = torch.arange(self.interiors.shape[0], device=dev)
        if owners:
            self.room_doors = (rooms[owner][None] == r[:, None, None]).any(-1)  # [R, 2D]
        else:
            self.room_doors = torch.zeros(len(r), 0, dtype=torch.bool, device=dev)
        # A quad lies beyond room r's walls when its box (swept, for moving ones) misses r's interior.
        q_lo = self.corners.amin(1)
        q_hi = self.corners.amax(1)
        if self.has_moving:
            delta = torch.zeros_like(q_lo)
            moving = self.moving >= 0
            delta[moving] = torch.as_tensor(scene.moving.delta, device=dev)[self.moving[moving]]
            q_lo, q_hi = torch.minimum(q_lo, q_lo + delta), torch.maximum(q_hi, q_hi + delta)
        gap = 1e-3
        inner = self.interiors[:, None]  # [R, 1, 4]
        self.outside_room = (
            (q_hi[None, :, 0] < inner[..., 0] - gap)
            | (q_lo[None, :, 0] > inner[..., 2] + gap)
            | (q_hi[None, :, 1] < inner[..., 1] - gap)
            | (q_lo[None, :, 1] > inner[..., 3] + gap)
        )  # [R, Q]

    # ------------------------------------------------------------------ public

    @torch.no_grad()
    def render(
        self,
        cam_to_world: Tensor,
        intrinsics: Tensor,
        height: int,
        width: int,
        time: float | Tensor = 0.0,
    ) -> RenderOutput:
        """Render ``N`` views of ``height x width`` pixels, sampled at cell centres.

        Args:
            cam_to_world: ``[N, 4, 4]`` camera poses (:mod:`mirage_gym.geometry` convention).
            intrinsics: ``[N, 3, 3]`` or ``[3, 3]``: the camera of the ``height x width`` grid.
            time: seconds, a float or ``[N]``: where the moving objects are.
        """
        pose, k, times = self._validate(cam_to_world, intrinsics, height, width, time)
        n = pose.shape[0]
        # World ray directions R @ (x, y, 1) as three [N, R] components; the distance along them is camera z.
        if intrinsics.dim() == 2 or bool((k == k[:1]).all()):
            rays = geometry.camera_rays(k[0], height, width).reshape(1, -1, 3)  # shared by all cameras
        else:
            rays = geometry.camera_rays(k, height, width).reshape(n, -1, 3)
        rx, ry = rays[..., 0], rays[..., 1]
        rot = pose[:, :3, :3]
        dirs = [torch.addcmul(rot[:, j, 0, None] * rx + rot[:, j, 2, None], ry, rot[:, j, 1, None]) for j in range(3)]
        origin = pose[:, :3, 3]
        offsets = self._quad_offsets(times)  # [N, Q, 3] or None
        keep, box = self._cull(pose, k, height, width, offsets)
        depth, quad = self._cast([d.reshape(n, height, width) for d in dirs], origin, keep, box, offsets)
        depth, quad = depth.reshape(n, -1), quad.reshape(n, -1)
        rgb = self._shade(dirs, origin, depth, quad, offsets)
        hit = quad >= 0
        safe = quad.clamp(min=0).reshape(-1)
        instance = torch.where(hit, self.quad_instance.index_select(0, safe).reshape(n, -1), 0)
        dynamic = hit & self.quad_dynamic.index_select(0, safe).reshape(n, -1)
        shape = (n, height, width)
        return RenderOutput(
            rgb=rgb.reshape(*shape, 3),
            depth=depth.reshape(shape),
            instance=instance.reshape(shape),
            dynamic=dynamic.reshape(shape),
        )

    # ------------------------------------------------------------------ steps

    def _validate(self, cam_to_world, intrinsics, height, width, time):
        if not isinstance(cam_to_world, Tensor) or cam_to_world.dim() != 3 or cam_to_world.shape[1:] != (4, 4):
            got = getattr(cam_to_world, "shape", type(cam_to_world))
            raise ValueError(f"cam_to_world must be a [N, 4, 4] tensor, got {got}")
        n = cam_to_world.shape[0]
        if n == 0:
            raise ValueError("cam_to_world is empty (N = 0)")
        if not isinstance(intrinsics, Tensor) or intrinsics.shape[-2:] != (3, 3) or intrinsics.dim() not in (2, 3):
            got = getattr(intrinsics, "shape", type(intrinsics))
            raise ValueError(f"intrinsics must be a [N, 3, 3] or [3, 3] tensor, got {got}")
        if intrinsics.dim() == 3 and intrinsics.shape[0] != n:
            raise ValueError(f"intrinsics has {intrinsics.shape[0]} cameras but cam_to_world has {n}")
        if int(height) <= 0 or int(width) <= 0:
            raise ValueError(f"height and width must be positive, got {height}x{width}")
        pose = cam_to_world.to(self.device, torch.float32)
        k = intrinsics.to(self.device, torch.float32).expand(n, 3, 3)
        if not torch.isfinite(pose).all() or not torch.isfinite(k).all():
            raise ValueError("cam_to_world or intrinsics contains NaN or infinite values")
        times = torch.as_tensor(time, dtype=torch.float32, device=self.device)
        if times.dim() == 0:
            times = times.expand(n)
        if times.shape != (n,) or not torch.isfinite(times).all():
            raise ValueError(
                f"time must be a finite float or a [N] tensor with N = {n}, got shape {tuple(times.shape)}"
            )
        return pose, k, times

    def _quad_offsets(self, times: Tensor) -> Tensor | None:
        """World offsets ``[N, Q, 3]`` of every quad at each camera's time (zero for static ones)."""
        if not self.has_moving:
            return None
        disp = self.scene.moving.displacement(times)  # [N, M, 3]
        moving = self.moving >= 0
        offsets = torch.zeros(times.shape[0], self.moving.shape[0], 3, device=self.device)
        offsets[:, moving] = disp[:, self.moving[moving]]
        return offsets

    def _cull(
        self, pose: Tensor, k: Tensor, height: int, width: int, offsets: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Which quads each camera may see, and their screen bounding boxes.

        Returns ``keep`` ``[N, Q]`` and ``box`` ``[N, Q, 4]`` int64 pixel rows ``[r0, r1)`` and
        columns ``[c0, c1)`` holding every pixel that may see the quad. A quad is kept when it
        faces the camera and its projection (clipped at the near plane) meets the image. Rooms are
        closed except at doors, so from inside a room anything beyond its walls is seen only
        through its door openings: such quads are also clipped to the screen box of those doors.
        """
        n = pose.shape[0]
        origin = pose[:, :3, 3]
        plane = self.plane[None].expand(n, -1)
        corners = self.corners[None]
        if offsets is not None:
            plane = plane + offsets.gather(2, self.axis[None, :, None].expand(n, -1, 1))[..., 0]
            corners = corners + offsets[:, :, None]
        cam_origin = origin.gather(1, self.axis[None].expand(n, -1))  # [N, Q]: o along each quad's axis
        facing = (cam_origin - plane) * self.sign[None] > 0
        visible, box = self._screen_boxes(corners, pose, k, height, width)
        keep = facing & visible
        if self.door_corners.shape[0]:
            # The camera's room (none while it stands in a doorway) and the union of its doors' boxes.
            x, y = origin[:, 0, None], origin[:, 1, None]
            inside = (x > self.interiors[:, 0]) & (x < self.interiors[:, 2])
            inside &= (y > self.interiors[:, 1]) & (y < self.interiors[:, 3])  # [N, R]
            in_room = inside.any(1)
            room = inside.to(torch.int8).argmax(1)
            door_seen, door_box = self._screen_boxes(self.door_corners[None], pose, k, height, width)
            door_seen &= self.room_doors[room]  # [N, 2D]: openings of the camera's room in view
            big = torch.iinfo(torch.long).max
            lo_r = torch.where(door_seen, door_box[..., 0], big).amin(1)
            hi_r = torch.where(door_seen, door_box[..., 1], -1).amax(1)
            lo_c = torch.where(door_seen, door_box[..., 2], big).amin(1)
            hi_c = torch.where(door_seen, door_box[..., 3], -1).amax(1)
            through = torch.stack([lo_r, hi_r, lo_c, hi_c], dim=1)[:, None]  # [N, 1, 4]
            clipped = torch.stack(
                [
                    torch.maximum(box[..., 0], through[..., 0]),
                    torch.minimum(box[..., 1], through[..., 1]),
                    torch.maximum(box[..., 2], through[..., 2]),
                    torch.minimum(box[..., 3], through[..., 3]),
                ],
                dim=-1,
            )
            beyond = self.outside_room[room] & in_room[:, None]  # [N, Q]
            box = torch.where(beyond[..., None], clipped, box)
            keep &= (box[..., 1] > box[..., 0]) & (box[..., 3] > box[..., 2])
        return keep, box

    @staticmethod
    def _screen_boxes(
        corners: Tensor, pose: Tensor, k: Tensor, height: int, width: int
    ) -> tuple[Tensor, Tensor]:
        """Pixel boxes of world polygons ``corners`` ``[N or 1, K, 4, 3]`` seen by cameras ``pose`` ``[N]``.

        Returns ``visible`` ``[N, K]`` (some part in front of the camera and inside the image) and
        ``box`` ``[N, K, 4]`` int64 (rows ``[r0, r1)``, columns ``[c0, c1)``): every pixel whose
        centre ray meets the polygon is inside the box (one pixel of margin against rounding).
        """
        origin = pose[:, :3, 3]
        cam = (corners - origin[:, None, None]) @ pose[:, None, :3, :3]  # [N, K, 4, 3] = R^T (p - o)
        # Clip the outline at the near plane: the corners in front, plus where the edges cross the plane.
        nxt = cam.roll(-1, dims=2)
        z0, z1 = cam[..., 2], nxt[..., 2]
        crosses = (z0 > NEAR) != (z1 > NEAR)
        frac = ((NEAR - z0) / torch.where(crosses, z1 - z0, torch.ones_like(z0))).clamp(0, 1)
        cut = cam + frac[..., None] * (nxt - cam)
        pts = torch.cat([cam, cut], dim=2)  # [N, K, 8, 3]
        ok = torch.cat([z0 > NEAR, crosses], dim=2)
        z = pts[..., 2].clamp(min=NEAR)
        fx, fy, cx, cy = (k[:, i, j, None, None] for i, j in ((0, 0), (1, 1), (0, 2), (1, 2)))
        u = (fx * pts[..., 0] / z + cx).clamp(-1.0, width + 1.0)
        v = (fy * pts[..., 1] / z + cy).clamp(-1.0, height + 1.0)
        big = 1e9
        u0 = torch.where(ok, u, big).amin(-1)
        u1 = torch.where(ok, u, -big).amax(-1)
        v0 = torch.where(ok, v, big).amin(-1)
        v1 = torch.where(ok, v, -big).amax(-1)
        # Pixel centres j + 0.5 within [u0, u1].
        c0 = torch.floor(u0 - 0.5).clamp(0, width)
        c1 = (torch.ceil(u1 - 0.5) + 1).clamp(0, width)
        r0 = torch.floor(v0 - 0.5).clamp(0, height)
        r1 = (torch.ceil(v1 - 0.5) + 1).clamp(0, height)
        visible = ok.any(-1) & (c1 > c0) & (r1 > r0)
        return visible, torch.stack([r0, r1, c0, c1], dim=-1).long()

    def _cast(
        self, dirs: list[Tensor], origin: Tensor, keep: Tensor, box: Tensor, offsets: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Nearest hit distance (= camera z) ``[N, H, W]`` and quad index ``[N, H, W]`` (-1 for none).

        ``dirs`` are the three ``[N, H, W]`` components of the world ray directions.

        Each quad is tested only on the pixels of its screen box, as views of the image
        tensors: the work is about the image area times the depth complexity, not times
        the number of quads.
        """
        n, h, w = dirs[0].shape
        best = torch.full((n, h, w), float("inf"), device=self.device)
        quad = torch.full((n, h, w), -1, dtype=torch.long, device=self.device)
        cams, ids = keep.nonzero(as_tuple=True)
        plane = self.plane[ids]
        lo, hi = self.lo[ids], self.hi[ids]
        axis = self.axis[ids]
        if offsets is not None:
            off = offsets[cams, ids]  # [K, 3]
            plane = plane + off.gather(1, axis[:, None])[:, 0]
            bc = self.plane_axes[axis]
            lo = lo + off.gather(1, bc)
            hi = hi + off.gather(1, bc)
        o = origin[cams]
        o_a = o.gather(1, axis[:, None])[:, 0]
        o_bc = o.gather(1, self.plane_axes[axis])
        rel = plane - o_a  # signed distance from the camera to the quad's plane along its axis
        # With ratio = d_b / d_a, the hit's b offset is ratio * rel: the in-quad test becomes a range test
        # on the precomputed ratio, with bounds (lo - o) / rel, swapped when rel < 0.
        b0 = (lo[:, 0] - o_bc[:, 0] - EDGE) / rel
        b1 = (hi[:, 0] - o_bc[:, 0] + EDGE) / rel
        c0 = (lo[:, 1] - o_bc[:, 1] - EDGE) / rel
        c1 = (hi[:, 1] - o_bc[:, 1] + EDGE) / rel
        params = torch.stack(
            [rel, torch.minimum(b0, b1), torch.maximum(b0, b1), torch.minimum(c0, c1), torch.maximum(c0, c1)], dim=1
        ).tolist()
        rows = torch.cat([cams[:, None], axis[:, None], ids[:, None], box[cams, ids]], dim=1).tolist()
        # 1 / d_a kept only for rays heading towards the plane (+inf otherwise), one version per side:
        # t = rel / d_a is then +inf for rays that can never hit, which saves a t > 0 test per quad.
        inf = torch.tensor(float("inf"), device=self.device)
        inv_pos = [torch.where(d > 0, 1.0 / d, inf) for d in dirs]
        inv_neg = [torch.where(d < 0, 1.0 / d, -inf) for d in dirs]
        ratio = {(a, b): dirs[b] / dirs[a] for a in range(3) for b in range(3) if a != b}
        views: dict = {}
        current = -1
        for (cam, a, gid, r0, r1, col0, col1), (rel_k, lo_b, hi_b, lo_c, hi_c) in zip(rows, params):
            if cam != current:  # per-camera views, made once
                current = cam
                views = {key: v[cam] for key, v in ratio.items()}
                pos = [v[cam] for v in inv_pos]
                neg = [v[cam] for v in inv_neg]
                best_n, quad_n = best[cam], quad[cam]
            b, c = PLANE_AXES[a]
            win = (slice(r0, r1), slice(col0, col1))
            best_w = best_n[win]
            rb = views[a, b][win]
            rc = views[a, c][win]
            t = (pos[a] if rel_k > 0 else neg[a])[win] * rel_k
            hit = t < best_w
            hit &= rb >= lo_b
            hit &= rb <= hi_b
            hit &= rc >= lo_c
            hit &= rc <= hi_c
            torch.where(hit, t, best_w, out=best_w)
            quad_n[win].masked_fill_(hit, gid)
        return best, quad

    def _bake_atlas(self) -> None:
        """Precompute every quad's shaded texture on a ``TEXEL`` grid (an atlas of uint8 texels).

        Textures and lights are fixed in the world, so a static surface point always has the same
        colour: evaluating the procedural textures and the lighting once per texel, instead of once
        per pixel per frame, makes shading one lookup. Moving objects store their unlit albedo
        (in their own frame) and are lit per pixel, since their light changes as they move.
        """
        extent = self.hi - self.lo  # [Q, 2]
        counts = torch.ceil(extent / TEXEL).clamp(min=1).long()  # texels along (b, c)
        sizes = counts[:, 0] * counts[:, 1]
        base = torch.cumsum(sizes, 0) - sizes
        q = torch.repeat_interleave(torch.arange(len(sizes), device=self.device), sizes)
        local = torch.arange(q.shape[0], device=self.device) - base[q]
        iu = local % counts[q, 0]
        iv = torch.div(local, counts[q, 0], rounding_mode="floor")
        u = self.lo[q, 0] + (iu.float() + 0.5) * TEXEL
        v = self.lo[q, 1] + (iv.float() + 0.5) * TEXEL
        axis = self.axis[q]
        plane = self.plane[q]
        # World coordinates of the texel centres (moving quads: at their path start).
        x = torch.where(axis == 0, plane, u)
        y = torch.where(axis == 0, u, torch.where(axis == 1, plane, v))
        z = torch.where(axis == 2, plane, v)
        color = albedo(self.quad_pattern[q], q, self.quad_textures, u, v, self.noise)
        static = ~self.quad_dynamic[q]
        color = torch.where(static[:, None], self._lit(color, q, axis, x, y, z), color)
        self.atlas = (color.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)  # [T, 3]
        # Per quad: where its texels start and how they are laid out, as floats (exact below 2^24).
        self.atlas_layout = torch.stack(
            [self.lo[:, 0], self.lo[:, 1], base.float(), counts[:, 0].float(), counts[:, 1].float() - 1.0], dim=0
        ).contiguous()  # [5, Q]

    def _lit(self, color: Tensor, q: Tensor, axis: Tensor, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        """``color`` ``[P, 3]`` lit by ambient light and the room light of quads ``q`` (Lambert, falloff)."""
        lit = self.quad_lights.index_select(1, q)  # [7, P]
        tx, ty, tz = lit[0] - x, lit[1] - y, lit[2] - z
        dist = torch.sqrt(tx * tx + ty * ty + tz * tz).clamp_(min=1e-3)
        # The normal is sign * e_axis, so n . l is the signed light component along the quad's axis.
        along = torch.where(axis == 0, tx, torch.where(axis == 1, ty, tz)) * lit[6]
        light = (along / dist).clamp_(min=0.0) * DIFFUSE / (1.0 + (dist * (1.0 / FALLOFF)) ** 2) + AMBIENT
        return color * lit[3:6].T * light[:, None]

    def _shade(self, dirs: list[Tensor], origin: Tensor, depth: Tensor, quad: Tensor, offsets: Tensor | None) -> Tensor:
        """``[N * R, 3]`` uint8 colours of the hit points (black where nothing was hit).

        ``dirs`` are the three ``[N, R]`` components of the world ray directions.
        """
        n, r = depth.shape
        hit = quad >= 0
        t = torch.where(hit, depth, 0.0)
        x, y, z = ((origin[:, i, None] + t * dirs[i]).reshape(-1) for i in range(3))
        q = quad.clamp(min=0).reshape(-1)
        axis = self.quad_axis.index_select(0, q)
        # Texture coordinates are the quad's in-plane axes, in the moving object's own frame.
        lx, ly, lz = x, y, z
        dyn = None
        if offsets is not None:
            dyn = self.quad_dynamic.index_select(0, q).nonzero().squeeze(1)
            if dyn.numel():
                cam = torch.div(dyn, r, rounding_mode="floor")
                off = offsets.reshape(-1, 3).index_select(0, cam * offsets.shape[1] + q.index_select(0, dyn))
                lx, ly, lz = (c.index_add(0, dyn, -off[:, i]) for i, c in enumerate((x, y, z)))
        u = torch.where(axis == 0, ly, lx)
        v = torch.where(axis == 2, ly, lz)
        layout = self.atlas_layout.index_select(1, q)  # [5, P]
        iu = torch.minimum(((u - layout[0]) * (1.0 / TEXEL)).floor_().clamp_(min=0.0), layout[3] - 1.0)
        iv = torch.minimum(((v - layout[1]) * (1.0 / TEXEL)).floor_().clamp_(min=0.0), layout[4])
        texel = torch.addcmul(layout[2] + iu, iv, layout[3]).long()
        rgb = self.atlas.index_select(0, texel)
        if dyn is not None and dyn.numel():
            # Moving objects: light their albedo where they are now.
            qd = q.index_select(0, dyn)
            albedo_d = rgb.index_select(0, dyn).float() * (1.0 / 255.0)
            pts = [c.index_select(0, dyn) for c in (x, y, z)]
            lit = self._lit(albedo_d, qd, axis.index_select(0, dyn), *pts)
            rgb.index_copy_(0, dyn, (lit.clamp_(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8))
        return rgb * hit.reshape(-1, 1)
