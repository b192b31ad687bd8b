"""Camera geometry: the one convention used everywhere in mirage_gym.

Conventions (written down once, used by the world, the memory, the model and the envs):

* **Camera frame** -- OpenCV: ``x`` right, ``y`` down, ``z`` forward. Depth is the
  ``z`` coordinate in the camera frame (metres), not the distance along the ray.
* **World frame** -- right-handed, metres, ``z`` up, the floor at ``z = 0``.
  A camera with ``yaw = 0`` and ``pitch = 0`` looks along world ``+x``;
  positive yaw turns left (counter-clockwise seen from above), positive pitch
  looks up.
* **Poses** are ``cam_to_world`` 4x4 matrices ``[R | t]`` whose columns are the
  camera's right, down and forward axes and its centre in world coordinates.
* **Grids and cell centres** -- cell ``(row i, column j)`` of an ``h x w`` grid
  (pixels or latent tokens) covers ``[j, j+1) x [i, i+1)`` in continuous image
  coordinates and its centre is ``(j + 0.5, i + 0.5)``. A point projecting to
  ``(u, v)`` falls in cell ``(floor(v), floor(u))``. The same camera at pixel
  resolution ``H x W`` and at latent resolution ``h x w`` differ only by
  :func:`scale_intrinsics` with ``w / W`` and ``h / H``; with this convention the
  scaling is exact, so a latent cell is exactly the union of its pixels.

Every function is batched over leading dimensions, works on any device and
returns float32 unless said otherwise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "intrinsics_from_fov",
    "scale_intrinsics",
    "subsample_intrinsics",
    "pose_from_position_yaw_pitch",
    "position_yaw_pitch_from_pose",
    "integrate_action",
    "pixel_centers",
    "camera_rays",
    "backproject",
    "grid_tangents",
    "project",
    "points_to_cells",
    "invert_pose",
    "plucker_rays",
]


def intrinsics_from_fov(
    fov_deg: float, width: int, height: int, *, device: torch.device | str | None = None
) -> Tensor:
    """Pinhole intrinsics ``[3, 3]`` for a horizontal field of view and an image size.

    Square pixels; the principal point is the image centre ``(width / 2, height / 2)``
    in the cell-centre convention of this module.
    """
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    f = (width / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    return torch.tensor(
        [[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]],
        dtype=torch.float32,
        device=device,
    )


def scale_intrinsics(intrinsics: Tensor, sx: float, sy: float | None = None) -> Tensor:
    """The same camera on a grid scaled by ``sx`` (columns) and ``sy`` (rows).

    ``scale_intrinsics(K, 1 / 8)`` gives the camera of a latent grid 8x smaller
    than the image. Exact under the cell-centre convention (no half-pixel shift).
    """
    sy = sx if sy is None else sy
    scale = intrinsics.new_tensor([[sx, 0.0, sx], [0.0, sy, sy], [0.0, 0.0, 1.0]])
    return intrinsics * scale


def subsample_intrinsics(intrinsics: Tensor, stride: int) -> Tensor:
    """The camera of the pixels ``(stride i + stride // 2, stride j + stride // 2)`` of an image.

    Picking every ``stride``-th pixel is not ``scale_intrinsics(K, 1 / stride)``, which is the
    camera of ``stride x stride`` *blocks*: the kept pixel's centre is ``(o + 1/2) / stride``
    of a cell from the block's corner, not ``1/2``, so the principal point moves by the difference.
    """
    o = stride // 2
    k = scale_intrinsics(intrinsics, 1.0 / stride).clone()
    k[..., :2, 2] += 0.5 - (o + 0.5) / stride
    return k


def pose_from_position_yaw_pitch(position: Tensor, yaw: Tensor, pitch: Tensor) -> Tensor:
    """``cam_to_world`` ``[..., 4, 4]`` from a position ``[..., 3]`` and yaw/pitch in radians."""
    position, yaw, pitch = torch.broadcast_tensors(
        position.float(), yaw.float().unsqueeze(-1), pitch.float().unsqueeze(-1)
    )
    yaw, pitch = yaw[..., 0], pitch[..., 0]
    cy, sy, cp, sp = torch.cos(yaw), torch.sin(yaw), torch.cos(pitch), torch.sin(pitch)
    forward = torch.stack([cy * cp, sy * cp, sp], dim=-1)
    right = torch.stack([sy, -cy, torch.zeros_like(yaw)], dim=-1)
    down = torch.linalg.cross(forward, right)
    pose = torch.zeros(position.shape[:-1] + (4, 4), dtype=torch.float32, device=position.device)
    pose[..., :3, 0] = right
    pose[..., :3, 1] = down
    pose[..., :3, 2] = forward
    pose[..., :3, 3] = position
    pose[..., 3, 3] = 1.0
    return pose


def position_yaw_pitch_from_pose(cam_to_world: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of :func:`pose_from_position_yaw_pitch` for roll-free poses."""
    forward = cam_to_world[..., :3, 2]
    yaw = torch.atan2(forward[..., 1], forward[..., 0])
    pitch = torch.asin(forward[..., 2].clamp(-1.0, 1.0))
    return cam_to_world[..., :3, 3], yaw, pitch


def integrate_action(
    cam_to_world: Tensor,
    action: Tensor,
    num_frames: int,
    *,
    max_translation: float,
    max_rotation_deg: float,
    max_pitch_deg: float = 60.0,
) -> Tensor:
    """Poses of one chunk: the motion of ``action`` spread evenly over ``num_frames``.

    Args:
        cam_to_world: ``[B, 4, 4]`` pose before the step.
        action: ``[B, 4]`` in ``[-1, 1]``: forward, right, yaw (left positive),
            pitch (up positive). Translation is horizontal (along the heading,
            not the view direction) so the camera keeps its height.
        num_frames: frames in the chunk; frame ``k`` (1-based) gets ``k / num_frames``
            of the motion, so the last frame is the pose after the step.
        max_translation: metres for ``|action| = 1``.
        max_rotation_deg: degrees for ``|action| = 1``.
        max_pitch_deg: pitch is clamped to ``[-max_pitch_deg, max_pitch_deg]``.

    Returns:
        ``[B, num_frames, 4, 4]`` poses. Collisions are the world's business, not this
        function's.
    """
    if action.shape[-1] != 4 or action.dim() != 2 or cam_to_world.shape != (action.shape[0], 4, 4):
        raise ValueError(
            f"expected cam_to_world [B, 4, 4] and action [B, 4], got {tuple(cam_to_world.shape)} "
            f"and {tuple(action.shape)}"
        )
    position, yaw, pitch = position_yaw_pitch_from_pose(cam_to_world)
    action = action.to(cam_to_world)
    frac = torch.arange(1, num_frames + 1, dtype=torch.float32, device=action.device) / num_frames
    frac = frac[None, :]  # [1, T]
    max_rot = math.radians(max_rotation_deg)
    new_yaw = yaw[:, None] + frac * action[:, None, 2] * max_rot
    max_pitch = math.radians(max_pitch_deg)
    new_pitch = (pitch[:, None] + frac * action[:, None, 3] * max_rot).clamp(-max_pitch, max_pitch)
    # Translate in the heading frame at the start of the step: forward along (cos, sin), right along (sin, -cos).
    cy, sy = torch.cos(yaw), torch.sin(yaw)
    dx = action[:, 0] * cy + action[:, 1] * sy
    dy = action[:, 0] * sy - action[:, 1] * cy
    delta = torch.stack([dx, dy, torch.zeros_like(dx)], dim=-1) * max_translation  # [B, 3]
    new_position = position[:, None, :] + frac[..., None] * delta[:, None, :]
    return pose_from_position_yaw_pitch(new_position, new_yaw, new_pitch)


def invert_pose(cam_to_world: Tensor) -> Tensor:
    """``world_to_cam`` for rigid ``cam_to_world`` ``[..., 4, 4]``."""
    rot = cam_to_world[..., :3, :3]
    trans = cam_to_world[..., :3, 3:]
    inv = torch.zeros_like(cam_to_world)
    inv[..., :3, :3] = rot.transpose(-1, -2)
    inv[..., :3, 3:] = -rot.transpose(-1, -2) @ trans
    inv[..., 3, 3] = 1.0
    return inv


def pixel_centers(height: int, width: int, *, device: torch.device | str | None = None) -> Tensor:
    """Continuous image coordinates ``[h, w, 2]`` (u, v) of every cell centre."""
    v = torch.arange(height, dtype=torch.float32, device=device) + 0.5
    u = torch.arange(width, dtype=torch.float32, device=device) + 0.5
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv], dim=-1)


def camera_rays(intrinsics: Tensor, height: int, width: int) -> Tensor:
    """Camera-frame rays ``[..., h, w, 3]`` through each cell centre, scaled so ``z = 1``."""
    uv = pixel_centers(height, width, device=intrinsics.device)
    fx = intrinsics[..., 0, 0, None, None]
    fy = intrinsics[..., 1, 1, None, None]
    cx = intrinsics[..., 0, 2, None, None]
    cy = intrinsics[..., 1, 2, None, None]
    x = (uv[..., 0] - cx) / fx
    y = (uv[..., 1] - cy) / fy
    return torch.stack([x, y, torch.ones_like(x)], dim=-1)


def backproject(depth: Tensor, intrinsics: Tensor, cam_to_world: Tensor) -> Tensor:
    """World points ``[N, h, w, 3]`` of every cell centre of ``depth`` ``[N, h, w]``.

    ``intrinsics`` ``[N, 3, 3]`` (or ``[3, 3]``) must be the camera of the ``h x w`` grid.
    """
    n, h, w = depth.shape
    intrinsics = intrinsics.expand(n, 3, 3)
    rays = camera_rays(intrinsics, h, w)  # [N, h, w, 3]
    points_cam = rays * depth[..., None]
    rot = cam_to_world[:, None, None, :3, :3]
    trans = cam_to_world[:, None, None, :3, 3]
    return (rot @ points_cam[..., None])[..., 0] + trans


def grid_tangents(points: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """The surface's step from each cell of a grid of points ``[N, h, w, 3]`` to its next cell along ``u``
    (columns) and along ``v`` (rows), each ``[N, h, w, 3]``: zero where no ``valid`` neighbour exists.

    Each is a one-sided difference to a valid neighbour. Next to a corner or a depth edge one side
    lies on the cell's own surface and the other does not; the side taken is the one whose next step
    turns least (three points in a line: one flat surface), else, with no two valid neighbours on
    either side, the side whose neighbour is nearer.
    """

    def tangent(dim: int) -> Tensor:
        def shifted(x: Tensor, step: int) -> Tensor:  # out[i] = x[i + step] along dim; the border left empty
            out = torch.zeros_like(x)
            size = x.shape[dim]
            if size > abs(step):
                out.narrow(dim, max(-step, 0), size - abs(step)).copy_(x.narrow(dim, max(step, 0), size - abs(step)))
            return out

        sides = []
        for sign in (1, -1):
            one, two = shifted(points, sign), shifted(points, 2 * sign)
            step, beyond = (one - points) * sign, (two - one) * sign
            ok = valid & shifted(valid, sign)
            gap = torch.where(ok, step.norm(dim=-1), torch.full_like(step[..., 0], float("inf")))
            # 1 - cos of the turn between this step and the next one: 0 along a flat surface.
            turn = 1.0 - (step * beyond).sum(-1) / (step.norm(dim=-1) * beyond.norm(dim=-1)).clamp_min(1e-12)
            turn = torch.where(ok & shifted(valid, 2 * sign), turn, torch.full_like(turn, float("inf")))
            sides.append((step, ok, gap, turn))
        (ahead, ok_ahead, gap_ahead, turn_ahead), (behind, ok_behind, gap_behind, turn_behind) = sides
        take_ahead = torch.where(turn_ahead != turn_behind, turn_ahead < turn_behind, gap_ahead <= gap_behind)
        step = torch.where(take_ahead[..., None], ahead, behind)
        return torch.where((ok_ahead | ok_behind)[..., None], step, torch.zeros_like(step))

    return tangent(2), tangent(1)


def project(points: Tensor, intrinsics: Tensor, cam_to_world: Tensor) -> tuple[Tensor, Tensor]:
    """Project world points ``[N, P, 3]`` into cameras ``[N]``.

    Returns continuous image coordinates ``uv`` ``[N, P, 2]`` and camera-frame depth
    ``z`` ``[N, P]``. Points with ``z <= 0`` are behind the camera; their ``uv`` is
    meaningless and callers mask them with ``z``.
    """
    world_to_cam = invert_pose(cam_to_world)
    # One batched GEMM (trans + points @ rot^T) rather than a matmul per point: the hot spot of every cache read.
    cam = torch.baddbmm(world_to_cam[:, None, :3, 3], points, world_to_cam[:, :3, :3].transpose(1, 2))
    z = cam[..., 2]
    safe_z = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))
    k = intrinsics.expand(points.shape[0], 3, 3)
    u = k[:, None, 0, 0] * cam[..., 0] / safe_z + k[:, None, 0, 2]
    v = k[:, None, 1, 1] * cam[..., 1] / safe_z + k[:, None, 1, 2]
    return torch.stack([u, v], dim=-1), z


def points_to_cells(uv: Tensor, z: Tensor, height: int, width: int, near: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Cell indices ``[..., 2]`` (row, col) and a validity mask for projected points.

    A point is valid when it is in front of the camera (``z > near``) and inside the grid.
    """
    col = torch.floor(uv[..., 0])
    row = torch.floor(uv[..., 1])
    valid = (z > near) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
    cells = torch.stack([row, col], dim=-1).clamp(min=0)
    cells[..., 0] = cells[..., 0].clamp(max=height - 1)
    cells[..., 1] = cells[..., 1].clamp(max=width - 1)
    return cells.long(), valid


def plucker_rays(intrinsics: Tensor, cam_to_world: Tensor, height: int, width: int) -> Tensor:
    """Plücker coordinates ``[N, 6, h, w]`` of the ray through each cell centre.

    ``(d, o x d)`` with ``d`` the unit world direction and ``o`` the camera centre:
    the per-token camera encoding of CameraCtrl and Gen3C.
    """
    n = cam_to_world.shape[0]
    rays = camera_rays(intrinsics.expand(n, 3, 3), height, width)  # [N, h, w, 3]
    dirs = (cam_to_world[:, None, None, :3, :3] @ rays[..., None])[..., 0]
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origin = cam_to_world[:, None, None, :3, 3].expand_as(dirs)
    moment = torch.linalg.cross(origin, dirs, dim=-1)
    return torch.cat([dirs, moment], dim=-1).permute(0, 3, 1, 2).contiguous()
