"""Properties of the latent cache and of the point-cloud baseline, on analytic geometry.

The round-trip tests use 1 mm voxels: a 16x16 token grid with a 90 degree field of
view has cells about 0.12 m wide per metre of depth, so no two cells share a voxel.
"""

from __future__ import annotations

import math

import pytest
import torch

from mirage_gym.geometry import (
    backproject,
    camera_rays,
    grid_tangents,
    intrinsics_from_fov,
    pose_from_position_yaw_pitch,
)
from mirage_gym.memory import LatentCache, PointCloudMemory

H = W = 16
C = 8
K = intrinsics_from_fov(90.0, W, H)
ROOM_LO = torch.tensor([-2.0, -2.5, 0.0])
ROOM_HI = torch.tensor([3.0, 2.0, 2.8])


def poses(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    position = torch.rand(n, 3, generator=g) * 2.0 - 1.0
    position[:, 2] = 0.6 + torch.rand(n, generator=g)
    yaw = torch.rand(n, generator=g) * 2 * math.pi
    pitch = (torch.rand(n, generator=g) - 0.5) * 0.8
    return pose_from_position_yaw_pitch(position, yaw, pitch)


def room_depth(cam_to_world: torch.Tensor, k: torch.Tensor = K, h: int = H, w: int = W) -> torch.Tensor:
    """Exact depth ``[N, h, w]`` of the inside of an axis-aligned box room."""
    rays = camera_rays(k.expand(cam_to_world.shape[0], 3, 3), h, w)
    dirs = (cam_to_world[:, None, None, :3, :3] @ rays[..., None])[..., 0]
    origin = cam_to_world[:, None, None, :3, 3]
    bound = torch.where(dirs > 0, ROOM_HI, ROOM_LO)
    # Rays have camera z = 1, so the distance along them to the wall is the depth.
    return ((bound - origin) / dirs).clamp(min=0).nan_to_num(float("inf")).amin(dim=-1)


def random_latents(n: int, seed: int = 1, channels: int = C) -> torch.Tensor:
    return torch.randn(n, channels, H, W, generator=torch.Generator().manual_seed(seed))


def front_pose(x: float = 0.0) -> torch.Tensor:
    """A camera at ``(x, 0, 1.5)`` looking along +x."""
    return pose_from_position_yaw_pitch(torch.tensor([[x, 0.0, 1.5]]), torch.zeros(1), torch.zeros(1))


def snapshot(cache: LatentCache) -> tuple:
    return (
        cache._keys.clone(), cache._xyz.clone(), cache._latents.clone(),
        cache._stamps.clone(), cache._dist.clone(), cache._extent.clone(), cache._patch.clone(), cache.frames_written,
    )


def assert_same_state(cache: LatentCache, state: tuple) -> None:
    now = snapshot(cache)
    assert now[-1] == state[-1]
    for a, b in zip(now[:-1], state[:-1]):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- round trip
@pytest.mark.parametrize("policy", ["newest", "nearest"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_is_bit_exact_for_each_view(policy, dtype):
    n = 6
    cams = poses(n)
    depth = room_depth(cams)
    latents = random_latents(n).to(dtype)
    cache = LatentCache(C, voxel_size=1e-3, num_scenes=n, policy=policy, dtype=dtype)
    cache.write(latents, depth, cams, K, scene=torch.arange(n))  # one scene per view, one batched call
    out, mask, out_depth = cache.read(cams, K, H, W, scene=torch.arange(n), return_depth=True)
    assert mask.all()
    assert out.dtype == dtype and torch.equal(out, latents)
    torch.testing.assert_close(out_depth, depth, rtol=1e-5, atol=1e-5)
    assert len(cache) == n * H * W


# ---------------------------------------------------------- bilinear reads
def wall_field(
    cam_to_world: torch.Tensor, k: torch.Tensor = K, h: int = H, w: int = W
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth of the wall x = 3 and a latent that is linear on it: channels (y, z) of the point each cell sees."""
    depth = room_depth(cam_to_world, k, h, w)
    points = backproject(depth, k.expand(cam_to_world.shape[0], 3, 3), cam_to_world)
    return depth, points[..., 1:].permute(0, 3, 1, 2).contiguous()


def test_bilinear_read_keeps_the_view_it_was_written_from():
    cams = poses(3, seed=5)
    latents = random_latents(3)
    depth = room_depth(cams)
    reads = {}
    for mode in ("nearest", "bilinear"):
        cache = LatentCache(C, voxel_size=1e-3, num_scenes=3, interpolation=mode)
        cache.write(latents, depth, cams, K, scene=torch.arange(3))
        reads[mode] = cache.read(cams, K, H, W, scene=torch.arange(3))
    assert reads["bilinear"][1].all() and torch.equal(reads["bilinear"][1], reads["nearest"][1])
    torch.testing.assert_close(reads["bilinear"][0], latents, rtol=1e-5, atol=1e-5)


def test_bilinear_read_places_tokens_of_a_moved_view_by_their_sub_cell_position():
    # A wall whose latent is linear in the wall's coordinates, written from one camera and read from
    # one moved by a fraction of a cell: the bilinear read recovers the moved view's field where the
    # nearest read is off by up to half a cell; both cover the same cells.
    write_pose = front_pose(0.0)
    read_pose = pose_from_position_yaw_pitch(torch.tensor([[0.0, 0.037, 1.5 - 0.021]]), torch.full((1,), 0.013),
                                             torch.zeros(1))
    k = intrinsics_from_fov(40.0, W, H)  # sees the wall x = 3 only: the field is linear over the whole view
    depth, field = wall_field(write_pose, k)
    _, expected = wall_field(read_pose, k)
    errors, masks = {}, {}
    for mode in ("nearest", "bilinear"):
        cache = LatentCache(2, voxel_size=1e-3, interpolation=mode)
        cache.write(field, depth, write_pose, k)
        out, mask = cache.read(read_pose, k, H, W)
        inner = mask.clone()
        inner[:, [0, -1]] = False
        inner[:, :, [0, -1]] = False  # border cells have tokens on one side only
        errors[mode] = (out - expected).abs().permute(0, 2, 3, 1)[inner].max()
        masks[mode] = mask
    assert torch.equal(masks["nearest"], masks["bilinear"]) and masks["nearest"][0, 1:-1, 1:-1].all()
    cell = 3.0 / float(k[0, 0])  # metres a cell spans on the wall, 3 m away
    assert errors["nearest"] > 0.1 * cell
    assert errors["bilinear"] < 0.02 * cell


def test_bilinear_read_does_not_mix_surfaces():
    # Two planes, one in front of the other: the far plane's tokens must not leak into the near plane's cells.
    cams = front_pose(0.0)
    depth = torch.full((1, H, W), 3.0)
    depth[:, :, : W // 2] = 1.0  # the left half is a near surface
    latents = torch.zeros(1, 1, H, W)
    latents[:, :, :, W // 2 :] = 1.0  # far tokens carry 1, near ones 0
    cache = LatentCache(1, voxel_size=1e-3, interpolation="bilinear", occlusion_margin=None)
    cache.write(latents, depth, cams, K)
    for yaw, side in ((0.1, 0.0), (0.0, 0.1)):  # far tokens move into the near surface's cells (a mixing read fails)
        moved = pose_from_position_yaw_pitch(torch.tensor([[0.0, side, 1.5]]), torch.full((1,), yaw), torch.zeros(1))
        out, mask, near_depth = cache.read(moved, K, H, W, return_depth=True)
        near_cells = mask & (near_depth < 2.0)
        assert near_cells.sum() > H and (out[:, 0][near_cells] == 0).all()


# ---------------------------------------------------------------- footprint
def test_footprint_keeps_a_wall_whole_from_nearer_and_changes_nothing_from_where_it_was_written():
    # The wall x = 3 written from 2.7 m away (one cell spans 34 cm there), read from 0.7 m: each
    # token's footprint is ~3.9 cells a side in the nearer view.
    far, near = front_pose(0.3), front_pose(2.3)
    depth, latents = wall_field(far)
    reads = {}
    for footprint in (1, 4):
        cache = LatentCache(2, voxel_size=1e-3, max_footprint=footprint)
        cache.write(latents, depth, far, K)
        back = cache.read(far, K, H, W)
        assert back[1].all() and torch.equal(back[0], latents)  # seen from where it was written: one cell each
        reads[footprint] = cache.read(near, K, H, W, return_depth=True)
    one, four = reads[1], reads[4]
    assert one[1].float().mean() < 0.3 < 0.95 < four[1].float().mean()
    # What fills the cells is the token whose footprint covers them: the latent of a point on the wall
    # within half a footprint (here 2 cells of 4.4 cm) of the cell's own point, at the wall's depth.
    truth_depth, truth = wall_field(near)
    covered = four[1]
    assert (four[0] - truth).abs().amax(dim=1)[covered].max() < 2 * 0.7 * 2 / W + 1e-4
    torch.testing.assert_close(four[2][covered], truth_depth[covered], rtol=1e-4, atol=1e-4)


def off_room_surface(points: torch.Tensor) -> torch.Tensor:
    """Distance of points inside the box room to its nearest face."""
    return torch.stack([(points - ROOM_LO).abs(), (points - ROOM_HI).abs()], -1).amin(-1).amin(-1)


def test_grid_tangents_stay_on_each_cells_own_surface_at_corners():
    # Cells next to the room's edges (wall meets floor, ceiling, side wall) have one neighbour across the
    # edge; where two neighbours on one side share the cell's face, the tangent is taken on that face, so
    # it is orthogonal to the face's normal.
    cam = front_pose(-1.5)
    points = backproject(room_depth(cam), K, cam)
    du, dv = grid_tangents(points, torch.ones(1, H, W, dtype=torch.bool))
    face = torch.stack([(points - ROOM_LO).abs(), (points - ROOM_HI).abs()], -1).amin(-1).argmin(-1)[0]  # its axis
    normal = torch.nn.functional.one_hot(face, 3).float()
    padded = torch.nn.functional.pad(face, (2, 2, 2, 2), value=-1)
    checked = 0
    for step, (dr, dc) in ((du[0], (0, 1)), (dv[0], (1, 0))):
        assert (step.norm(dim=-1) > 0).all()
        def near(k: int) -> torch.Tensor:  # the face k cells along the axis
            return padded[2 + k * dr : 2 + k * dr + H, 2 + k * dc : 2 + k * dc + W]
        known = ((near(1) == face) & (near(2) == face)) | ((near(-1) == face) & (near(-2) == face))
        across = (step * normal).sum(-1).abs() / step.norm(dim=-1)
        assert across[known].max() < 1e-4
        checked += int(((near(1) != face) | (near(-1) != face))[known].sum())
    assert checked > 40  # cells right beside an edge were among them


def test_footprints_lie_on_the_surfaces_they_were_written_from():
    # The room seen from the back, read from 2.5 m further in and from an oblique pose: the cells the
    # footprints cover show the floor, ceiling and walls where they are, not squares standing upright.
    far = front_pose(-1.5)
    depth, latents = wall_field(far)
    cache = LatentCache(2, voxel_size=1e-3, max_footprint=8)
    cache.write(latents, depth, far, K)
    oblique = pose_from_position_yaw_pitch(torch.tensor([[1.0, -1.0, 1.0]]), torch.tensor([-0.6]), torch.tensor([-0.3]))
    for near in (front_pose(1.0), oblique):
        _, mask, read_depth = cache.read(near, K, H, W, return_depth=True)
        off = off_room_surface(backproject(read_depth, K, near)[mask])
        # Squares standing upright: 3 and 8 cm off on average, 13 % and 63 % of cells over 5 cm.
        assert mask.float().mean() > 0.9 and off.mean() < 0.01 and (off > 0.05).float().mean() < 0.05


def test_a_token_keeps_its_own_cell_against_a_footprint_not_clearly_in_front():
    # Far tokens whose patches came out tilted 30 degrees, as a normal from noisy depth can: read from
    # nearer, their footprints lean up to ~12 % in front of the wall, over every other column, where
    # tokens were written from there. Those keep their own cells; a footprint 30 % or more in front
    # (a nearer wall) takes them.
    far, near = front_pose(0.3), front_pose(2.3)
    cache = LatentCache(2, voxel_size=1e-3, max_footprint=8)
    depth, latents = wall_field(far)
    cache.write(torch.ones_like(latents), depth, far, K)
    tilt = torch.tensor([[math.cos(0.5), -math.sin(0.5), 0.0], [math.sin(0.5), math.cos(0.5), 0.0], [0.0, 0.0, 1.0]])
    cache._patch = cache._patch @ tilt.T
    depth, latents = wall_field(near)
    own = torch.zeros(1, H, W, dtype=torch.bool)
    own[..., ::2] = True
    cache.write(torch.full_like(latents, 2.0), depth, near, K, keep=own)
    out, mask = cache.read(near, K, H, W)
    assert (out[:, 0][own] == 2.0).all() and (out[:, 0][mask & ~own] == 1.0).sum() > 20  # the footprints are there
    cache.write(torch.full_like(latents, 3.0), wall_field(far)[0] * (2.4 / 2.7), far, K)  # 0.4 m from the camera
    assert (cache.read(near, K, H, W)[0] == 3.0).all()


def test_tokens_without_a_patch_spread_as_squares_facing_the_reader():
    # What a cache saved before oriented patches reads like: squares of the written extent a side.
    far, near = front_pose(0.3), front_pose(2.3)
    depth, latents = wall_field(far)
    cache = LatentCache(2, voxel_size=1e-3, max_footprint=4)
    cache.write(latents, depth, far, K)
    oriented = cache.read(near, K, H, W, return_depth=True)
    cache._patch.zero_()
    square = cache.read(near, K, H, W, return_depth=True)
    assert square[1].float().mean() > 0.95
    # The end wall faces both cameras, so there the square is the patch; elsewhere it stands upright.
    wall = (oriented[2] > 2.5) & square[1]
    torch.testing.assert_close(square[2][wall], oriented[2][wall], rtol=1e-4, atol=1e-4)


def test_footprint_is_capped_at_max_footprint():
    far, near = front_pose(0.3), front_pose(2.3)
    depth, latents = wall_field(far)
    cache = LatentCache(2, voxel_size=1e-3, max_footprint=2)
    cache.write(latents, depth, far, K)
    # Footprints of 2 cells a side, spaced ~3.9 apart: about a quarter of the view.
    assert 0.15 < cache.read(near, K, H, W)[1].float().mean() < 0.45


def test_round_trip_holds_for_any_depth_without_occlusion_test():
    cams = poses(3, seed=5)
    g = torch.Generator().manual_seed(3)
    depth = 0.5 + 6.0 * torch.rand(3, H, W, generator=g)
    depth[:, 3, 4] = float("nan")  # empty tokens stay empty
    latents = random_latents(3)
    cache = LatentCache(C, voxel_size=1e-3, num_scenes=3, occlusion_margin=None)
    cache.write(latents, depth, cams, K, scene=torch.arange(3))
    out, mask = cache.read(cams, K, H, W, scene=torch.arange(3))
    valid = torch.isfinite(depth)
    assert torch.equal(mask, valid)
    assert torch.equal(out.permute(0, 2, 3, 1)[valid], latents.permute(0, 2, 3, 1)[valid])
    assert (out.permute(0, 2, 3, 1)[~valid] == 0).all()


def test_non_finite_and_non_positive_depth_are_empty_tokens():
    cam = front_pose()
    depth = torch.full((1, H, W), 3.0)
    depth[0, 0, :4] = float("nan")
    depth[0, 1, :3] = float("inf")
    depth[0, 2, :2] = 0.0
    depth[0, 3, :1] = -1.0
    cache = LatentCache(C, voxel_size=1e-3)
    cache.write(random_latents(1), depth, cam, K)
    assert len(cache) == H * W - 10
    _, mask = cache.read(cam, K, H, W)
    assert torch.equal(mask[0], torch.isfinite(depth[0]) & (depth[0] > 0))


def test_keep_mask_selects_written_tokens():
    cam = front_pose()
    keep = torch.zeros(1, H, W, dtype=torch.bool)
    keep[0, 4:10, 2:7] = True
    cache = LatentCache(C, voxel_size=1e-3)
    latents = random_latents(1)
    cache.write(latents, torch.full((1, H, W), 2.0), cam, K, keep=keep)
    out, mask = cache.read(cam, K, H, W)
    assert len(cache) == 30 and torch.equal(mask, keep)
    assert torch.equal(out[:, :, 4:10, 2:7], latents[:, :, 4:10, 2:7])


# ------------------------------------------------------------------ z-buffer
@pytest.mark.parametrize("near_first", [True, False])
def test_nearest_token_wins_a_cell(near_first):
    cam = front_pose()
    far_lat, near_lat = random_latents(1, seed=2), random_latents(1, seed=3)
    far = torch.full((1, H, W), 4.0)
    near = torch.full((1, H, W), float("nan"))
    near[..., : W // 2] = 2.0  # a near plane over the left half
    cache = LatentCache(C, voxel_size=1e-3)
    writes = [(near_lat, near), (far_lat, far)] if near_first else [(far_lat, far), (near_lat, near)]
    for lat, d in writes:
        cache.write(lat, d, cam, K)
    out, mask, depth = cache.read(cam, K, H, W, return_depth=True)
    assert mask.all()
    assert torch.equal(out[..., : W // 2], near_lat[..., : W // 2])
    assert torch.equal(out[..., W // 2 :], far_lat[..., W // 2 :])
    assert (depth[..., : W // 2] < 2.001).all() and (depth[..., W // 2 :] > 3.999).all()


def test_occlusion_test_removes_bleed_through_but_keeps_silhouettes():
    cam = front_pose()
    far_lat, near_lat = random_latents(1, seed=2), random_latents(1, seed=3)
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    holes = (rows % 3 == 1) & (cols % 3 == 1) & (cols < W // 2 - 2)  # isolated holes inside the left half
    near = torch.full((1, H, W), float("nan"))
    near[0, :, : W // 2] = 1.5
    for margin, expect_holes_filled in ((None, True), (0.5, False)):
        cache = LatentCache(C, voxel_size=1e-3, occlusion_margin=margin)
        cache.write(far_lat, torch.full((1, H, W), 4.0), cam, K)
        cache.write(near_lat, near, cam, K, keep=~holes[None])
        out, mask = cache.read(cam, K, H, W)
        assert torch.equal(mask[0], ~holes | expect_holes_filled)
        # The far wall beside the near plane's edge is a silhouette, not a hole: it stays.
        assert mask[0, :, W // 2 :].all()
        assert torch.equal(out[0][:, ~holes], torch.where(cols < W // 2, near_lat[0], far_lat[0])[:, ~holes])


# --------------------------------------------------------------- boundedness
def test_writing_the_same_view_a_thousand_times_keeps_the_size():
    cams = poses(1, seed=7)
    depth, latents = room_depth(cams), random_latents(1)
    cache = LatentCache(C, voxel_size=0.05)
    cache.write(latents, depth, cams, K)
    size, nbytes = len(cache), cache.nbytes
    for _ in range(999):
        cache.write(latents, depth, cams, K)
    assert len(cache) == size and cache.nbytes == nbytes and cache.frames_written == 1000
    # The same in one batched call of 1,000 frames.
    cache.write(latents.expand(1000, -1, -1, -1), depth.expand(1000, -1, -1), cams.expand(1000, 4, 4), K)
    assert len(cache) == size


def test_voxel_keeps_one_token_by_policy():
    k = intrinsics_from_fov(90.0, 1, 1)  # one token, on the optical axis
    near_cam, far_cam = front_pose(1.0), front_pose(0.0)
    a, b = torch.full((1, C, 1, 1), 1.0), torch.full((1, C, 1, 1), 2.0)
    kept = {}
    for policy in ("newest", "nearest"):
        cache = LatentCache(C, voxel_size=1.0, policy=policy)
        cache.write(a, torch.tensor([[[1.0]]]), near_cam, k)  # point (2.00, 0, 1.5), 1 m away
        cache.write(b, torch.tensor([[[2.02]]]), far_cam, k)  # point (2.02, 0, 1.5), same voxel, 2 m away
        xyz, lat = cache.points()
        assert len(cache) == 1
        kept[policy] = (float(xyz[0, 0]), float(lat[0, 0]))
    assert kept["newest"] == pytest.approx((2.02, 2.0))
    assert kept["nearest"] == pytest.approx((2.0, 1.0))


def test_newest_prefers_the_later_frame_within_one_write():
    k = intrinsics_from_fov(90.0, 1, 1)
    cams = torch.cat([front_pose(1.0), front_pose(0.0)])
    latents = torch.stack([torch.full((C, 1, 1), 1.0), torch.full((C, 1, 1), 2.0)])
    cache = LatentCache(C, voxel_size=1.0)
    cache.write(latents, torch.tensor([[[1.0]], [[2.02]]]), cams, k)
    assert len(cache) == 1 and float(cache.points()[1][0, 0]) == 2.0


def _plane_write(cache: LatentCache, x: float, tag: float, scene: int = 0) -> None:
    """A full 16x16 view of a wall 2 m ahead of a camera at ``(x, 0, 1.5)``; latents = ``tag``."""
    cache.write(torch.full((1, C, H, W), tag), torch.full((1, H, W), 2.0), front_pose(x), K, scene=scene)


def test_capacity_evicts_least_recently_written_then_farthest():
    cache = LatentCache(C, voxel_size=1e-3, capacity=300)
    _plane_write(cache, 0.0, tag=1.0)
    _plane_write(cache, 10.0, tag=2.0)  # a disjoint wall: 512 tokens > 300
    assert len(cache) == 300
    xyz, lat = cache.points()
    old = lat[:, 0] == 1.0
    assert int((lat[:, 0] == 2.0).sum()) == 256 and int(old.sum()) == 44
    # Among the older frame's tokens, the farthest from its camera went first.
    cam = front_pose(0.0)[0, :3, 3]
    all_old = backproject(torch.full((1, H, W), 2.0), K, front_pose(0.0)).reshape(-1, 3)
    kept_dist = (xyz[old] - cam).norm(dim=-1)
    assert kept_dist.max() <= torch.sort((all_old - cam).norm(dim=-1)).values[43] + 1e-6


def test_reobserved_voxels_are_refreshed_before_eviction():
    cache = LatentCache(C, voxel_size=1e-3, capacity=600)
    _plane_write(cache, 0.0, tag=1.0)
    _plane_write(cache, 10.0, tag=2.0)
    _plane_write(cache, 0.0, tag=3.0)  # re-observes the first wall: its stamps are now the newest
    _plane_write(cache, 20.0, tag=4.0)  # 768 tokens: 168 of the second wall must go
    _, lat = cache.points()
    counts = {tag: int((lat[:, 0] == tag).sum()) for tag in (1.0, 2.0, 3.0, 4.0)}
    assert counts == {1.0: 0, 2.0: 88, 3.0: 256, 4.0: 256}


# ------------------------------------------------------------------- scenes
def test_scenes_are_independent_in_batched_use():
    cache = LatentCache(C, voxel_size=1e-3, capacity=300, num_scenes=3)
    cams = poses(3, seed=11)
    depth, latents = room_depth(cams), random_latents(3)
    cache.write(latents, depth, cams, K, scene=torch.tensor([0, 1, 2]))
    before0, before2 = cache.points(0), cache.points(2)
    # Fill scene 1 past its capacity: scenes 0 and 2 must not change.
    _plane_write(cache, 10.0, tag=5.0, scene=1)
    _plane_write(cache, 20.0, tag=6.0, scene=1)
    assert cache.num_tokens(1) == 300 and cache.num_tokens(0) == 256 and cache.num_tokens(2) == 256
    for before, scene in ((before0, 0), (before2, 2)):
        after = cache.points(scene)
        assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    # A batched read equals per-scene reads, and each scene sees only its own tokens.
    batched, bmask = cache.read(cams, K, H, W, scene=torch.tensor([0, 1, 2]))
    for s in range(3):
        single, smask = cache.read(cams[s : s + 1], K, H, W, scene=s)
        assert torch.equal(batched[s : s + 1], single) and torch.equal(bmask[s : s + 1], smask)
    assert torch.equal(batched[0], latents[0]) and torch.equal(batched[2], latents[2])
    cache.clear(scene=1)
    assert cache.num_tokens(1) == 0 and torch.equal(cache.points(0)[1], before0[1])
    assert len(cache) == 512
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_nbytes_counts_points_latents_keys_stamps():
    cache = LatentCache(C, voxel_size=1e-3, dtype=torch.bfloat16)
    _plane_write(cache, 0.0, tag=1.0)
    per_token = 3 * 4 + C * 2 + 8 + 8 + 4 + 4 + 6 * 4  # xyz, latents, key, stamp, distance, extent, patch
    assert cache.nbytes == 256 * per_token


# ----------------------------------------------------------------- save/load
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_load_round_trip_is_exact(tmp_path, dtype):
    cache = LatentCache(C, voxel_size=0.02, capacity=400, num_scenes=2, policy="nearest", dtype=dtype, occlusion_margin=None,
                        interpolation="bilinear", max_footprint=3)
    cams = poses(4, seed=2)
    cache.write(random_latents(4).to(dtype), room_depth(cams), cams, K, scene=torch.tensor([0, 1, 1, 0]))
    path = tmp_path / "cache.safetensors"
    cache.save(path)
    loaded = LatentCache.load(path)
    assert_same_state(loaded, snapshot(cache))
    for attr in ("channels", "voxel_size", "capacity", "num_scenes", "policy", "dtype", "occlusion_margin", "occlusion_neighbors",
                 "interpolation", "max_footprint"):
        assert getattr(loaded, attr) == getattr(cache, attr)
    # The loaded cache keeps behaving identically, stamps included.
    more = poses(2, seed=9)
    for c in (cache, loaded):
        c.write(random_latents(2, seed=4).to(dtype), room_depth(more), more, K, scene=1)
    assert_same_state(loaded, snapshot(cache))


def test_missing_or_corrupt_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        LatentCache.load(missing)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 definitely not safetensors")
    with pytest.raises(ValueError, match="garbage.safetensors"):
        LatentCache.load(garbage)
    cache = LatentCache(C, voxel_size=0.05)
    _plane_write(cache, 0.0, tag=1.0)
    good = tmp_path / "good.safetensors"
    cache.save(good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated.safetensors"):
        LatentCache.load(truncated)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(foreign))
    with pytest.raises(ValueError, match="foreign.safetensors"):
        LatentCache.load(foreign)


# ----------------------------------------------------------------- bad input
def _good_write():
    cam = front_pose()
    return dict(
        latents=random_latents(1), depth=torch.full((1, H, W), 2.0), cam_to_world=cam, intrinsics=K,
        keep=None, scene=None,
    )


def _nan_pose():
    p = front_pose().clone()
    p[0, 0, 3] = float("nan")
    return p


def _inf_k():
    k = K.clone()
    k[0, 2] = float("inf")
    return k


BAD_WRITES = [
    ("latents", dict(latents=torch.randn(C, H, W))),
    ("channels", dict(latents=torch.randn(1, C + 1, H, W))),
    ("latents", dict(latents=torch.full((1, C, H, W), float("nan")))),
    ("depth", dict(depth=torch.full((1, H, W + 1), 2.0))),
    ("depth", dict(depth=torch.full((2, H, W), 2.0))),
    ("cam_to_world", dict(cam_to_world=_nan_pose())),
    ("cam_to_world", dict(cam_to_world=front_pose().expand(2, 4, 4))),
    ("cam_to_world", dict(cam_to_world=front_pose() * 2.0)),
    ("intrinsics", dict(intrinsics=_inf_k())),
    ("intrinsics", dict(intrinsics=torch.eye(4))),
    ("keep", dict(keep=torch.ones(1, H, W))),
    ("scene", dict(scene=torch.tensor([5]))),
    ("depth", dict(depth=torch.full((1, H, W), 1e6))),  # outside the addressable world
]


@pytest.mark.parametrize("name,bad", BAD_WRITES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD_WRITES)])
def test_bad_write_raises_and_leaves_the_cache_unchanged(name, bad):
    cache = LatentCache(C, voxel_size=0.01, capacity=1000, num_scenes=2)
    cams = poses(2, seed=4)
    cache.write(random_latents(2), room_depth(cams), cams, K, scene=torch.tensor([0, 1]))
    state = snapshot(cache)
    with pytest.raises(ValueError, match=name):
        cache.write(**{**_good_write(), **bad})
    assert_same_state(cache, state)


@pytest.mark.parametrize(
    "name,bad",
    [
        ("cam_to_world", dict(cam_to_world=_nan_pose())),
        ("intrinsics", dict(intrinsics=_inf_k())),
        ("height", dict(height=0)),
        ("width", dict(width=2.5)),
        ("scene", dict(scene=3)),
    ],
)
def test_bad_read_raises(name, bad):
    cache = LatentCache(C, voxel_size=0.01, num_scenes=2)
    _plane_write(cache, 0.0, tag=1.0)
    state = snapshot(cache)
    with pytest.raises(ValueError, match=name):
        cache.read(**{**dict(cam_to_world=front_pose(), intrinsics=K, height=H, width=W), **bad})
    assert_same_state(cache, state)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("voxel_size", dict(voxel_size=0.0)),
        ("voxel_size", dict(voxel_size=-0.1)),
        ("voxel_size", dict(voxel_size=float("nan"))),
        ("capacity", dict(capacity=0)),
        ("policy", dict(policy="oldest")),
        ("num_scenes", dict(num_scenes=0)),
        ("dtype", dict(dtype=torch.int32)),
        ("occlusion_margin", dict(occlusion_margin=-1.0)),
        ("interpolation", dict(interpolation="bicubic")),
        ("max_footprint", dict(max_footprint=0)),
        ("max_footprint", dict(max_footprint=2.0)),
    ],
)
def test_bad_configuration_raises(name, kwargs):
    with pytest.raises(ValueError, match=name):
        LatentCache(C, **kwargs)
    with pytest.raises(ValueError, match="channels"):
        LatentCache(0)


# -------------------------------------------------------------- point cloud
def test_point_cloud_renders_its_view_exactly_and_grows_linearly():
    cams = poses(2, seed=8)
    depth = room_depth(cams)
    rgb = torch.randint(0, 256, (2, H, W, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    memory = PointCloudMemory()
    memory.write(rgb, depth, cams, K, scene=torch.tensor([0, 1]))
    out, mask = memory.read(cams, K, H, W, scene=torch.tensor([0, 1]))
    assert mask.all() and torch.equal(out, rgb)
    sizes = []
    for _ in range(5):
        memory.write(rgb[:1], depth[:1], cams[:1], K)
        sizes.append(len(memory))
    assert sizes == [2 * H * W + k * H * W for k in range(1, 6)]  # no dedup: one point per pixel per frame
    assert memory.nbytes == len(memory) * 15 and memory.num_points(1) == H * W
    memory.clear(0)
    assert len(memory) == H * W
    memory.clear()
    assert len(memory) == 0


def test_point_cloud_nearest_point_wins_and_skips_points_behind():
    cam = front_pose()
    far_rgb = torch.full((1, H, W, 3), 10, dtype=torch.uint8)
    near_rgb = torch.full((1, H, W, 3), 200, dtype=torch.uint8)
    near = torch.full((1, H, W), 2.0)
    near[..., W // 2 :] = float("nan")
    memory = PointCloudMemory()
    memory.write(near_rgb, near, cam, K)
    memory.write(far_rgb, torch.full((1, H, W), 4.0), cam, K)
    out, mask = memory.read(cam, K, H, W)
    assert mask.all()
    assert (out[0, :, : W // 2] == 200).all() and (out[0, :, W // 2 :] == 10).all()
    # Turned around, everything is behind the camera.
    back = pose_from_position_yaw_pitch(torch.tensor([[0.0, 0.0, 1.5]]), torch.tensor([math.pi]), torch.zeros(1))
    _, mask = memory.read(back, K, H, W)
    assert not mask.any()


def test_point_cloud_bad_input_raises_and_keeps_points():
    memory = PointCloudMemory()
    cam = front_pose()
    rgb = torch.zeros(1, H, W, 3, dtype=torch.uint8)
    memory.write(rgb, torch.full((1, H, W), 2.0), cam, K)
    before = memory.points()
    for name, kwargs in [
        ("rgb", dict(rgb=rgb.float())),
        ("depth", dict(depth=torch.full((1, H, W + 2), 2.0))),
        ("cam_to_world", dict(cam_to_world=_nan_pose())),
        ("intrinsics", dict(intrinsics=_inf_k())),
        ("keep", dict(keep=torch.ones(1, H, W))),
    ]:
        args = {**dict(rgb=rgb, depth=torch.full((1, H, W), 2.0), cam_to_world=cam, intrinsics=K), **kwargs}
        with pytest.raises(ValueError, match=name):
            memory.write(**args)
    after = memory.points()
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_round_trip_on_cuda_matches_cpu():
    cams = poses(3, seed=12)
    depth, latents = room_depth(cams), random_latents(3)
    out = []
    for device in ("cpu", "cuda"):
        cache = LatentCache(C, voxel_size=1e-3, num_scenes=3, device=device)
        cache.write(latents.to(device), depth.to(device), cams.to(device), K.to(device), scene=torch.arange(3))
        lat, mask = cache.read(cams.to(device), K.to(device), H, W, scene=torch.arange(3))
        out.append((lat.cpu(), mask.cpu()))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
    assert torch.equal(out[1][0], latents)
