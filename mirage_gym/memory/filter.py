"""Which tokens of a generated chunk may enter the latent cache.

Two kinds of token must stay out: **empty** ones (no usable depth) and **dynamic**
ones (moving objects, which would be frozen into the world at a stale place). The
filter decides from what exists at generation time -- the chunk's frames, their
depth and their poses -- with no segmentation model.

Dynamic rule (per pixel, then pooled to tokens). Each pixel of frame ``t`` is lifted
with its depth and pose and projected into every other frame ``s`` of the chunk.
With ``z`` its depth in ``s`` and ``d`` the depth ``s`` observed there:

* outside ``s``'s image, or ``s`` has no valid depth there: no evidence;
* ``z`` behind the surface ``s`` saw (``z > d``): the point is occluded in ``s`` --
  no evidence either way (often by a moving object, which is flagged from its own side);
* ``z`` clearly in front of *every* depth ``s`` saw in the 3x3 neighbourhood
  (``z < (1 - depth_tolerance) * min d``): ``s`` should have seen the point and saw
  through it -- the point has moved. The neighbourhood minimum keeps static depth
  edges, where one pixel of misregistration lands on the background, from voting;
* optionally (``color_tolerance``, off by default), depths agree over the whole
  neighbourhood but the colours differ by more than the tolerance (mean absolute RGB
  difference in ``[0, 1]``): an object sliding along a surface at similar depth. Off
  because half-pixel misregistration at texture edges makes it vote on static
  surfaces; ``mirage-gym bench filter`` measured it as a net loss on the procedural rooms.

A pixel has evidence when at least ``min_votes`` other frames give some, and keeps it
only with ``min_support`` evidence pixels in its 3x3 window (isolated votes are depth
noise). Evidence only covers the band an object swept during the chunk, so dynamic pixels then grow
``grow_pixels`` steps over depth-continuous neighbours (the object's own surface) and
stop at depth edges. A token is dynamic when at least ``dynamic_fraction`` of its valid
pixels are; dynamic tokens can be dilated by ``dilation`` tokens. A token is empty when
fewer than ``min_valid_fraction`` of its pixels have a finite depth in
``[min_depth, max_depth]``. ``keep = not empty and not dynamic``.

Cost: every pixel is reprojected into every other frame of the chunk. ``stride`` runs the
rule on every ``stride``-th pixel of each row and column (the pixel camera adjusted
exactly), ``stride**2`` times cheaper; with 8x8 pixels per token the token decisions barely
change (``mirage-gym bench filter --stride`` measures it), so generators use ``stride=2``.

What the chunk alone cannot show: an object that does not move during the chunk (a slow
object near the end of its path), or one that only a single frame of it shows, gives no
evidence -- nothing in the chunk tells it from furniture. ``history`` frames (frames before
the chunk, :attr:`MirageGenerator.filter_history <mirage_gym.model.MirageGenerator>`) are
projected into as well, never decided themselves: where one of them saw free space at a
chunk pixel's point, something has arrived since. On the evaluation's rendered walks with
moving boxes and true depth, 8 frames of history took the box tokens kept from 17.4 % to
4.3 % (static tokens dropped 0.1 % to 0.2 %).

Cross-chunk check (``cross_chunk=True``, off by default; :meth:`TokenFilter.carve`,
:meth:`LatentCache.carve <mirage_gym.memory.LatentCache.carve>`, :func:`seen_through`).
Before a chunk is written, every cached token of its scene is projected into each of the
chunk's frames; a frame *sees through* a token when the smallest depth it observed in the
``(2 cross_chunk_radius + 1)^2`` pixel window around the projection is clearly beyond it,
``z < (1 - cross_chunk_tolerance) * near`` -- free space where the cache holds a surface,
so whatever was there has left. Tokens seen through by ``cross_chunk_votes`` frames are
dropped, and the chunk may write the cells they covered. The window minimum keeps occlusion
edges (a token one pixel off a silhouette) from voting, and a per-frame depth scale,
the median ``z / d`` over points that roughly agree, is taken out first
(``cross_chunk_align``), since a generator's depth is often off by a scale for a whole frame.
Static surfaces agree with every view and stay; only evidence of free space removes. Tokens
*arriving* in front of a cached surface are not judged here: from a new viewpoint that is
also what ordinary parallax looks like. Defaults (tolerance 0.2, 2 votes) were chosen with
``mirage-gym bench filter --cross-chunk`` under per-frame depth scale noise; on exact depth
0.1 and 1 vote remove more. The shipped model keeps the check off: its generated depth is
too inconsistent between chunks (it dropped 4-10 % of the static tokens it wrote on the
eval trajectories) and its generated world holds almost no moving-object tokens to remove.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mirage_gym.geometry import backproject, points_to_cells, project, subsample_intrinsics
from mirage_gym.memory.checks import check_intrinsics, check_poses, check_tensor

__all__ = ["TokenFilter", "FilterResult", "observed_space", "pool_depth", "pool_fraction", "seen_through"]


def _check_latent_size(height: int, width: int, latent_size: tuple[int, int]) -> tuple[int, int]:
    if (
        not isinstance(latent_size, (tuple, list))
        or len(latent_size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in latent_size)
    ):
        raise ValueError(f"latent_size must be a pair of positive ints (h, w), got {latent_size!r}")
    h, w = latent_size
    if height % h or width % w:
        raise ValueError(f"latent_size {(h, w)} must divide the image size {(height, width)}")
    return h, w


def _blocks(x: Tensor, h: int, w: int) -> Tensor:
    """``[..., H, W]`` -> ``[..., h, w, (H/h)*(W/w)]``: the pixels of each token."""
    *lead, height, width = x.shape
    fy, fx = height // h, width // w
    x = x.reshape(*lead, h, fy, w, fx).movedim(-3, -2)
    return x.reshape(*lead, h, w, fy * fx)


def pool_fraction(mask: Tensor, latent_size: tuple[int, int]) -> Tensor:
    """Fraction ``[..., h, w]`` of each token's pixels set in ``mask`` ``[..., H, W]``."""
    h, w = _check_latent_size(mask.shape[-2], mask.shape[-1], latent_size)
    return _blocks(mask.float(), h, w).mean(dim=-1)


def pool_depth(depth: Tensor, latent_size: tuple[int, int], min_depth: float = 0.0, max_depth: float = float("inf")) -> Tensor:
    """Token depth ``[..., h, w]``: the median of the valid pixel depths of each token.

    The median picks the surface covering most of the token instead of averaging across
    a depth edge. Tokens without a valid pixel get NaN (an empty token for the cache).
    """
    h, w = _check_latent_size(depth.shape[-2], depth.shape[-1], latent_size)
    depth = depth.float()
    valid = torch.isfinite(depth) & (depth >= min_depth) & (depth <= max_depth)
    blocks = _blocks(torch.where(valid, depth, torch.full_like(depth, float("nan"))), h, w)
    return torch.nanmedian(blocks, dim=-1).values


@dataclass
class FilterResult:
    """Decisions of :class:`TokenFilter` for a chunk ``[B, T]``."""

    keep: Tensor  # [B, T, h, w] bool: tokens to write
    dynamic: Tensor  # [B, T, h, w] bool: dynamic tokens (after dilation)
    empty: Tensor  # [B, T, h, w] bool: tokens without enough valid depth
    dynamic_pixels: Tensor  # [B, T, H, W] bool: per-pixel dynamic decision (supported, grown; diagnostics)
    valid_pixels: Tensor  # [B, T, H, W] bool: pixels with usable depth


class TokenFilter:
    """Drop empty and dynamic tokens of a chunk before it is written to the cache.

    See the module docstring for the rule. Call it for the keep mask, or use
    :meth:`analyze` for every intermediate decision.
    """

    def __init__(
        self,
        max_depth: float = 50.0,
        min_depth: float = 0.05,
        *,
        min_valid_fraction: float = 0.5,
        depth_tolerance: float = 0.05,
        color_tolerance: float | None = None,
        min_votes: int = 1,
        dynamic_fraction: float = 0.05,
        dilation: int = 0,
        grow_pixels: int = 8,
        min_support: int = 4,
        stride: int = 1,
        cross_chunk: bool = False,
        cross_chunk_tolerance: float = 0.2,
        cross_chunk_radius: int = 1,
        cross_chunk_votes: int = 2,
        cross_chunk_align: bool = True,
    ) -> None:
        if not 0.0 <= min_depth < max_depth:
            raise ValueError(f"need 0 <= min_depth < max_depth, got min_depth={min_depth}, max_depth={max_depth}")
        for name, value in (
            ("min_valid_fraction", min_valid_fraction),
            ("depth_tolerance", depth_tolerance),
            ("dynamic_fraction", dynamic_fraction),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if color_tolerance is not None and not color_tolerance > 0.0:
            raise ValueError(f"color_tolerance must be positive or None, got {color_tolerance}")
        if not isinstance(min_votes, int) or min_votes < 1:
            raise ValueError(f"min_votes must be a positive int, got {min_votes!r}")
        if not isinstance(min_support, int) or not 1 <= min_support <= 9:
            raise ValueError(f"min_support must be an int in [1, 9], got {min_support!r}")
        if not isinstance(grow_pixels, int) or grow_pixels < 0:
            raise ValueError(f"grow_pixels must be a non-negative int, got {grow_pixels!r}")
        if not isinstance(dilation, int) or dilation < 0:
            raise ValueError(f"dilation must be a non-negative int, got {dilation!r}")
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be a positive int, got {stride!r}")
        if not isinstance(cross_chunk, bool):
            raise ValueError(f"cross_chunk must be a bool, got {cross_chunk!r}")
        if not 0.0 <= cross_chunk_tolerance < 1.0:
            raise ValueError(f"cross_chunk_tolerance must be in [0, 1), got {cross_chunk_tolerance}")
        if not isinstance(cross_chunk_radius, int) or cross_chunk_radius < 0:
            raise ValueError(f"cross_chunk_radius must be a non-negative int, got {cross_chunk_radius!r}")
        if not isinstance(cross_chunk_votes, int) or cross_chunk_votes < 1:
            raise ValueError(f"cross_chunk_votes must be a positive int, got {cross_chunk_votes!r}")
        self.max_depth = float(max_depth)
        self.min_depth = float(min_depth)
        self.min_valid_fraction = float(min_valid_fraction)
        self.depth_tolerance = float(depth_tolerance)
        self.color_tolerance = None if color_tolerance is None else float(color_tolerance)
        self.min_votes = min_votes
        self.dynamic_fraction = float(dynamic_fraction)
        self.dilation = dilation
        self.grow_pixels = grow_pixels
        self.min_support = min_support
        self.stride = stride
        self.cross_chunk = cross_chunk
        self.cross_chunk_tolerance = float(cross_chunk_tolerance)
        self.cross_chunk_radius = cross_chunk_radius
        self.cross_chunk_votes = cross_chunk_votes
        self.cross_chunk_align = bool(cross_chunk_align)

    def __call__(self, rgb: Tensor, depth: Tensor, cam_to_world: Tensor, intrinsics: Tensor,
                 latent_size: tuple[int, int], history: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """``keep`` ``[B, T, h, w]`` bool; see :meth:`analyze`."""
        return self.analyze(rgb, depth, cam_to_world, intrinsics, latent_size, history).keep

    def analyze(self, rgb: Tensor, depth: Tensor, cam_to_world: Tensor, intrinsics: Tensor,
                latent_size: tuple[int, int], history: tuple[Tensor, Tensor, Tensor] | None = None) -> FilterResult:
        """Filter one chunk.

        Args:
            rgb: ``[B, T, H, W, 3]`` uint8, or float in ``[0, 1]``.
            depth: ``[B, T, H, W]`` metres.
            cam_to_world: ``[B, T, 4, 4]``.
            intrinsics: ``[3, 3]`` or ``[B, T, 3, 3]``: the pixel camera.
            latent_size: ``(h, w)``, dividing ``(H, W)``.
            history: frames before the chunk, ``(rgb [B, P, H, W, 3], depth [B, P, H, W], cam_to_world
                [B, P, 4, 4])`` with the same camera (``[3, 3]`` intrinsics): the chunk's pixels are also
                projected into them (an object that has moved in since shows as free space there); they are
                not decided themselves. ``None``: the chunk alone.
        """
        rgb = check_tensor("rgb", rgb, 5)
        b, t, height, width, ch = rgb.shape
        if ch != 3:
            raise ValueError(f"rgb must have 3 channels last, got shape {tuple(rgb.shape)}")
        depth = check_tensor("depth", depth, 4)
        if tuple(depth.shape) != (b, t, height, width) or not depth.is_floating_point():
            raise ValueError(
                f"depth must be floating point with shape {(b, t, height, width)}, got {depth.dtype} {tuple(depth.shape)}"
            )
        poses = check_poses("cam_to_world", cam_to_world, b, leading=(b, t)).to(rgb.device)
        h, w = _check_latent_size(height, width, latent_size)
        colors = rgb.float() / 255.0 if rgb.dtype == torch.uint8 else rgb.float()
        depth = depth.float().to(rgb.device)
        p = 0
        if history is not None:
            if not isinstance(history, (tuple, list)) or len(history) != 3:
                raise ValueError("history must be a tuple (rgb, depth, cam_to_world)")
            if torch.as_tensor(intrinsics).dim() != 2:
                raise ValueError("history needs one camera for all frames: [3, 3] intrinsics")
            h_rgb = check_tensor("history rgb", history[0], 5)
            p = h_rgb.shape[1]
            if tuple(h_rgb.shape) != (b, p, height, width, 3):
                raise ValueError(f"history rgb must be [{b}, P, {height}, {width}, 3], got {tuple(h_rgb.shape)}")
            h_depth = check_tensor("history depth", history[1], 4)
            if tuple(h_depth.shape) != (b, p, height, width) or not h_depth.is_floating_point():
                raise ValueError(f"history depth must be floating point [{b}, {p}, {height}, {width}], got "
                                 f"{h_depth.dtype} {tuple(h_depth.shape)}")
            h_poses = check_poses("history cam_to_world", history[2], b, leading=(b, p)).to(rgb.device)
            h_colors = h_rgb.float() / 255.0 if h_rgb.dtype == torch.uint8 else h_rgb.float()
            colors = torch.cat([h_colors.to(rgb.device), colors], dim=1)
            depth = torch.cat([h_depth.float().to(rgb.device), depth], dim=1)
            poses = torch.cat([h_poses, poses], dim=1)
        k = check_intrinsics("intrinsics", intrinsics, (b, p + t)).to(rgb.device)
        s = self.stride
        if s > 1:
            if (height // h) % s or (width // w) % s:
                raise ValueError(f"stride {s} must divide the pixels per token {(height // h, width // w)}")
            o = s // 2
            colors, depth = colors[:, :, o::s, o::s], depth[:, :, o::s, o::s]
            k = subsample_intrinsics(k, s)
        valid = torch.isfinite(depth) & (depth >= self.min_depth) & (depth <= self.max_depth)
        dynamic_pixels = self._dynamic_pixels(colors, depth, valid, poses, k, first=p)
        depth, valid = depth[:, p:], valid[:, p:]
        dynamic_pixels = self._grow(self._supported(dynamic_pixels & valid), depth, valid)

        valid_fraction = pool_fraction(valid, (h, w))
        empty = valid_fraction < self.min_valid_fraction
        dyn_fraction = pool_fraction(dynamic_pixels, (h, w)) / valid_fraction.clamp(min=1e-6)
        dynamic = (dyn_fraction >= self.dynamic_fraction) & (dyn_fraction > 0)
        if self.dilation:
            r = self.dilation
            dynamic = F.max_pool2d(dynamic.float().view(b * t, 1, h, w), 2 * r + 1, stride=1, padding=r)
            dynamic = dynamic.view(b, t, h, w) > 0
        if s > 1:  # per-pixel diagnostics at the input resolution
            dynamic_pixels = dynamic_pixels.repeat_interleave(s, -2).repeat_interleave(s, -1)
            valid = valid.repeat_interleave(s, -2).repeat_interleave(s, -1)
        return FilterResult(
            keep=~empty & ~dynamic,
            dynamic=dynamic,
            empty=empty,
            dynamic_pixels=dynamic_pixels,
            valid_pixels=valid,
        )

    def carve(
        self,
        cache: object,
        depth: Tensor,
        cam_to_world: Tensor,
        intrinsics: Tensor,
        latent_size: tuple[int, int],
        scene: Tensor | None = None,
    ) -> Tensor:
        """The cross-chunk check: drop the cached tokens a new chunk sees through.

        Runs :meth:`LatentCache.carve <mirage_gym.memory.LatentCache.carve>` with this
        filter's ``cross_chunk_*`` settings and depth range on the chunk's pixel depth
        (every ``stride``-th pixel, like :meth:`analyze`). Call it before the chunk is written.

        Args:
            cache: the :class:`~mirage_gym.memory.LatentCache`.
            depth: ``[B, T, H, W]`` metres; ``cam_to_world`` ``[B, T, 4, 4]``; ``intrinsics``
                ``[3, 3]``, the pixel camera.
            latent_size: ``(h, w)``, dividing ``(H, W)``.
            scene: ``[B]`` the cache scene of each chunk (``None``: ``0 .. B-1``).

        Returns:
            ``freed`` ``[B, T, h, w]`` bool: tokens of the chunk onto which a dropped cached token
            projected (the chunk may write there although it read the cache there).
        """
        depth = check_tensor("depth", depth, 4)
        b, t, height, width = depth.shape
        h, w = _check_latent_size(height, width, latent_size)
        poses = check_poses("cam_to_world", cam_to_world, b, leading=(b, t))
        k = check_intrinsics("intrinsics", intrinsics, (b, t)).to(depth.device)
        s = self.stride
        if s > 1:
            if (height // h) % s or (width // w) % s:
                raise ValueError(f"stride {s} must divide the pixels per token {(height // h, width // w)}")
            o = s // 2
            depth = depth[:, :, o::s, o::s]
            k = subsample_intrinsics(k, s)
        if scene is None:
            scene = torch.arange(b, device=depth.device)
        _, freed = cache.carve(  # type: ignore[attr-defined]
            depth.flatten(0, 1).float(),
            poses.flatten(0, 1),
            k.flatten(0, 1),
            scene=scene.repeat_interleave(t),
            tolerance=self.cross_chunk_tolerance,
            radius=self.cross_chunk_radius,
            min_votes=self.cross_chunk_votes,
            align_scale=self.cross_chunk_align,
            min_depth=self.min_depth,
            max_depth=self.max_depth,
            return_cells=True,
        )
        return pool_fraction(freed.view(b, t, *freed.shape[-2:]), (h, w)) > 0

    def _supported(self, dynamic: Tensor) -> Tensor:
        """Keep evidence pixels with at least ``min_support`` evidence pixels in their 3x3 window.

        Swept bands of moving objects are several pixels wide; isolated votes come from
        depth noise and would otherwise seed growth on static surfaces.
        """
        if self.min_support <= 1:
            return dynamic
        b, t, height, width = dynamic.shape
        count = F.avg_pool2d(dynamic.float().view(b * t, 1, height, width), 3, 1, 1, count_include_pad=True) * 9
        return dynamic & (count.view(b, t, height, width) >= self.min_support - 0.5)

    def _grow(self, dynamic: Tensor, depth: Tensor, valid: Tensor) -> Tensor:
        """Spread dynamic pixels ``grow_pixels`` steps over depth-continuous neighbours.

        Evidence only appears where an object has moved out of (or into) a pixel, a band
        as wide as its motion in the chunk; the rest of the object is reached through its
        own surface, which is continuous in depth, while depth edges stop the spread.
        """
        if self.grow_pixels == 0 or not bool(dynamic.any()):
            return dynamic
        b, t, height, width = depth.shape
        out = dynamic.reshape(b * t, height, width).clone()
        frames = out.flatten(1).any(dim=1).nonzero()[:, 0]  # only frames with evidence grow
        d = torch.where(valid, depth, torch.zeros_like(depth)).view(b * t, 1, height, width)[frames]
        grown = out[frames, None]
        inf = torch.full_like(d, float("inf"))
        for _ in range(-(-self.grow_pixels // self.stride)):  # grow_pixels is in input pixels
            # Depth range [near, far] of the dynamic neighbours of every pixel, in one pooling.
            ranges = F.max_pool2d(torch.cat([-torch.where(grown, d, inf), torch.where(grown, d, -inf)], 1), 3, 1, 1)
            near, far = -ranges[:, :1], ranges[:, 1:]
            close = (d >= near * (1.0 - self.depth_tolerance)) & (d <= far * (1.0 + self.depth_tolerance))
            grown = grown | (close & (d > 0))
        out[frames] = grown[:, 0]
        return out.view(b, t, height, width)

    def _dynamic_pixels(self, colors: Tensor, depth: Tensor, valid: Tensor, poses: Tensor, k: Tensor,
                        first: int = 0) -> Tensor:
        """Per-pixel votes ``[B, T - first, H, W]`` from reprojecting each of frames ``first..T-1`` into every
        other frame (the ``first`` frames before them are history: projected into, not decided)."""
        b, t, height, width = depth.shape
        if t < 2:
            return torch.zeros_like(valid[:, first:])
        n, pixels = b * t, height * width
        flat_depth = torch.where(valid, depth, torch.zeros_like(depth)).view(n, height, width)
        flat_poses, flat_k = poses.reshape(n, 4, 4), k.reshape(n, 3, 3)
        points = backproject(flat_depth, flat_k, flat_poses).view(n, pixels, 3)

        # Neighbourhood depth range of each target frame; invalid pixels give no evidence.
        seen = torch.where(valid, depth, torch.zeros_like(depth)).view(n, 1, height, width)
        near = -F.max_pool2d(-torch.where(seen > 0, seen, torch.full_like(seen, float("inf"))), 3, 1, 1)
        near = torch.where(torch.isfinite(near), near, torch.zeros_like(near)).view(n, pixels)
        far = F.max_pool2d(seen, 3, 1, 1).view(n, pixels)
        seen = seen.view(n, pixels)
        target_colors = colors.reshape(n, pixels, 3)

        # All ordered pairs (source, target) of distinct frames of the same chunk, sources decided.
        frame = torch.arange(t, device=depth.device)
        src_t, dst_t = torch.meshgrid(frame[first:], frame, indexing="ij")
        off_diag = src_t != dst_t
        chunk = torch.arange(b, device=depth.device)[:, None] * t
        src = (chunk + src_t[off_diag][None]).reshape(-1)
        dst = (chunk + dst_t[off_diag][None]).reshape(-1)

        uv, z = project(points[src], flat_k[dst], flat_poses[dst])
        cells, inside = points_to_cells(uv, z, height, width)
        target = dst[:, None] * pixels + cells[..., 0] * width + cells[..., 1]
        d_near, d_far, d_seen = near.view(-1)[target], far.view(-1)[target], seen.view(-1)[target]
        usable = inside & valid.view(n, pixels)[src] & (d_seen > 0)
        tol = self.depth_tolerance
        vanished = usable & (z < (1.0 - tol) * d_near)
        evidence = vanished
        if self.color_tolerance is not None:
            agree = usable & (d_near > 0) & (z >= (1.0 - tol) * d_near) & (z <= (1.0 + tol) * d_near)
            agree &= d_far <= (1.0 + tol) * z
            diff = (colors.reshape(n, pixels, 3)[src] - target_colors.view(-1, 3)[target]).abs().mean(dim=-1)
            evidence = evidence | (agree & (diff > self.color_tolerance))
        votes = torch.zeros(n, pixels, dtype=torch.int32, device=depth.device)
        votes.index_add_(0, src, evidence.int())
        return (votes >= self.min_votes).view(b, t, height, width)[:, first:]


def seen_through(
    points: Tensor,
    depth: Tensor,
    cam_to_world: Tensor,
    intrinsics: Tensor,
    *,
    tolerance: float = 0.1,
    radius: int = 1,
    min_depth: float = 0.05,
    max_depth: float = 50.0,
    align_scale: bool = True,
) -> tuple[Tensor, Tensor]:
    """Which frames see *through* which world points: the cross-chunk evidence of motion.

    Every point ``[P, 3]`` (or ``[F, P, 3]``: its own points per frame) is projected into every
    frame ``[F, H, W]`` (metric depth, pixel
    camera ``intrinsics``). With ``z`` its depth in the frame and ``near`` the smallest valid
    depth the frame observed in the ``(2 radius + 1)^2`` window around its pixel, the frame
    sees through the point when ``z < (1 - tolerance) * near``: the frame observed free space
    where the point claims a surface, so the point is no longer there. The neighbourhood
    minimum keeps occlusion edges from voting (a point one pixel off a silhouette lands on
    the background but its window still holds the foreground). No evidence when the point
    is outside the frame, behind it or nearer than ``min_depth``, or when the frame has no
    valid depth (finite, in ``[min_depth, max_depth]``) at its pixel.

    ``align_scale`` first takes out a whole-frame depth scale error, the typical error of a
    generator's depth head (a frame 5 % too deep would otherwise see through every point
    with ``tolerance`` below 5 %): ``near`` is multiplied by the frame's median ``z / d`` over
    the points that roughly agree with it (within 30 %: visible surfaces, not the occluded
    points behind them), when at least 16 points do.

    Returns:
        ``through`` ``[F, P]`` bool and ``cells`` ``[F, P]`` long, the flat pixel index
        (``row * W + col``) of each projection (meaningful where ``through``).
    """
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    if not isinstance(radius, int) or radius < 0:
        raise ValueError(f"radius must be a non-negative int, got {radius!r}")
    f = depth.shape[0]
    depth = depth.float()
    valid = torch.isfinite(depth) & (depth >= min_depth) & (depth <= max_depth)
    seen = torch.where(valid, depth, torch.full_like(depth, float("inf")))
    near = seen
    if radius:
        near = -F.max_pool2d(-seen[:, None], 2 * radius + 1, 1, radius)[:, 0]
    z, flat, inside = _into_frames(points, depth, cam_to_world, intrinsics, min_depth)
    if flat.numel() == 0:
        return inside, flat
    d_seen = valid.reshape(f, -1).gather(1, flat)
    d_near = near.reshape(f, -1).gather(1, flat)
    if align_scale:
        d_at = depth.reshape(f, -1).gather(1, flat)
        ratio = z / torch.where(d_seen, d_at, torch.ones_like(d_at))
        agree = inside & d_seen & (ratio > 1.0 / 1.3) & (ratio < 1.3)
        scale = torch.nanmedian(torch.where(agree, ratio, torch.full_like(ratio, float("nan"))), dim=1).values
        scale = torch.where(agree.sum(dim=1) >= 16, scale, torch.ones_like(scale))
        d_near = d_near * scale[:, None]
    through = inside & d_seen & torch.isfinite(d_near) & (z < (1.0 - tolerance) * d_near)
    return through, flat


def observed_space(
    points: Tensor,
    depth: Tensor,
    cam_to_world: Tensor,
    intrinsics: Tensor,
    *,
    margin: float = 0.2,
    min_depth: float = 0.05,
    max_depth: float = 50.0,
) -> Tensor:
    """Which world points lie in space a frame observed: on the surface it saw or in front of it.

    Each frame's own points ``[F, P, 3]`` (or ``[P, 3]`` for all) are projected into it (metric
    ``depth`` ``[F, H, W]``, pixel camera ``intrinsics``). With ``z`` a point's depth and ``d`` the
    depth the frame saw at its pixel, the point is in observed space when ``z < (1 + margin) d``:
    in front of the surface is free space the frame saw through, and within ``margin`` behind it is
    the surface itself. Points outside the frame, behind its camera, or at pixels without a valid depth
    (finite, in ``[min_depth, max_depth]``) are not. :class:`~mirage_gym.model.MirageGenerator` keeps its
    generated tokens out of the space its start frames observed (``observed_margin``).
    """
    if not margin >= 0.0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    z, flat, inside = _into_frames(points, depth, cam_to_world, intrinsics, min_depth)
    seen = depth.float().reshape(depth.shape[0], -1).gather(1, flat)
    valid = torch.isfinite(seen) & (seen >= min_depth) & (seen <= max_depth)
    return inside & valid & (z < (1.0 + margin) * seen)


def _into_frames(
    points: Tensor, depth: Tensor, cam_to_world: Tensor, intrinsics: Tensor, min_depth: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Points ``[P, 3]`` or ``[F, P, 3]`` projected into frames ``[F, H, W]``: depth ``z``, flat pixel index
    ``row * W + col`` and whether they land in the image in front of ``min_depth`` (each ``[F, P]``)."""
    f, height, width = depth.shape
    if points.dim() == 2:
        points = points[None].expand(f, -1, -1)
    if points.shape[1] == 0 or f == 0:
        empty = torch.zeros(f, points.shape[1], device=depth.device)
        return empty, empty.long(), empty.bool()
    uv, z = project(points.float(), intrinsics.float().expand(f, 3, 3), cam_to_world.float())
    cells, inside = points_to_cells(uv, z, height, width, near=min_depth)
    return z, cells[..., 0] * width + cells[..., 1], inside
