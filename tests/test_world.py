"""The procedural ground-truth world: scenes, renderer, collision queries and trajectories."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mirage_gym import geometry
from mirage_gym.world import Renderer, RenderOutput, Scene, make_scene, trajectories

RES = 48
K = geometry.intrinsics_from_fov(90.0, RES, RES)


@pytest.fixture(scope="module")
def scene() -> Scene:
    return make_scene(3, num_rooms=3, moving_objects=1)


@pytest.fixture(scope="module")
def renderer(scene: Scene) -> Renderer:
    return Renderer(scene)


def _poses(scene: Scene, count: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.stack([scene.sample_pose(rng) for _ in range(count)])


def _pose(position, yaw: float, pitch: float = 0.0) -> torch.Tensor:
    return geometry.pose_from_position_yaw_pitch(
        torch.as_tensor(np.asarray(position, np.float32)[None]), torch.tensor([yaw]), torch.tensor([pitch])
    )


# ---------------------------------------------------------------------- scenes


def test_same_seed_same_scene_and_pixels_different_seed_differs() -> None:
    a, b, c = make_scene(11, moving_objects=1), make_scene(11, moving_objects=1), make_scene(12, moving_objects=1)
    pose = _poses(a, 4)
    out_a = Renderer(a).render(pose, K, RES, RES, time=0.7)
    out_b = Renderer(b).render(pose, K, RES, RES, time=0.7)
    assert torch.equal(out_a.rgb, out_b.rgb)
    assert torch.equal(out_a.depth, out_b.depth)
    assert torch.equal(out_a.instance, out_b.instance)
    assert np.array_equal(a.navigable, b.navigable)
    out_c = Renderer(c).render(pose, K, RES, RES, time=0.7)
    assert not torch.equal(out_a.rgb, out_c.rgb)


@pytest.mark.parametrize("rooms", [1, 2, 4, 6])
def test_rooms_are_connected_and_enclosed(rooms: int) -> None:
    scene = make_scene(rooms, num_rooms=rooms)
    assert scene.num_rooms == rooms
    lo, hi = scene.bounds
    assert (hi > lo).all() and lo[2] == 0.0
    nav = scene.navigable
    assert nav.shape == scene.grid_shape and nav.any()
    # Every free cell can be reached from every other (doors connect all rooms).
    start = scene.cell_centers()[tuple(np.argwhere(nav)[0])]
    assert np.array_equal(scene.reachable(start), nav)
    # Every room has free floor.
    centers = scene.cell_centers()[nav]
    assert set(scene.room_at(centers).tolist()) == set(range(rooms))


def test_surfaces_have_distinct_textures(scene: Scene) -> None:
    q = scene.quads
    walls = (q.axis < 2) & (q.moving < 0)
    floors = (q.axis == 2) & (q.sign > 0) & (q.plane == 0.0)
    # Each room's floor and each of its walls has its own texture.
    assert len(set(q.texture[floors].tolist())) == scene.num_rooms
    assert len(set(q.texture[walls].tolist())) >= 3 * scene.num_rooms
    colours = scene.textures.color_a[np.unique(q.texture)]
    assert len(np.unique(colours.round(3), axis=0)) == len(colours)


def test_make_scene_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_rooms"):
        make_scene(0, num_rooms=0)
    with pytest.raises(ValueError, match="moving_objects"):
        make_scene(0, moving_objects=-1)


# ---------------------------------------------------------------------- renderer


def test_render_shapes_and_dtypes(renderer: Renderer, scene: Scene) -> None:
    pose = _poses(scene, 3)
    out = renderer.render(pose, K.expand(3, 3, 3), RES, RES + 8, time=torch.tensor([0.0, 1.0, 2.0]))
    assert isinstance(out, RenderOutput)
    assert out.rgb.shape == (3, RES, RES + 8, 3) and out.rgb.dtype == torch.uint8
    assert out.depth.shape == (3, RES, RES + 8) and out.depth.dtype == torch.float32
    assert out.instance.shape == (3, RES, RES + 8) and out.instance.dtype == torch.int32
    assert out.dynamic.shape == (3, RES, RES + 8) and out.dynamic.dtype == torch.bool
    # Rooms are closed: every ray hits a surface at a finite, positive depth.
    assert (out.instance > 0).all()
    assert torch.isfinite(out.depth).all() and (out.depth > 0).all()
    # Textured rooms, not flat colour.
    assert out.rgb.float().std() > 10


def test_depth_matches_analytic_distance_to_wall() -> None:
    scene = make_scene(2, num_rooms=1)
    x_wall = float(scene.x_lines[1] - scene.wall_thickness / 2)  # inner face of the east wall
    q = scene.quads
    east = (q.axis == 0) & (q.sign < 0) & np.isclose(q.plane, x_wall)
    wall_ids = torch.tensor(q.instance[east])
    position = scene.sample_position(np.random.default_rng(0))
    pose = _pose(position, 0.0)  # looking along +x, straight at the east wall
    out = Renderer(scene).render(pose, K, RES, RES)
    on_wall = torch.isin(out.instance[0], wall_ids)
    assert on_wall.sum() > 0
    expected = x_wall - float(position[0])
    assert torch.allclose(out.depth[0][on_wall], torch.full_like(out.depth[0][on_wall], expected), atol=1e-4)
    # The wall seen from a pose 0.5 m closer is 0.5 m nearer.
    closer = Renderer(scene).render(_pose(position + np.array([0.5, 0, 0], np.float32), 0.0), K, RES, RES)
    on_wall2 = torch.isin(closer.instance[0], wall_ids)
    near = closer.depth[0][on_wall2]
    assert torch.allclose(near, torch.full_like(near, expected - 0.5), atol=1e-4)


def test_backprojected_depth_lands_on_floor_and_ceiling(renderer: Renderer, scene: Scene) -> None:
    rng = np.random.default_rng(1)
    positions = np.stack([scene.sample_position(rng) for _ in range(4)])
    yaw = torch.tensor(rng.uniform(-math.pi, math.pi, 4), dtype=torch.float32)
    pitch = torch.tensor([-0.6, -0.3, 0.4, 0.7])
    pose = geometry.pose_from_position_yaw_pitch(torch.from_numpy(positions), yaw, pitch)
    out = renderer.render(pose, K, RES, RES)
    points = geometry.backproject(out.depth, K, pose)
    q = scene.quads
    floor_ids = torch.tensor(q.instance[(q.axis == 2) & (q.sign > 0) & (q.plane == 0.0)])
    ceiling_ids = torch.tensor(q.instance[(q.axis == 2) & (q.sign < 0) & np.isclose(q.plane, scene.ceiling_height)])
    floor = torch.isin(out.instance, floor_ids)
    ceiling = torch.isin(out.instance, ceiling_ids)
    assert floor.sum() > 100 and ceiling.sum() > 100
    assert points[floor][:, 2].abs().max() < 1e-3
    assert (points[ceiling][:, 2] - scene.ceiling_height).abs().max() < 1e-3
    # Every visible point is inside the house.
    lo, hi = scene.bounds
    assert (points >= torch.from_numpy(lo) - 1e-3).all() and (points <= torch.from_numpy(hi) + 1e-3).all()


def test_render_is_batch_independent(renderer: Renderer, scene: Scene) -> None:
    pose = _poses(scene, 5, seed=4)
    batch = renderer.render(pose, K, RES, RES, time=torch.linspace(0, 2, 5))
    single = renderer.render(pose[2:3], K, RES, RES, time=1.0)
    assert torch.equal(batch.rgb[2], single.rgb[0])
    assert torch.equal(batch.depth[2], single.depth[0])


def test_textures_are_fixed_in_the_world(renderer: Renderer, scene: Scene) -> None:
    """A surface point has the same colour from another viewpoint (world-space textures, static light)."""
    rng = np.random.default_rng(12)
    position = scene.sample_position(rng)
    yaw = float(rng.uniform(-math.pi, math.pi))
    a = _pose(position, yaw, -0.2)
    moved, _ = scene.move(position[None], (position + np.array([0.3 * math.sin(yaw), -0.3 * math.cos(yaw), 0.0]))[None])
    b = _pose(moved[0], yaw + 0.2, -0.1)
    res = 96
    k = geometry.intrinsics_from_fov(90.0, res, res)
    out_a = renderer.render(a, k, res, res)
    out_b = renderer.render(b, k, res, res)
    points = geometry.backproject(out_b.depth, k, b).reshape(1, -1, 3)
    uv, z = geometry.project(points, k, a)
    cells, valid = geometry.points_to_cells(uv, z, res, res)
    row, col = cells[0, :, 0], cells[0, :, 1]
    seen = valid[0] & ((out_a.depth[0, row, col] - z[0]).abs() < 0.01)  # the same point is visible in a
    assert seen.sum() > res * res // 4
    colour_a = out_a.rgb[0, row, col][seen].float()
    colour_b = out_b.rgb[0].reshape(-1, 3)[seen].float()
    same = (colour_a - colour_b).abs().amax(dim=1)
    assert same.median() < 8
    shuffled = (colour_a - colour_b[torch.randperm(len(colour_b))]).abs().amax(dim=1)
    assert shuffled.median() > 3 * same.median() + 10


def test_occlusion_culling_is_exact(scene: Scene) -> None:
    """Clipping what lies beyond a room to its door openings changes no pixel."""
    culled = Renderer(scene)
    plain = Renderer(scene)
    plain.door_corners = plain.door_corners[:0]  # no door openings known: no occlusion culling
    rng = np.random.default_rng(13)
    poses = torch.cat([trajectories.random_walk(scene, rng, 12, step=0.4), trajectories.orbit(scene, rng, 4)])
    time = torch.linspace(0.0, 5.0, len(poses))
    out_c = culled.render(poses, K, RES, RES, time=time)
    out_p = plain.render(poses, K, RES, RES, time=time)
    assert torch.equal(out_c.rgb, out_p.rgb)
    assert torch.equal(out_c.depth, out_p.depth)
    assert torch.equal(out_c.instance, out_p.instance)


def test_moving_objects_move_and_are_marked_dynamic(renderer: Renderer, scene: Scene) -> None:
    mv = scene.moving
    assert len(mv) == 1
    # Stand back from the middle of the lane and look at it.
    centre = mv.start[0] + mv.delta[0] / 2
    rng = np.random.default_rng(0)
    nav = scene.cell_centers()[scene.navigable]
    dist = np.linalg.norm(nav[:, :2] - centre[:2], axis=1)
    candidates = nav[(dist > 1.5) & (dist < 3.5)]
    for position in candidates[rng.permutation(len(candidates))[:40]]:
        yaw = math.atan2(centre[1] - position[1], centre[0] - position[0])
        pose = _pose(position, yaw, -0.3).expand(8, 4, 4)
        out = renderer.render(pose, K, RES, RES, time=torch.linspace(0.0, float(mv.period[0]) * 0.875, 8))
        if out.dynamic.sum(dim=(1, 2)).min() > 10:
            break
    else:
        pytest.fail("no view of the moving object found")
    dynamic_ids = set(out.instance[out.dynamic].tolist())
    assert dynamic_ids == {int(mv.instance[0])}
    assert not set(out.instance[~out.dynamic].tolist()) & dynamic_ids
    # The object is somewhere else at different times ...
    masks = out.dynamic
    assert any(not torch.equal(masks[0], masks[i]) for i in range(1, 8))
    # ... exactly where its path says: its visible points lie on its displaced box.
    points = geometry.backproject(out.depth, K, pose)
    disp = mv.displacement(torch.linspace(0.0, float(mv.period[0]) * 0.875, 8))[:, 0]  # [8, 3]
    q = scene.quads
    corners = torch.from_numpy(q.corners()[q.moving == 0]).reshape(-1, 3)
    box_lo, box_hi = corners.min(0).values, corners.max(0).values
    for i in range(8):
        p = points[i][out.dynamic[i]] - disp[i]
        assert ((p >= box_lo - 1e-3) & (p <= box_hi + 1e-3)).all()


def test_render_rejects_bad_input(renderer: Renderer, scene: Scene) -> None:
    pose = _poses(scene, 2)
    with pytest.raises(ValueError, match="cam_to_world"):
        renderer.render(pose[0], K, RES, RES)
    with pytest.raises(ValueError, match="intrinsics"):
        renderer.render(pose, K.expand(3, 3, 3), RES, RES)
    with pytest.raises(ValueError, match="height and width"):
        renderer.render(pose, K, 0, RES)
    with pytest.raises(ValueError, match="time"):
        renderer.render(pose, K, RES, RES, time=torch.zeros(3))
    bad = pose.clone()
    bad[0, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        renderer.render(bad, K, RES, RES)


# ---------------------------------------------------------------------- collision and navigation


def test_move_never_passes_through_a_wall() -> None:
    scene = make_scene(5, num_rooms=1)
    x_wall = float(scene.x_lines[1] - scene.wall_thickness / 2)
    rng = np.random.default_rng(2)
    starts = np.stack([scene.sample_position(rng) for _ in range(16)])
    ends = starts + np.array([20.0, 0.0, 0.0], np.float32)  # far beyond the east wall
    reached, collided = scene.move(starts, ends, radius=0.2)
    assert collided.all()
    assert (reached[:, 0] <= x_wall - 0.2 + 1e-4).all()
    assert scene.is_free(reached).all()
    # Stops close to the first obstacle, not early: a little further is blocked.
    assert not scene.is_free(reached + np.array([0.02, 0.0, 0.0], np.float32)).any()
    # Torch in, torch out.
    r_t, c_t = scene.move(torch.from_numpy(starts), torch.from_numpy(ends))
    assert isinstance(r_t, torch.Tensor) and torch.equal(c_t, torch.from_numpy(collided))


def test_random_moves_stay_free_and_on_the_segment(scene: Scene) -> None:
    rng = np.random.default_rng(3)
    starts = np.stack([scene.sample_position(rng) for _ in range(64)]).astype(np.float64)
    ends = starts + np.concatenate([rng.normal(0, 2.0, (64, 2)), np.zeros((64, 1))], axis=1)
    reached, collided = scene.move(starts, ends)
    # The whole path up to the reached point is free, checked far more finely than move() samples it.
    frac = np.linspace(0, 1, 400)
    path = starts[:, None] + frac[None, :, None] * (reached - starts)[:, None]
    assert scene.is_free(path.reshape(-1, 3), radius=0.2 - 1e-4).all()
    np.testing.assert_allclose(reached[~collided], ends[~collided], atol=1e-5)
    assert collided.any() and (~collided).any()


def test_is_free_and_move_reject_bad_input(scene: Scene) -> None:
    with pytest.raises(ValueError, match="positions"):
        scene.is_free(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        scene.is_free(np.full((1, 3), np.nan))
    lo, _ = scene.bounds
    outside = (lo - 5.0)[None]
    assert not scene.is_free(outside)[0]
    with pytest.raises(ValueError, match="start"):
        scene.move(outside, outside)


def test_camera_cannot_stand_in_furniture_but_passes_under_lintels(scene: Scene) -> None:
    furniture = np.nonzero(scene.solid_lo[:, 2] == 0.0)[0]
    tall = scene.solid_hi[furniture, 2] < scene.camera_height  # a table: lower than the camera
    box = furniture[np.argmax(tall)] if tall.any() else furniture[-1]
    centre = (scene.solid_lo[box] + scene.solid_hi[box]) / 2
    centre[2] = scene.camera_height
    assert not scene.is_free(centre[None])[0]
    lintels = np.nonzero(scene.solid_lo[:, 2] > 0.0)[0]
    assert len(lintels) >= 2  # three rooms, at least two doors
    door = (scene.solid_lo[lintels[0]] + scene.solid_hi[lintels[0]]) / 2
    door[2] = scene.camera_height
    assert scene.is_free(door[None])[0]


def test_sample_pose_and_goal(scene: Scene) -> None:
    rng = np.random.default_rng(4)
    for _ in range(20):
        pose = scene.sample_pose(rng)
        assert pose.shape == (4, 4) and pose.dtype == torch.float32
        position, _, pitch = geometry.position_yaw_pitch_from_pose(pose)
        assert scene.is_free(position[None])[0]
        assert position[2].item() == pytest.approx(scene.camera_height)
        assert pitch.item() == pytest.approx(0.0, abs=1e-6)
        goal = scene.sample_goal(rng, position, min_distance=2.0)
        assert scene.is_free(goal[None])[0]
        assert np.linalg.norm(goal[:2] - position[:2].numpy()) >= 2.0
        row, col, _ = scene.cell_of(goal[None])
        assert scene.reachable(position)[row[0], col[0]]
    with pytest.raises(ValueError, match="min_distance|reachable"):
        scene.sample_goal(rng, position, min_distance=1000.0)


def test_navigable_cells_are_free(scene: Scene) -> None:
    centers = scene.cell_centers()
    assert scene.is_free(centers[scene.navigable]).all()
    assert not scene.is_free(centers[~scene.navigable]).any()
    x0, y0 = scene.grid_origin
    lo, _ = scene.bounds
    assert (x0, y0) == (float(lo[0]), float(lo[1]))


def test_coverage_grows_when_looking_around(renderer: Renderer, scene: Scene) -> None:
    poses = trajectories.look_around(scene, np.random.default_rng(5), 9)
    out = renderer.render(poses, K, RES, RES)
    first = scene.coverage(out.depth[:1], poses[:1], K)
    everything = scene.coverage(out.depth, poses, K)
    assert first.shape == scene.navigable.shape
    assert first.sum() > 0
    assert everything.sum() > 2 * first.sum()
    assert not (everything & ~scene.navigable).any()
    assert (everything | first).sum() == everything.sum()
    # Range limits it: nothing seen within 1 m of a camera at 1.4 m with a 90 deg view, level.
    assert scene.coverage(out.depth, poses, K, max_range=1.0).sum() == 0


# ---------------------------------------------------------------------- trajectories


def _assert_collision_free(scene: Scene, poses: torch.Tensor, frames: int) -> None:
    assert poses.shape == (frames, 4, 4) and poses.dtype == torch.float32
    positions = poses[:, :3, 3].numpy()
    assert scene.is_free(positions).all()
    _, collided = scene.move(positions[:-1], positions[1:])
    assert not collided.any()
    rot = poses[:, :3, :3]
    assert torch.allclose(rot.transpose(1, 2) @ rot, torch.eye(3).expand(frames, 3, 3), atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_trajectories_are_collision_free(seed: int) -> None:
    scene = make_scene(seed, moving_objects=1)
    for name in ("random_walk", "look_around", "walk_and_return", "orbit"):
        poses = getattr(trajectories, name)(scene, np.random.default_rng(seed), 30)
        _assert_collision_free(scene, poses, 30)


def test_random_walk_moves_and_turns(scene: Scene) -> None:
    poses = trajectories.random_walk(scene, np.random.default_rng(6), 60, step=0.1, turn_deg=10)
    steps = np.linalg.norm(np.diff(poses[:, :3, 3].numpy(), axis=0), axis=1)
    assert steps.max() <= 0.1 + 1e-5
    assert steps.sum() > 1.0


def test_look_around_turns_full_circle_and_returns(scene: Scene) -> None:
    poses = trajectories.look_around(scene, np.random.default_rng(7), 25)
    assert torch.equal(poses[0], poses[-1])
    assert torch.equal(poses[:, :3, 3], poses[:1, :3, 3].expand(25, 3))
    _, yaw, _ = geometry.position_yaw_pitch_from_pose(poses)
    step = torch.remainder(yaw.diff() + math.pi, 2 * math.pi) - math.pi
    assert torch.allclose(step.abs(), torch.full((24,), 2 * math.pi / 24), atol=1e-4)


def test_walk_and_return_revisits_exact_poses_after_turning_away(scene: Scene) -> None:
    frames = 30
    poses = trajectories.walk_and_return(scene, np.random.default_rng(8), frames)
    out = frames // 3
    for k in range(out):
        assert torch.equal(poses[k], poses[frames - 1 - k])
    _, yaw, _ = geometry.position_yaw_pitch_from_pose(poses)
    turned = torch.remainder(yaw - yaw[0] + math.pi, 2 * math.pi) - math.pi
    assert turned.abs().max() >= math.radians(90)
    assert (poses[out - 1, :3, 3] - poses[0, :3, 3]).norm() > 0.5


def test_orbit_looks_at_a_fixed_point(scene: Scene) -> None:
    poses = trajectories.orbit(scene, np.random.default_rng(9), 24)
    origin = poses[:, :3, 3].double()
    forward = poses[:, :3, 2].double()
    # All view rays pass (nearly) through one point: least-squares intersection, small residual.
    eye = torch.eye(3, dtype=torch.float64)
    proj = eye - forward[:, :, None] * forward[:, None, :]
    target = torch.linalg.solve(proj.sum(0), (proj @ origin[..., None]).sum(0))[:, 0]
    residual = (proj @ (target - origin)[..., None])[..., 0].norm(dim=1)
    assert residual.max() < 1e-3
    radius = (origin[:, :2] - target[:2]).norm(dim=1)
    assert torch.allclose(radius, radius[:1].expand(24), atol=1e-3)


def test_trajectories_reject_too_few_frames(scene: Scene) -> None:
    with pytest.raises(ValueError, match="num_frames"):
        trajectories.walk_and_return(scene, np.random.default_rng(0), 3)
    with pytest.raises(ValueError, match="num_frames"):
        trajectories.look_around(scene, np.random.default_rng(0), 1)
