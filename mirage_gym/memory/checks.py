"""Input validation shared by the memories and the filter, and their common empty-cell rule.

Every check raises ``ValueError`` naming the argument, and none of them mutates
anything, so callers run them all before touching their state.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mirage_gym.geometry import backproject

__all__ = ["check_tensor", "check_poses", "check_intrinsics", "check_scenes", "check_mask", "lift_valid"]


def check_tensor(name: str, value: object, ndim: int) -> Tensor:
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    return value


def check_poses(name: str, poses: object, n: int, *, leading: tuple[int, ...] | None = None) -> Tensor:
    """``[n, 4, 4]`` finite rigid ``cam_to_world`` matrices (``leading`` replaces ``(n,)`` if given)."""
    lead = (n,) if leading is None else leading
    poses = check_tensor(name, poses, len(lead) + 2)
    if tuple(poses.shape) != (*lead, 4, 4):
        raise ValueError(f"{name} must have shape {(*lead, 4, 4)}, got {tuple(poses.shape)}")
    if not poses.is_floating_point() or not torch.isfinite(poses).all():
        raise ValueError(f"{name} must be finite floating-point poses (found NaN/inf or integers)")
    poses = poses.float()
    rot = poses[..., :3, :3]
    eye = torch.eye(3, device=poses.device)
    bottom = poses.new_tensor([0.0, 0.0, 0.0, 1.0])
    if ((rot.transpose(-1, -2) @ rot - eye).abs() > 1e-3).any() or (poses[..., 3, :] - bottom).abs().max() > 1e-6:
        raise ValueError(f"{name} must be rigid cam_to_world transforms [R | t; 0 0 0 1] with orthonormal R")
    return poses


def check_intrinsics(name: str, intrinsics: object, n: int | tuple[int, ...]) -> Tensor:
    """Finite pinhole intrinsics, ``[3, 3]`` or ``[*n, 3, 3]``; returned expanded to ``[*n, 3, 3]``."""
    lead = (n,) if isinstance(n, int) else n
    if not isinstance(intrinsics, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(intrinsics).__name__}")
    if tuple(intrinsics.shape) not in ((3, 3), (*lead, 3, 3)):
        raise ValueError(f"{name} must have shape (3, 3) or {(*lead, 3, 3)}, got {tuple(intrinsics.shape)}")
    if not intrinsics.is_floating_point() or not torch.isfinite(intrinsics).all():
        raise ValueError(f"{name} must be finite floating-point intrinsics (found NaN/inf or integers)")
    if (intrinsics[..., 0, 0] <= 0).any() or (intrinsics[..., 1, 1] <= 0).any():
        raise ValueError(f"{name} must have positive focal lengths fx, fy")
    return intrinsics.float().expand(*lead, 3, 3)


def check_scenes(name: str, scene: object, n: int, num_scenes: int, device: torch.device) -> Tensor:
    """Scene ids ``[n]`` long in ``[0, num_scenes)``; ``None`` means scene 0 everywhere, an int broadcasts."""
    if scene is None:
        scene = 0
    if isinstance(scene, int) and not isinstance(scene, bool):
        scene = torch.full((n,), scene, dtype=torch.long)
    if not isinstance(scene, Tensor) or scene.shape != (n,) or scene.is_floating_point() or scene.dtype == torch.bool:
        raise ValueError(f"{name} must be None, an int or an integer tensor of shape ({n},)")
    scene = scene.to(device=device, dtype=torch.long)
    if n and (scene.min() < 0 or scene.max() >= num_scenes):
        raise ValueError(f"{name} ids must be in [0, {num_scenes}), got {scene.tolist()}")
    return scene


def check_mask(name: str, mask: object, shape: tuple[int, ...]) -> Tensor:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != shape:
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"{name} must be a bool tensor of shape {shape}, got {got}")
    return mask


def lift_valid(depth: Tensor, keep: Tensor | None, intrinsics: Tensor, cam_to_world: Tensor) -> tuple[Tensor, Tensor]:
    """The empty-cell rule both memories share, and the world points of all cells.

    A cell is written when its depth is finite and positive and ``keep`` (if given) lets it
    through. Returns ``valid`` ``[N, h, w]`` and the backprojected points ``[N, h, w, 3]``
    (empty cells are lifted at depth 0, i.e. onto the camera centre, and must be masked out).
    """
    depth = depth.to(cam_to_world.device, torch.float32)
    valid = torch.isfinite(depth) & (depth > 0)
    if keep is not None:
        valid &= keep
    return valid, backproject(torch.where(valid, depth, torch.zeros_like(depth)), intrinsics, cam_to_world)
