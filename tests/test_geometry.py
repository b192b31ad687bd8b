"""Property tests of mirage_gym.geometry: the one camera convention of the package."""

from __future__ import annotations

import math

import pytest
import torch

from mirage_gym import geometry


def _random_cameras(gen: torch.Generator, n: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random poses (any yaw, pitch within +-80 deg) and random pinhole intrinsics for an ``height x width`` grid."""
    position = torch.randn(n, 3, generator=gen) * 3.0
    yaw = (torch.rand(n, generator=gen) * 2 - 1) * math.pi
    pitch = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(80)
    pose = geometry.pose_from_position_yaw_pitch(position, yaw, pitch)
    k = torch.zeros(n, 3, 3)
    k[:, 0, 0] = width * (0.4 + torch.rand(n, generator=gen))
    k[:, 1, 1] = k[:, 0, 0] * (0.8 + 0.4 * torch.rand(n, generator=gen))
    k[:, 0, 2] = width * (0.3 + 0.4 * torch.rand(n, generator=gen))
    k[:, 1, 2] = height * (0.3 + 0.4 * torch.rand(n, generator=gen))
    k[:, 2, 2] = 1.0
    return pose, k


def _grid_cells(n: int, h: int, w: int) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([rows, cols], dim=-1).expand(n, h, w, 2)


@pytest.mark.parametrize("h,w", [(8, 8), (6, 10), (16, 12)])
def test_backproject_then_project_returns_every_cell(h: int, w: int) -> None:
    gen = torch.Generator().manual_seed(h * 100 + w)
    n = 32
    pose, k = _random_cameras(gen, n, h, w)
    depth = 0.1 + torch.rand(n, h, w, generator=gen) * 20.0
    points = geometry.backproject(depth, k, pose)
    uv, z = geometry.project(points.reshape(n, -1, 3), k, pose)
    cells, valid = geometry.points_to_cells(uv, z, h, w)
    assert valid.all()
    assert torch.equal(cells.reshape(n, h, w, 2), _grid_cells(n, h, w))
    assert torch.allclose(z.reshape(n, h, w), depth, rtol=1e-5, atol=1e-5)


def test_backproject_accepts_shared_intrinsics() -> None:
    gen = torch.Generator().manual_seed(1)
    pose, k = _random_cameras(gen, 4, 6, 6)
    depth = torch.rand(4, 6, 6, generator=gen) + 1.0
    shared = geometry.backproject(depth, k[0], pose)
    per_camera = geometry.backproject(depth, k[0].expand(4, 3, 3), pose)
    assert torch.equal(shared, per_camera)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_scale_intrinsics_latent_cell_is_union_of_its_pixels(factor: int) -> None:
    gen = torch.Generator().manual_seed(factor)
    n, h, w = 8, 4, 6
    big_h, big_w = h * factor, w * factor
    pose, k = _random_cameras(gen, n, big_h, big_w)
    k_latent = geometry.scale_intrinsics(k, 1.0 / factor)
    # Every pixel, lifted at any depth, lands in the latent cell that contains it.
    depth = 0.5 + torch.rand(n, big_h, big_w, generator=gen) * 10.0
    points = geometry.backproject(depth, k, pose)
    uv, z = geometry.project(points.reshape(n, -1, 3), k_latent, pose)
    cells, valid = geometry.points_to_cells(uv, z, h, w)
    assert valid.all()
    expected = _grid_cells(n, big_h, big_w) // factor
    assert torch.equal(cells.reshape(n, big_h, big_w, 2), expected)
    # And the latent cell centre is the mean of its pixels' centres (same camera, no half-pixel shift).
    pixel_uv = geometry.pixel_centers(big_h, big_w).reshape(h, factor, w, factor, 2).mean(dim=(1, 3))
    assert torch.allclose(geometry.pixel_centers(h, w) * factor, pixel_uv)
    rays_big = geometry.camera_rays(k, big_h, big_w).reshape(n, h, factor, w, factor, 3).mean(dim=(2, 4))
    assert torch.allclose(geometry.camera_rays(k_latent, h, w), rays_big, atol=1e-5)


@pytest.mark.parametrize("stride", [2, 3, 4])
def test_subsample_intrinsics_sees_the_kept_pixels_exactly(stride: int) -> None:
    gen = torch.Generator().manual_seed(stride)
    n, h, w = 4, 5, 7
    pose, k = _random_cameras(gen, n, h * stride, w * stride)
    k_sub = geometry.subsample_intrinsics(k, stride)
    o = stride // 2
    depth = 0.5 + torch.rand(n, h, w, generator=gen) * 10.0
    # A point seen at kept pixel (s i + o, s j + o) of the full image is at cell (i, j), centre and all.
    full_uv = (geometry.pixel_centers(h, w) - 0.5) * stride + o + 0.5
    rays = torch.cat([full_uv, torch.ones(h, w, 1)], -1) @ torch.linalg.inv(k).transpose(-1, -2)[:, None]
    points = (rays * depth[..., None]) @ pose[:, None, :3, :3].transpose(-1, -2) + pose[:, None, None, :3, 3]
    uv, _ = geometry.project(points.reshape(n, -1, 3), k_sub, pose)
    assert torch.allclose(uv.reshape(n, h, w, 2), geometry.pixel_centers(h, w).expand(n, -1, -1, -1), atol=1e-3)


def test_scale_intrinsics_anisotropic() -> None:
    k = geometry.intrinsics_from_fov(90.0, 64, 32)
    scaled = geometry.scale_intrinsics(k, 0.25, 0.5)
    expected = geometry.intrinsics_from_fov(90.0, 16, 16) * torch.tensor([[1, 0, 1], [0, 2, 1], [0, 0, 1.0]])
    assert torch.allclose(scaled, expected)


def test_intrinsics_from_fov_centre_and_focal() -> None:
    k = geometry.intrinsics_from_fov(90.0, 128, 96)
    assert k.dtype == torch.float32
    assert k[0, 0].item() == pytest.approx(64.0)
    assert k[1, 1].item() == pytest.approx(64.0)
    assert (k[0, 2].item(), k[1, 2].item()) == (64.0, 48.0)
    with pytest.raises(ValueError, match="fov_deg"):
        geometry.intrinsics_from_fov(180.0, 8, 8)
    with pytest.raises(ValueError, match="width and height"):
        geometry.intrinsics_from_fov(60.0, 0, 8)


def test_pose_round_trip_and_orthonormal() -> None:
    gen = torch.Generator().manual_seed(3)
    position = torch.randn(200, 3, generator=gen)
    yaw = (torch.rand(200, generator=gen) * 2 - 1) * (math.pi - 1e-3)
    pitch = (torch.rand(200, generator=gen) * 2 - 1) * math.radians(85)
    pose = geometry.pose_from_position_yaw_pitch(position, yaw, pitch)
    rot = pose[:, :3, :3]
    assert torch.allclose(rot.transpose(1, 2) @ rot, torch.eye(3).expand(200, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(200), atol=1e-5)
    assert torch.equal(pose[:, 3], torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(200, 4))
    # No roll: the camera's right axis is horizontal.
    assert torch.allclose(pose[:, 2, 0], torch.zeros(200), atol=1e-6)
    p, y, pt = geometry.position_yaw_pitch_from_pose(pose)
    assert torch.allclose(p, position)
    assert torch.allclose(y, yaw, atol=1e-5)
    assert torch.allclose(pt, pitch, atol=1e-4)


def test_yaw_zero_looks_along_x_and_positive_yaw_turns_left() -> None:
    pose = geometry.pose_from_position_yaw_pitch(torch.zeros(2, 3), torch.tensor([0.0, math.pi / 2]), torch.zeros(2))
    assert torch.allclose(pose[0, :3, 2], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(pose[1, :3, 2], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)  # +y is left of +x
    assert torch.allclose(pose[0, :3, 1], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)  # image down = world down


def test_invert_pose() -> None:
    gen = torch.Generator().manual_seed(4)
    pose, _ = _random_cameras(gen, 16, 4, 4)
    assert torch.allclose(geometry.invert_pose(pose) @ pose, torch.eye(4).expand(16, 4, 4), atol=1e-5)


def test_integrate_action_spreads_motion_and_ends_at_full_step() -> None:
    start = geometry.pose_from_position_yaw_pitch(
        torch.tensor([[1.0, 2.0, 1.4], [0.0, 0.0, 1.4]]), torch.tensor([0.3, -1.0]), torch.tensor([0.5, 0.0])
    )
    action = torch.tensor([[1.0, 0.0, 0.5, 0.0], [0.5, -1.0, 0.0, 0.0]])
    poses = geometry.integrate_action(start, action, 4, max_translation=0.2, max_rotation_deg=20.0)
    assert poses.shape == (2, 4, 4, 4)
    position, yaw, pitch = geometry.position_yaw_pitch_from_pose(poses)
    # Translation is horizontal, along the heading at the start (not the pitched view direction).
    assert torch.allclose(position[..., 2], torch.full((2, 4), 1.4))
    heading = torch.tensor([math.cos(0.3), math.sin(0.3)])
    assert torch.allclose(position[0, -1, :2], torch.tensor([1.0, 2.0]) + 0.2 * heading, atol=1e-6)
    right = torch.tensor([math.sin(-1.0), -math.cos(-1.0)])
    forward = torch.tensor([math.cos(-1.0), math.sin(-1.0)])
    assert torch.allclose(position[1, -1, :2], 0.2 * (0.5 * forward - right), atol=1e-6)
    # Frame k gets k / T of the motion.
    assert torch.allclose(yaw[0], 0.3 + math.radians(10.0) * torch.arange(1, 5) / 4, atol=1e-6)
    assert torch.allclose(position[0, 1, :2], torch.tensor([1.0, 2.0]) + 0.1 * heading, atol=1e-6)
    assert torch.allclose(pitch[0], torch.full((4,), 0.5), atol=1e-5)


def test_integrate_action_clamps_pitch() -> None:
    start = geometry.pose_from_position_yaw_pitch(torch.zeros(1, 3), torch.zeros(1), torch.zeros(1))
    up = geometry.integrate_action(
        start, torch.tensor([[0.0, 0.0, 0.0, 1.0]]), 3, max_translation=0.1, max_rotation_deg=90.0
    )
    down = geometry.integrate_action(
        start, torch.tensor([[0.0, 0.0, 0.0, -1.0]]), 3, max_translation=0.1, max_rotation_deg=90.0, max_pitch_deg=30.0
    )
    _, _, pitch_up = geometry.position_yaw_pitch_from_pose(up)
    _, _, pitch_down = geometry.position_yaw_pitch_from_pose(down)
    assert pitch_up[0, -1].item() == pytest.approx(math.radians(60.0), abs=1e-5)
    assert pitch_up[0, 0].item() == pytest.approx(math.radians(30.0), abs=1e-5)
    assert pitch_down[0, -1].item() == pytest.approx(-math.radians(30.0), abs=1e-5)


def test_integrate_action_rejects_bad_shapes() -> None:
    start = geometry.pose_from_position_yaw_pitch(torch.zeros(2, 3), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="action"):
        geometry.integrate_action(start, torch.zeros(2, 3), 4, max_translation=0.1, max_rotation_deg=10.0)
    with pytest.raises(ValueError, match="cam_to_world"):
        geometry.integrate_action(start[:1], torch.zeros(2, 4), 4, max_translation=0.1, max_rotation_deg=10.0)


def test_plucker_rays_are_unit_and_orthogonal() -> None:
    gen = torch.Generator().manual_seed(5)
    pose, k = _random_cameras(gen, 6, 5, 7)
    rays = geometry.plucker_rays(k, pose, 5, 7)
    assert rays.shape == (6, 6, 5, 7)
    d, m = rays[:, :3], rays[:, 3:]
    assert torch.allclose(d.norm(dim=1), torch.ones(6, 5, 7), atol=1e-5)
    assert (d * m).sum(dim=1).abs().max() < 1e-4
    # The moment is the same for any point on the ray: (o + s d) x d = o x d.
    origin = pose[:, :3, 3, None, None]
    far = origin + 3.0 * d
    assert torch.allclose(torch.linalg.cross(far, d, dim=1), m, atol=1e-4)
    # Directions are those of camera_rays in the world frame.
    cam = geometry.camera_rays(k, 5, 7)
    world = (pose[:, None, None, :3, :3] @ cam[..., None])[..., 0]
    assert torch.allclose(d.permute(0, 2, 3, 1), world / world.norm(dim=-1, keepdim=True), atol=1e-6)
