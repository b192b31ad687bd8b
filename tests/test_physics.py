"""Generated-world physics (``mirage_gym.envs.physics``) on real classes: the oracle generator in
procedural houses, a real ``LatentCache``, constant-depth "pictures" with no house, and the
collision-agreement measurement. Small frames (32-48 px) keep every test to a second or two."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from mirage_gym import geometry
from mirage_gym.envs.oracle import OracleGenerator
from mirage_gym.envs.physics import GeneratedPhysics, check_physics, goal_distance, goal_from_offset
from mirage_gym.eval.collision import (
    CollisionConfig,
    collision_agreement,
    f1_interval,
    markdown_line,
    paired_f1_difference,
    scores,
)
from mirage_gym.memory import LatentCache
from mirage_gym.world import Renderer, make_scene

SIZE = 48
CHUNK = 2
RADIUS = 0.2
K = geometry.intrinsics_from_fov(90.0, SIZE, SIZE)


class Walker:
    """The oracle generator in a house, a camera that the house moves, and a GeneratedPhysics fed by the frames."""

    def __init__(self, room: int, seed: int, *, cache: bool = False, **physics) -> None:
        self.scene = make_scene(room)
        renderer = Renderer(self.scene)
        self.pose = self.scene.sample_pose(np.random.default_rng(seed), RADIUS)
        self.gen = OracleGenerator()
        image = renderer.render(self.pose[None], K, SIZE, SIZE).rgb
        out = self.gen.start(image, self.pose[None], K, renderers=[renderer])
        self.cache = LatentCache(channels=1, voxel_size=0.05) if cache else None
        self.physics = GeneratedPhysics(RADIUS, max_depth=self.gen.max_depth, stride=1, **physics)
        self.physics.reset(self.pose)
        self._observe(out.depth[0], self.pose[None])

    def _observe(self, depth, poses):
        if self.cache is not None:
            self.cache.write(torch.zeros(len(poses), 1, SIZE, SIZE), depth, poses, K)
        return self.physics.observe(depth, poses, K, self.cache)

    @property
    def position(self) -> np.ndarray:
        return self.pose[:3, 3].numpy().astype(np.float64)

    def step(self, forward: float = 0.0, right: float = 0.0, yaw: float = 0.0, look: bool = True,
             driver: str = "house"):
        """One move, asked of both physics; ``driver`` decides where the camera goes. Returns both answers."""
        poses = geometry.integrate_action(self.pose[None], torch.tensor([[forward, right, yaw, 0.0]]), CHUNK,
                                          max_translation=0.25, max_rotation_deg=15.0)
        origin, target = self.position, poses[0, -1, :3, 3].numpy().astype(np.float64)
        house_end, house_blocked = self.scene.move(origin[None], target[None], RADIUS)
        gen_end, gen_blocked = self.physics.move(origin, target)
        frac = torch.arange(1, CHUNK + 1, dtype=torch.float32)[:, None] / CHUNK
        end = torch.from_numpy(house_end[0] if driver == "house" else gen_end).float()
        poses[0, :, :3, 3] = self.pose[:3, 3] + frac * (end - self.pose[:3, 3])
        out = self.gen.step(poses)
        if look:
            self._observe(out.depth[0], poses[0])
        self.pose = poses[0, -1].clone()
        return (house_end[0], bool(house_blocked[0])), (gen_end, gen_blocked)


def heading(pose: torch.Tensor) -> np.ndarray:
    f = pose[:3, 2].numpy().astype(np.float64)
    f[2] = 0.0
    return f / np.linalg.norm(f)


def test_walking_at_a_wall_stops_where_the_house_stops():
    walker = Walker(room=3, seed=0)
    for _ in range(30):
        (house_end, house_blocked), (gen_end, gen_blocked) = walker.step(forward=1.0)
        assert gen_blocked == house_blocked  # free steps agree too
        if house_blocked:
            break
    assert house_blocked and walker.physics.last_block == "obstacle"
    assert np.linalg.norm(gen_end[:2] - house_end[:2]) <= walker.physics.voxel


def test_a_wall_seen_then_turned_away_from_still_blocks_through_the_cache():
    walker = Walker(room=3, seed=0, cache=True)
    for _ in range(3):  # approach: the wall is about a metre ahead, seen
        walker.step(forward=1.0)
    wall_direction = heading(walker.pose)
    for _ in range(12):  # turn 180 degrees, looking: the wall leaves the view for good
        walker.step(yaw=1.0)
    assert np.dot(heading(walker.pose), wall_direction) < math.cos(math.radians(120))
    probe = walker.physics  # only the current chunk shows surfaces now, and the wall is not in it
    forgetful = copy.deepcopy(probe)  # the same physics, about to be told there are no persistent surfaces
    origin = walker.position
    for _ in range(20):  # walk backwards, towards the wall, without looking
        (house_end, house_blocked), (gen_end, gen_blocked) = walker.step(forward=-1.0)
        if house_blocked:
            break
    assert house_blocked and gen_blocked and probe.last_block == "obstacle"
    assert np.linalg.norm(gen_end[:2] - house_end[:2]) <= probe.voxel
    # The block comes from the cache: without its points the walk goes on to the edge of the seen floor.
    forgetful.observe(np.full((1, SIZE, SIZE), 20.0), walker.pose[None], K, cache=np.zeros((0, 3)))
    end, blocked = forgetful.move(origin, origin - 3.0 * heading(walker.pose))
    assert blocked and forgetful.last_block == "unseen"
    assert np.linalg.norm(end[:2] - origin[:2]) > np.linalg.norm(house_end[:2] - origin[:2]) + 0.05


def test_walking_backwards_into_unseen_space_is_no_free_exploit():
    walker = Walker(room=3, seed=0)
    start = walker.position.copy()
    house_free = 0
    for _ in range(10):  # back up "forever", never looking behind
        (_, house_blocked), (_, gen_blocked) = walker.step(forward=-1.0, look=False)
        house_free += not house_blocked
        if house_blocked:
            break
    # The house let the camera go (the space was free) but the generated world never showed it.
    assert house_free >= 2
    assert gen_blocked and walker.physics.last_block == "unseen"
    # physics.move never leaves the start footprint; the house moved the camera, so ask from the start.
    phys = Walker(room=3, seed=0).physics
    end, blocked = phys.move(start, start - 2.0 * heading(walker.pose))
    assert blocked and phys.last_block == "unseen" and np.linalg.norm(end - start) <= RADIUS + phys.free_cell
    area = phys.explored_area()
    for _ in range(5):
        end, _ = phys.move(end.astype(np.float64), end - 0.25 * heading(walker.pose))
    assert np.linalg.norm(end - start) <= RADIUS + phys.free_cell and phys.explored_area() == area
    # Looking ahead while backing up (generated physics moving the body) does not let it creep back either.
    creeper = Walker(room=3, seed=0)
    start = creeper.position.copy()
    for _ in range(10):
        creeper.step(forward=-1.0, driver="generated")
    assert np.linalg.norm(creeper.position - start) <= RADIUS + creeper.physics.free_cell
    # Turning round to look first makes the same walk allowed where the frames show free floor.
    looker = Walker(room=3, seed=0)
    for _ in range(12):
        looker.step(yaw=1.0)
    (_, house_blocked), (_, gen_blocked) = looker.step(forward=1.0)
    assert not house_blocked and not gen_blocked


def constant_wall(distance: float) -> np.ndarray:
    return np.full((1, SIZE, SIZE), distance, np.float32)


def test_a_picture_of_a_close_wall_blocks_without_any_house():
    pose = geometry.pose_from_position_yaw_pitch(torch.tensor([0.0, 0.0, 1.4]), torch.tensor(0.0), torch.tensor(0.0))
    physics = GeneratedPhysics(RADIUS)
    physics.reset(pose)
    wall_x = 0.9
    physics.observe(constant_wall(wall_x), pose[None], K)  # the user's picture: a wall 0.9 m ahead
    position = pose[:3, 3].numpy().astype(np.float64)
    for step in range(5):
        end, blocked = physics.move(position, position + [0.25, 0.0, 0.0])
        position = end.astype(np.float64)
        moved = pose.clone()
        moved[:3, 3] = torch.from_numpy(end)
        physics.observe(constant_wall(wall_x - position[0]), moved[None], K)
        if blocked:
            break
    assert blocked and step <= 3 and physics.last_block == "obstacle"
    assert abs(position[0] - (wall_x - RADIUS)) <= physics.voxel


def test_floor_points_are_floor_and_high_points_pass_over():
    pose = geometry.pose_from_position_yaw_pitch(torch.tensor([0.0, 0.0, 1.4]), torch.tensor(0.0), torch.tensor(0.0))
    physics = GeneratedPhysics(RADIUS)
    physics.reset(pose)
    floor = np.array([[x, y, 0.03] for x in np.arange(0.0, 2.0, 0.02) for y in np.arange(-0.5, 0.5, 0.02)])
    lintel = np.array([[0.8, y, 1.75] for y in np.arange(-0.5, 0.5, 0.02)])  # 0.35 m above the camera
    crate = np.array([[1.6, y, 0.4] for y in np.arange(-0.5, 0.5, 0.02)])  # low clutter
    physics.observe(np.full((1, SIZE, SIZE), 20.0), pose[None], K, cache=np.concatenate([floor, lintel, crate]))
    end, blocked = physics.move(np.array([0.0, 0.0, 1.4]), np.array([1.3, 0.0, 1.4]))
    assert not blocked  # over the floor, under the lintel
    end, blocked = physics.move(np.array([1.3, 0.0, 1.4]), np.array([1.5, 0.0, 1.4]))
    assert blocked and abs(end[0] - (1.6 - RADIUS)) <= physics.voxel  # the crate stops the body


def test_determinism():
    def run():
        walker = Walker(room=5, seed=1)
        out = []
        rng = np.random.default_rng(0)
        for _ in range(6):
            f, r, y = rng.uniform(-1, 1, 3)
            _, (end, blocked) = walker.step(forward=f, right=r, yaw=y)
            out.append((end.tobytes(), blocked, walker.physics.last_block))
        return out, walker.physics.explored_area(), walker.physics.maps()["seen"].tobytes()

    assert run() == run()


def test_explored_area_grows_in_square_metres_as_new_floor_is_shown():
    walker = Walker(room=3, seed=0)
    first = walker.physics.explored_area()
    assert 0.5 < first < 0.5 * 3.0**2 * math.pi / 2  # a 90 degree view of at most 3 m
    new = [walker.physics.explored_area()]
    for _ in range(6):
        walker.step(yaw=1.0)
        new.append(walker.physics.explored_area())
    assert all(b >= a for a, b in zip(new, new[1:])) and new[-1] > first


def test_bad_arguments_are_value_errors():
    for kwargs in ({"radius": -1.0}, {"radius": 0.0}, {"voxel": 0.0}, {"max_range": float("nan")}, {"stride": 0},
                   {"view_heights": 1.5}, {"floor_band": -0.1}, {"max_depth": 0.0}, {"radius": True}):
        with pytest.raises(ValueError):
            GeneratedPhysics(**kwargs)
    physics = GeneratedPhysics()
    with pytest.raises(RuntimeError, match="reset"):
        physics.move(np.zeros(3), np.ones(3))
    with pytest.raises(ValueError):
        physics.reset(np.zeros(3))  # the camera on the floor
    with pytest.raises(ValueError):
        physics.reset(np.eye(3))
    pose = geometry.pose_from_position_yaw_pitch(torch.tensor([0.0, 0.0, 1.4]), torch.tensor(0.0), torch.tensor(0.0))
    physics.reset(pose)
    with pytest.raises(ValueError):
        physics.move(np.zeros(3), np.array([np.nan, 0, 1.4]))
    with pytest.raises(ValueError):
        physics.move(np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError):
        physics.observe(np.ones((2, 8, 8)), pose[None], K)  # 2 frames, 1 pose
    with pytest.raises(ValueError):
        physics.observe(np.ones((1, 8, 8)), pose[None], K[:2])
    with pytest.raises(ValueError):
        physics.observe(np.ones((1, 8, 8)), pose[None], K, cache=np.zeros((4, 2)))
    with pytest.raises(ValueError):
        check_physics("house")
    assert check_physics("generated") == "generated" and check_physics("ground_truth") == "ground_truth"
    with pytest.raises(ValueError):
        goal_from_offset(pose, [1.0])


def test_pointnav_goals_are_metric_offsets_from_the_start():
    pose = geometry.pose_from_position_yaw_pitch(torch.tensor([1.0, 2.0, 1.4]), torch.tensor(math.pi / 2),
                                                 torch.tensor(0.3))
    goal = goal_from_offset(pose, [2.0, 1.0])  # 2 m ahead (+y here), 1 m to the left (-x)
    assert np.allclose(goal, [0.0, 4.0, 1.4], atol=1e-5)
    assert goal_distance(pose[:3, 3], goal) == pytest.approx(math.sqrt(5.0))
    assert goal_distance([0.0, 4.0, 1.4], goal) == pytest.approx(0.0, abs=1e-6)


def test_collision_agreement_runs_on_the_oracle_and_scores():
    config = CollisionConfig(episodes=1, steps=4, resolution=32, chunk=2)
    result = collision_agreement(OracleGenerator(), config, name="oracle")
    assert result["steps"] == 4 and sum(result["counts"][c] for c in ("tp", "fp", "fn", "tn")) == 4
    assert result["config"]["first_room"] >= 1_000_000
    assert markdown_line(result).startswith("| oracle | 4 |")
    for key in ("tp", "fp", "fn"):  # the episodes' own counts add up to the run's
        assert sum(e[key] for e in result["episodes"]) == result["counts"][key]
    assert len(result["f1_ci95"]) == 2
    assert scores(9, 1, 0)["precision"] == pytest.approx(0.9) and scores(1, 0, 1)["f1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        CollisionConfig(first_room=5).validate()
    with pytest.raises(ValueError):
        CollisionConfig(physics={"voxel": -1}).validate()


def test_f1_intervals_resample_episodes_and_pair_generators():
    def episodes(*counts):
        return [{"room_seed": 1_000_000 + i, "tp": tp, "fp": fp, "fn": fn} for i, (tp, fp, fn) in enumerate(counts)]

    base = episodes(*[(2, 2, 0)] * 10)  # F1 2/3 on every episode
    assert f1_interval(base) == pytest.approx([2 / 3, 2 / 3])
    better = paired_f1_difference(base, episodes(*[(2, 0, 0)] * 10))
    assert better["difference"] == pytest.approx(1 / 3) and better["ci95"] == pytest.approx([1 / 3, 1 / 3])
    # Better on half the episodes, worse on the other half: no difference, an interval around zero.
    mixed = paired_f1_difference(base, episodes(*[(2, 0, 0), (0, 2, 2)] * 5))
    low, high = mixed["ci95"]
    assert low < 0 < high and mixed["difference"] == pytest.approx(scores(10, 10, 10)["f1"] - 2 / 3)
    # Pooled counts, not a mean of per-episode F1s: one busy episode weighs more than a quiet one.
    pooled = f1_interval(episodes((10, 0, 0), (0, 1, 0)), n_boot=2000)
    assert pooled[0] == 0.0 and pooled[1] == 1.0
    assert f1_interval([]) == [None, None]
    # Against a plain loop over the same resamples: the F1 of each resample's summed counts.
    counts = np.random.default_rng(3).integers(0, 8, (12, 3))
    idx = np.random.default_rng(5).integers(0, 12, (500, 12))
    reference = [scores(*counts[i].sum(axis=0))["f1"] for i in idx]
    assert f1_interval(episodes(*counts.tolist()), n_boot=500, seed=5) == pytest.approx(
        list(np.percentile(reference, [2.5, 97.5])))
    with pytest.raises(ValueError, match="same episodes"):
        paired_f1_difference(base, episodes(*[(2, 2, 0)] * 9))


def test_collision_agreement_reads_a_generators_latent_cache():
    from tiny_generator import CHUNK as TINY_CHUNK, RESOLUTION as TINY_RES, build_tiny_generator

    gen = build_tiny_generator()
    config = CollisionConfig(episodes=1, steps=2, resolution=TINY_RES, chunk=TINY_CHUNK)
    result = collision_agreement(gen, config, name="tiny")
    assert result["steps"] == 2 and len(gen.memory_store) > 0


def test_eval_collisions_command(tmp_path, capsys):
    import json

    from mirage_gym.cli import main

    out = tmp_path / "collisions"
    code = main(["eval", "collisions", "--generators", "oracle", "--episodes", "1", "--episode-steps", "2",
                 "--resolution", "32", "--chunk", "2", "--no-progress", "--out", str(out)])
    assert code == 0
    assert "| oracle | 2 |" in capsys.readouterr().out
    data = json.loads((out / "collisions.json").read_text())
    assert data["results"][0]["steps"] == 2 and (out / "collisions.md").is_file()
    # Two generators: the second is paired with the first on the same episodes (the oracle twice: no difference).
    code = main(["eval", "collisions", "--generators", "oracle", "oracle", "--episodes", "2", "--episode-steps", "2",
                 "--resolution", "32", "--chunk", "2", "--no-progress", "--out", str(out)])
    assert code == 0 and "F1 - the first generator's, paired" in capsys.readouterr().out
    first, second = json.loads((out / "collisions.json").read_text())["results"]
    assert "f1_vs_first" not in first and second["f1_vs_first"]["first"] == "oracle"
    assert second["episodes"] == first["episodes"]
    assert second["f1_vs_first"]["difference"] == 0 and second["f1_vs_first"]["ci95"] == [0, 0]
    assert main(["eval", "--generator", "oracle"]) == 2  # the consistency eval still needs --out


def test_cost_keywords_are_checked_and_keyframes_take_the_chunks_end():
    for kwargs, message in (({"keyframes": 0}, "keyframes"), ({"keyframes": 1.5}, "keyframes"),
                            ({"footprint": -0.1}, "footprint"), ({"obstacle_range": 0}, "obstacle_range")):
        with pytest.raises(ValueError, match=message):
            GeneratedPhysics(**kwargs)
    assert GeneratedPhysics(0.2).obstacle_range == pytest.approx(3.0 + 0.2 + 0.05)
    # A wall 1 m ahead only in the chunk's last frame: the default (keyframes=1) takes it in; a first
    # frame showing nothing (max depth) does not matter.
    pose = geometry.pose_from_position_yaw_pitch(torch.tensor([0.0, 0.0, 1.4]), torch.tensor(0.0), torch.tensor(0.0))
    depth = np.stack([np.full((SIZE, SIZE), 20.0), np.full((SIZE, SIZE), 1.0)])
    physics = GeneratedPhysics(RADIUS, max_depth=20.0)
    physics.reset(pose)
    physics.observe(depth, torch.stack([pose, pose]), K)
    end, blocked = physics.move(np.array([0.0, 0.0, 1.4]), np.array([1.0, 0.0, 1.4]))
    assert blocked and physics.last_block == "obstacle" and abs(end[0] - (1.0 - RADIUS)) <= 0.05
