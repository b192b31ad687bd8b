"""Consistency metrics of a generated video with known poses (WorldScore-style).

Every function takes frames as the generator returns them -- ``rgb`` uint8
``[N, H, W, 3]``, ``depth`` float ``[N, H, W]`` metres, ``cam_to_world`` ``[N, 4, 4]``,
one pixel camera ``intrinsics`` ``[3, 3]`` -- and follows :mod:`mirage_gym.geometry`
(pixel ``(row i, col j)`` centred at ``(j + 0.5, i + 0.5)``).

* :func:`reprojection_error` -- 3D consistency: warp a frame into another with the
  generated depth and the known poses, photometric L1 on the pixels both see.
* :func:`induced_flow` / :func:`optical_flow` / :func:`flow_error` -- photometric
  consistency: OpenCV DIS flow between frames against the flow the poses and the
  generated depth imply (end-point error).
* :func:`relative_pose` / :func:`camera_control_error` -- camera control: the relative
  pose recovered from the frames (SIFT matches + PnP with the generated depth) against
  the commanded motion.
* :func:`revisit_pairs` -- frame pairs at the same pose with a turn of at least 90 degrees
  in between, for revisit PSNR/SSIM.
* :func:`observed_mask` -- pixels whose surface point was seen in an earlier frame, where
  fidelity to the ground truth is a fair demand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mirage_gym.geometry import backproject, invert_pose, pixel_centers, project
from mirage_gym.metrics import direction_error_deg, end_point_error, l1, rotation_error_deg, to_unit_chw

__all__ = [
    "Reprojection",
    "reprojection_error",
    "induced_flow",
    "optical_flow",
    "flow_error",
    "relative_pose",
    "CameraControl",
    "camera_control_error",
    "revisit_pairs",
    "observed_mask",
]

NEAR = 1e-3


def _check_frames(rgb: Tensor, depth: Tensor, cam_to_world: Tensor, intrinsics: Tensor) -> None:
    if rgb.dim() != 4 or rgb.shape[-1] != 3 or rgb.dtype != torch.uint8:
        raise ValueError(f"rgb must be uint8 [N, H, W, 3], got {rgb.dtype} {tuple(rgb.shape)}")
    n, h, w = rgb.shape[:3]
    if tuple(depth.shape) != (n, h, w):
        raise ValueError(f"depth must be [N, H, W] = {(n, h, w)}, got {tuple(depth.shape)}")
    if tuple(cam_to_world.shape) != (n, 4, 4):
        raise ValueError(f"cam_to_world must be [{n}, 4, 4], got {tuple(cam_to_world.shape)}")
    if tuple(intrinsics.shape) != (3, 3):
        raise ValueError(f"intrinsics must be [3, 3], got {tuple(intrinsics.shape)}")


def _sample(image: Tensor, uv: Tensor, mode: str) -> Tensor:
    """Sample ``image`` ``[N, C, H, W]`` at continuous pixel coordinates ``uv`` ``[N, P, 2]`` -> ``[N, C, P]``."""
    h, w = image.shape[-2:]
    grid = torch.stack([2.0 * uv[..., 0] / w - 1.0, 2.0 * uv[..., 1] / h - 1.0], dim=-1)  # cell-centre convention
    return F.grid_sample(image, grid[:, None], mode=mode, padding_mode="border", align_corners=False)[:, :, 0]


def _transfer(
    depth_from: Tensor, depth_to: Tensor, pose_from: Tensor, pose_to: Tensor, intrinsics: Tensor, occlusion: float
) -> tuple[Tensor, Tensor]:
    """Where each pixel of the ``from`` frames lands in the ``to`` frames, and whether ``to`` sees it.

    Returns ``uv`` ``[N, H, W, 2]`` and ``valid`` ``[N, H, W]``: the pixel has depth, lands in front
    of the ``to`` camera, inside its image (half a pixel from the border, so bilinear sampling
    stays inside), and the ``to`` depth there agrees within ``occlusion`` (relative): not occluded.
    """
    n, h, w = depth_from.shape
    ok = torch.isfinite(depth_from) & (depth_from > 0)
    points = backproject(torch.where(ok, depth_from, torch.ones_like(depth_from)), intrinsics, pose_from)
    uv, z = project(points.reshape(n, -1, 3), intrinsics, pose_to)
    seen = _sample(torch.nan_to_num(depth_to, posinf=1e6)[:, None], uv, "nearest")[:, 0]
    inside = (uv[..., 0] >= 0.5) & (uv[..., 0] <= w - 0.5) & (uv[..., 1] >= 0.5) & (uv[..., 1] <= h - 0.5)
    visible = (z > NEAR) & inside & ((seen - z).abs() <= occlusion * z)
    return uv.reshape(n, h, w, 2), ok & visible.reshape(n, h, w)


@dataclass
class Reprojection:
    """3D consistency of ``N`` frame pairs: photometric L1 in ``[0, 1]`` and the fraction of pixels compared."""

    l1: Tensor  # [N], NaN where no pixel could be compared
    valid_fraction: Tensor  # [N]


def reprojection_error(
    rgb_src: Tensor,
    rgb_dst: Tensor,
    depth_src: Tensor,
    depth_dst: Tensor,
    pose_src: Tensor,
    pose_dst: Tensor,
    intrinsics: Tensor,
    *,
    occlusion: float = 0.05,
    mask: Tensor | None = None,
) -> Reprojection:
    """Warp ``src`` frames onto ``dst`` frames with ``dst``'s depth and both poses; L1 on co-visible pixels.

    Each ``dst`` pixel is lifted with its (generated) depth, projected into ``src`` and
    ``src`` is sampled there (bilinear). A consistent world with consistent depth gives
    back ``dst``; ``mask`` ``[N, H, W]`` (``dst`` pixels) restricts the comparison further.
    """
    _check_frames(rgb_src, depth_src, pose_src, intrinsics)
    _check_frames(rgb_dst, depth_dst, pose_dst, intrinsics)
    n, h, w = depth_dst.shape
    k = intrinsics.float()
    uv, valid = _transfer(depth_dst.float(), depth_src.float(), pose_dst.float(), pose_src.float(), k, occlusion)
    if mask is not None:
        valid = valid & mask
    warped = _sample(to_unit_chw(rgb_src), uv.reshape(n, -1, 2), "bilinear").reshape(n, 3, h, w)
    return Reprojection(
        l1=l1(warped, to_unit_chw(rgb_dst), valid), valid_fraction=valid.float().flatten(1).mean(1)
    )


def induced_flow(
    depth_src: Tensor,
    depth_dst: Tensor,
    pose_src: Tensor,
    pose_dst: Tensor,
    intrinsics: Tensor,
    *,
    occlusion: float = 0.05,
) -> tuple[Tensor, Tensor]:
    """The optical flow ``[N, H, W, 2]`` from ``src`` to ``dst`` implied by ``src``'s depth and the poses.

    Also returns ``valid`` ``[N, H, W]``: pixels that stay in view and are not occluded in ``dst``
    (checked against ``depth_dst``).
    """
    n, h, w = depth_src.shape
    uv, valid = _transfer(
        depth_src.float(), depth_dst.float(), pose_src.float(), pose_dst.float(), intrinsics.float(), occlusion
    )
    return uv - pixel_centers(h, w, device=uv.device), valid


def optical_flow(rgb_src: Tensor, rgb_dst: Tensor, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) -> Tensor:
    """Dense flow ``[N, H, W, 2]`` (pixels, ``src(p) ~ dst(p + flow)``) by OpenCV DIS on grey images."""
    if rgb_src.shape != rgb_dst.shape or rgb_src.dtype != torch.uint8 or rgb_src.dim() != 4:
        raise ValueError(f"need two uint8 [N, H, W, 3] batches of one shape, got {tuple(rgb_src.shape)} and "
                         f"{tuple(rgb_dst.shape)}")
    dis = cv2.DISOpticalFlow_create(preset)
    flows = []
    for a, b in zip(rgb_src.cpu().numpy(), rgb_dst.cpu().numpy(), strict=True):
        grey_a = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY)
        grey_b = cv2.cvtColor(np.ascontiguousarray(b), cv2.COLOR_RGB2GRAY)
        flows.append(dis.calc(grey_a, grey_b, None))
    return torch.from_numpy(np.stack(flows)).float()


def flow_error(
    rgb: Tensor, depth: Tensor, cam_to_world: Tensor, intrinsics: Tensor, *, mask: Tensor | None = None
) -> Tensor:
    """Photometric consistency of consecutive frames: EPE ``[N - 1]`` (pixels) of DIS flow vs the induced flow.

    ``mask`` ``[N, H, W]`` restricts the pixels of each source frame (e.g. to static ones).
    """
    _check_frames(rgb, depth, cam_to_world, intrinsics)
    target, valid = induced_flow(depth[:-1], depth[1:], cam_to_world[:-1], cam_to_world[1:], intrinsics)
    if mask is not None:
        valid = valid & mask[:-1]
    flow = optical_flow(rgb[:-1], rgb[1:])
    return end_point_error(flow, target.cpu(), valid.cpu())


def _features(sift: cv2.SIFT, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    keypoints, descriptors = sift.detectAndCompute(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), None)
    # OpenCV puts pixel centres at integers; this package at half-integers.
    return np.array([kp.pt for kp in keypoints], np.float64).reshape(-1, 2) + 0.5, descriptors


def relative_pose(
    rgb_a: Tensor, rgb_b: Tensor, depth_a: Tensor, intrinsics: Tensor, *, min_inliers: int = 8, ratio: float = 0.8
) -> Tensor | None:
    """The motion from camera ``a`` to camera ``b`` seen in two frames: ``[4, 4]`` mapping ``a``- to ``b``-coordinates.

    SIFT features matched with Lowe's ratio test; ``a``'s keypoints are lifted with ``depth_a``
    (the generated depth) and ``b``'s pose is found by RANSAC PnP, so rotation and metric
    translation are both recovered, pure rotations included. ``None`` when fewer than
    ``min_inliers`` matches support a pose.
    """
    a = np.ascontiguousarray(rgb_a.cpu().numpy())
    b = np.ascontiguousarray(rgb_b.cpu().numpy())
    sift = cv2.SIFT_create()
    pts_a, desc_a = _features(sift, a)
    pts_b, desc_b = _features(sift, b)
    if desc_a is None or desc_b is None or len(pts_a) < 2 or len(pts_b) < 2:
        return None
    matches = cv2.BFMatcher(cv2.NORM_L2).knnMatch(desc_a, desc_b, k=2)
    good = [m[0] for m in matches if len(m) == 2 and m[0].distance < ratio * m[1].distance]
    if len(good) < min_inliers:
        return None
    ia = np.array([m.queryIdx for m in good])
    ib = np.array([m.trainIdx for m in good])
    uv_a, uv_b = pts_a[ia], pts_b[ib]
    d = depth_a.cpu().double().numpy()
    h, w = d.shape
    rows = np.clip(np.floor(uv_a[:, 1]).astype(int), 0, h - 1)
    cols = np.clip(np.floor(uv_a[:, 0]).astype(int), 0, w - 1)
    z = d[rows, cols]
    ok = np.isfinite(z) & (z > 0)
    if ok.sum() < min_inliers:
        return None
    k = intrinsics.cpu().double().numpy()
    xy = (uv_a[ok] - k[[0, 1], [2, 2]]) / k[[0, 1], [0, 1]]
    obj = np.concatenate([xy * z[ok, None], z[ok, None]], axis=1)
    found, rvec, tvec, inliers = cv2.solvePnPRansac(
        obj, uv_b[ok], k, None, iterationsCount=300, reprojectionError=1.5, confidence=0.999,
        flags=cv2.SOLVEPNP_EPNP,
    )
    if not found or inliers is None or len(inliers) < min_inliers:
        return None
    inl = inliers[:, 0]
    # Refine on the inliers (Levenberg-Marquardt from the RANSAC estimate).
    rvec, tvec = cv2.solvePnPRefineLM(obj[inl], uv_b[ok][inl], k, None, rvec, tvec)
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3] = torch.from_numpy(cv2.Rodrigues(rvec)[0])
    pose[:3, 3] = torch.from_numpy(tvec[:, 0])
    return pose.float()


@dataclass
class CameraControl:
    """Camera-control errors over frame pairs (NaN entries: pose not recovered / no translation to compare)."""

    rotation_deg: Tensor  # [P]
    translation_deg: Tensor  # [P], direction error; NaN where the commanded translation is < min_translation
    recovered: Tensor  # [P] bool


def camera_control_error(
    rgb: Tensor,
    depth: Tensor,
    cam_to_world: Tensor,
    intrinsics: Tensor,
    pairs: list[tuple[int, int]],
    *,
    min_translation: float = 0.02,
) -> CameraControl:
    """Relative poses recovered from frames ``(a, b)`` of ``pairs`` against the commanded ones."""
    _check_frames(rgb, depth, cam_to_world, intrinsics)
    rot, trans, ok = [], [], []
    for a, b in pairs:
        commanded = (invert_pose(cam_to_world[b : b + 1].double()) @ cam_to_world[a : a + 1].double())[0]
        est = relative_pose(rgb[a], rgb[b], depth[a], intrinsics)
        ok.append(est is not None)
        if est is None:
            rot.append(math.nan)
            trans.append(math.nan)
            continue
        rot.append(float(rotation_error_deg(est[:3, :3], commanded[:3, :3])))
        # Compare the camera centres' motion (seen from b), which is what the action commanded.
        if float(commanded[:3, 3].norm()) < min_translation:
            trans.append(math.nan)
        else:
            trans.append(float(direction_error_deg(est[:3, 3].double(), commanded[:3, 3])))
    return CameraControl(
        rotation_deg=torch.tensor(rot),
        translation_deg=torch.tensor(trans),
        recovered=torch.tensor(ok, dtype=torch.bool),
    )


def revisit_pairs(
    cam_to_world: Tensor, *, min_turn_deg: float = 90.0, position_tol: float = 1e-3, angle_tol_deg: float = 0.05
) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, at the same pose (within tolerances) with a turn >= ``min_turn_deg`` in between.

    For each later frame ``j`` the earliest such ``i`` is taken: the first visit.
    """
    poses = cam_to_world.double().cpu()
    forward = poses[:, :3, 2]
    position = poses[:, :3, 3]
    cos_tol = math.cos(math.radians(angle_tol_deg))
    cos_turn = math.cos(math.radians(min_turn_deg))
    same_rot = ((poses[:, None, :3, :3] * poses[None, :, :3, :3]).sum(-2) >= cos_tol).all(-1)  # each axis agrees
    same = (same_rot & ((position[:, None] - position[None]).norm(dim=-1) <= position_tol)).numpy()
    cos = (forward @ forward.T).numpy()  # [N, N]
    pairs = []
    for j in range(1, poses.shape[0]):
        for i in range(j - 1):
            if same[i, j] and (cos[i, i + 1 : j] <= cos_turn + 1e-9).any():
                pairs.append((i, j))
                break
    return pairs


def observed_mask(
    depth: Tensor, cam_to_world: Tensor, intrinsics: Tensor, *, voxel: float = 0.05, static: Tensor | None = None,
    sources: int | None = None,
) -> Tensor:
    """``[N, H, W]``: the surface point of a pixel lies in a ``voxel`` already seen by an earlier frame.

    ``depth`` is the ground truth. Frame 0 has nothing before it (all False). ``static``
    ``[N, H, W]`` excludes pixels (moving objects) both from what counts as seen and from the result.
    ``sources``: only the first ``sources`` frames count as seeing (``1``: what the start frame showed);
    ``None``: every earlier frame.
    """
    n, h, w = depth.shape
    ok = torch.isfinite(depth) & (depth > 0)
    if static is not None:
        ok &= static
    k = intrinsics.float().expand(n, 3, 3)
    safe = torch.where(ok, depth.float(), torch.ones_like(depth, dtype=torch.float32))
    points = backproject(safe, k, cam_to_world.float())
    cells = torch.floor(points / voxel).long()
    # One int64 key per voxel: 21 bits per axis covers +-52 km at 5 cm.
    keys = ((cells[..., 0] + (1 << 20)) << 42) | ((cells[..., 1] + (1 << 20)) << 21) | (cells[..., 2] + (1 << 20))
    out = torch.zeros(n, h, w, dtype=torch.bool, device=depth.device)
    seen = keys[0][ok[0]].unique()
    for t in range(1, n):
        out[t] = ok[t] & torch.isin(keys[t], seen)
        if sources is None or t < sources:
            seen = torch.cat([seen, keys[t][ok[t]]]).unique()
    return out

