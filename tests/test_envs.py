"""The single environments on a tiny random generator (32x32, chunk 2) and in oracle mode."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import mirage_gym  # noqa: F401  (registers the environments)
from mirage_gym.envs import MirageRoomEnv, MirageRoomNavEnv, OracleGenerator
from mirage_gym.envs.rendering import human_render_problem
from mirage_gym.model.generator import MirageGenerator
from tiny_generator import CHUNK, RESOLUTION, save_tiny_generator, tiny_env_kwargs


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    return save_tiny_generator(tmp_path_factory.mktemp("tiny_generator"))


@pytest.fixture()
def env(tiny_folder):
    return gym.make("MirageRoom-v0", **tiny_env_kwargs(tiny_folder)).unwrapped


def oracle_kwargs(**overrides):
    return {"generator": "oracle", "resolution": RESOLUTION, "chunk": CHUNK, "room_seeds": [0, 1], **overrides}


def test_spaces_and_shapes(env):
    space = env.observation_space
    assert set(space.spaces) == {"rgb", "depth", "cam_to_world", "intrinsics"}
    assert space["rgb"].shape == (CHUNK, RESOLUTION, RESOLUTION, 3) and space["rgb"].dtype == np.uint8
    assert space["depth"].shape == (CHUNK, RESOLUTION, RESOLUTION, 1) and space["depth"].dtype == np.float32
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    assert isinstance(env.generator, MirageGenerator)
    obs, info = env.reset(seed=0)
    assert obs in space
    assert np.array_equal(obs["rgb"][0], obs["rgb"][-1]), "reset repeats the start view over the chunk"
    assert info["frames_generated"] == 0 and not info["collided"] and info["memory_bytes"] > 0
    obs, reward, terminated, truncated, info = env.step(np.array([1.0, 0.0, 0.3, 0.0], np.float32))
    assert obs in space and isinstance(reward, float) and not terminated and not truncated
    assert info["frames_generated"] == CHUNK and 0.0 < info["coverage"] <= 1.0
    assert "step_time" not in info  # wall-clock time is opt-in (report_step_time), see the env docs
    # The chunk's poses move forward frame by frame (the motion is spread over the chunk).
    steps = np.linalg.norm(np.diff(obs["cam_to_world"][:, :3, 3], axis=0), axis=1)
    assert np.all(steps > 0) or info["collided"]


def test_registration_and_time_limits():
    assert gym.spec("MirageRoom-v0").max_episode_steps == 200
    assert gym.spec("MirageRoomNav-v0").max_episode_steps == 100
    assert gym.spec("MirageRoom-v0").vector_entry_point.endswith("MirageRoomVectorEnv")


@pytest.mark.parametrize("env_id", ["MirageRoom-v0", "MirageRoomNav-v0"])
def test_check_env_with_tiny_generator(tiny_folder, env_id):
    check_env(gym.make(env_id, **tiny_env_kwargs(tiny_folder)).unwrapped)


@pytest.mark.parametrize("env_id", ["MirageRoom-v0", "MirageRoomNav-v0"])
def test_check_env_in_oracle_mode(env_id):
    env = gym.make(env_id, **oracle_kwargs())
    assert isinstance(env.unwrapped.generator, OracleGenerator)
    check_env(env.unwrapped)


def test_same_seed_same_observations(env, tiny_folder):
    other = MirageRoomEnv(**tiny_env_kwargs(tiny_folder))
    actions = np.random.default_rng(0).uniform(-1, 1, (3, 4)).astype(np.float32)
    runs = []
    for e, seed in ((env, 5), (other, 5), (env, 6)):
        obs, _ = e.reset(seed=seed)
        frames = [obs["rgb"]]
        for action in actions:
            frames.append(e.step(action)[0]["rgb"])
        runs.append(np.stack(frames))
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_generated_frames_are_not_the_ground_truth(tiny_folder):
    generated = MirageRoomEnv(**tiny_env_kwargs(tiny_folder))
    oracle = MirageRoomEnv(**oracle_kwargs())
    action = np.array([0.5, 0.0, 0.5, 0.0], np.float32)
    a, _ = generated.reset(seed=3)
    b, _ = oracle.reset(seed=3)
    assert np.array_equal(a["rgb"], b["rgb"]), "both start from the same ground-truth view"
    a, b = generated.step(action)[0], oracle.step(action)[0]
    np.testing.assert_allclose(a["cam_to_world"], b["cam_to_world"], atol=1e-6)
    assert not np.array_equal(a["rgb"], b["rgb"])


def test_bad_input_names_the_problem_and_leaves_the_env_usable(env, tiny_folder):
    good = np.array([0.5, 0.0, 0.2, 0.0], np.float32)
    env.reset(seed=1)
    bad_actions = {
        "shape": np.zeros(3, np.float32),
        "dtype": np.zeros(4, np.int64),
        "NaN": np.array([np.nan, 0, 0, 0], np.float32),
        "out of bounds": np.array([2.0, 0, 0, 0], np.float32),
    }
    for problem, action in bad_actions.items():
        with pytest.raises(ValueError, match=problem):
            env.step(action)
    with pytest.raises(ValueError, match="infinite"):
        env.step(np.array([np.inf, 0, 0, 0], np.float32))
    with pytest.raises(ValueError, match="unknown reset option.*'colour'"):
        env.reset(options={"colour": "red"})
    with pytest.raises(ValueError, match="start_image"):
        env.reset(options={"start_image": np.zeros((16, 16, 3), np.uint8)})
    with pytest.raises(ValueError, match="start_image"):
        env.reset(options={"start_image": np.zeros((RESOLUTION, RESOLUTION, 3), np.float32)})
    with pytest.raises(ValueError, match="start_pose"):
        env.reset(options={"start_pose": np.full((4, 4), np.nan)})
    # The episode was not disturbed: it continues exactly as an undisturbed twin.
    twin = MirageRoomEnv(**tiny_env_kwargs(tiny_folder))
    twin.reset(seed=1)
    assert np.array_equal(env.step(good)[0]["rgb"], twin.step(good)[0]["rgb"])


def test_start_pose_inside_an_obstacle_is_rejected(env):
    env.reset(seed=0, options={"room_seed": 0})
    scene = env.scene
    wall = np.eye(4)
    wall[:3, :3] = env.simulator.subenv(0).pose[:3, :3].numpy()
    wall[:3, 3] = [scene.x_lines[0], scene.y_lines[0] + 1.0, 1.4]  # on the outer wall's centre line
    with pytest.raises(ValueError, match="not free"):
        env.reset(options={"room_seed": 0, "start_pose": wall})


def test_start_from_your_own_image(env):
    image = np.random.default_rng(0).integers(0, 256, (RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    obs, _ = env.reset(seed=0, options={"start_image": image})
    assert all(np.array_equal(frame, image) for frame in obs["rgb"])
    obs, *_ = env.step(np.zeros(4, np.float32))
    assert obs["rgb"].shape == (CHUNK, RESOLUTION, RESOLUTION, 3)


def test_start_pose_and_room_seed_options(env):
    obs, _ = env.reset(seed=0, options={"room_seed": 1})
    pose = obs["cam_to_world"][0]
    again, _ = env.reset(seed=9, options={"room_seed": 1, "start_pose": pose})
    np.testing.assert_allclose(again["cam_to_world"][0], pose, atol=1e-5)
    assert np.array_equal(again["rgb"], obs["rgb"])


def test_collisions_stop_the_camera_at_walls():
    env = MirageRoomEnv(**oracle_kwargs(max_translation=1.0))
    env.reset(seed=0)
    collided = []
    for _ in range(30):
        obs, reward, *_, info = env.step(np.array([1.0, 0.0, 0.0, 0.0], np.float32))
        collided.append(info["collided"])
        positions = obs["cam_to_world"][:, :3, 3]
        assert env.scene.is_free(positions, env.simulator.camera_radius).all()
    assert any(collided), "walking straight for 30 m must hit a wall"
    assert info["collided"] and reward <= 0.0, "a blocked move sees nothing new and pays the penalty"


def test_coverage_reward_counts_new_floor_once():
    env = MirageRoomEnv(**oracle_kwargs(collision_penalty=0.0))
    env.reset(seed=2)
    turn = np.array([0.0, 0.0, 1.0, 0.0], np.float32)
    total, coverages = 0.0, []
    for _ in range(48):  # 360 degrees in place (15 degrees a step), then again
        _, reward, *_, info = env.step(turn)
        total += reward
        coverages.append(info["coverage"])
        assert reward >= 0.0
    covered = env.simulator.subenv(0).task_state.coverage.covered
    start_cells = covered.sum() - total / env.scene.grid_cell**2
    assert start_cells > 0 and np.isclose(total, (covered.sum() - start_cells) * env.scene.grid_cell**2)
    assert coverages[-1] == coverages[23], "the second turn sees nothing new"
    assert np.all(np.diff(coverages) >= 0)


def test_memory_modes_and_discrete_actions(tiny_folder):
    for memory in ("latent", "pixel", "none"):
        env = MirageRoomEnv(action_type="discrete", **tiny_env_kwargs(tiny_folder, memory=memory))
        assert env.action_space == gym.spaces.Discrete(7)
        env.reset(seed=0)
        _, _, _, _, info = env.step(1)
        assert (info["memory_bytes"] == 0) == (memory == "none")
        with pytest.raises(ValueError, match="out of bounds"):
            env.step(7)
        with pytest.raises(ValueError, match="integer"):
            env.step(1.0)


def test_grid_render_and_human_mode(tiny_folder):
    env = MirageRoomEnv(render_mode="rgb_array", render_layout="grid", **tiny_env_kwargs(tiny_folder))
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (RESOLUTION, 3 * RESOLUTION + 4, 3) and frame.dtype == np.uint8
    env.step(np.zeros(4, np.float32))
    assert np.array_equal(env.render()[:, :RESOLUTION], env.simulator.subenv(0).rgb)
    with pytest.raises(ValueError, match="render_layout"):
        MirageRoomEnv(render_layout="mosaic", **oracle_kwargs())
    if human_render_problem():
        with pytest.raises(RuntimeError, match="render_mode='human'"):
            MirageRoomEnv(render_mode="human", **oracle_kwargs())


def test_missing_default_weights_say_what_to_do(tmp_path, monkeypatch):
    import mirage_gym.envs.generators as generators

    # A folder with only some parts (as while the default is being trained) is not a model.
    (tmp_path / "vae").mkdir()
    monkeypatch.setattr(generators, "default_weights_path", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match="default weights are not in this build.*oracle"):
        MirageRoomEnv()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MirageRoomEnv(generator="/no/such/folder")


def test_generator_must_fit_resolution_and_chunk(tiny_folder):
    with pytest.raises(ValueError, match="resolution 40 must be a multiple of 16"):
        MirageRoomEnv(**tiny_env_kwargs(tiny_folder, resolution=40))


def test_pointnav_goal_progress_and_success():
    env = MirageRoomNavEnv(**oracle_kwargs(collision_penalty=0.0))
    for seed in range(20):  # find a start with free floor 0.8 m ahead
        obs, info = env.reset(seed=seed)
        pose = obs["cam_to_world"][0]
        goal = pose[:3, 3] + 0.8 * pose[:3, 2]
        scene = env.scene
        row, col, inside = scene.cell_of(goal[None])
        if inside[0] and scene.free_cells(0.2)[row[0], col[0]] and scene.is_free(goal[None], 0.2)[0]:
            break
    obs, info = env.reset(seed=seed, options={"start_pose": pose, "goal": goal})
    np.testing.assert_allclose(obs["goal"], [0.0, 0.0, 0.8], atol=1e-4)  # straight ahead, camera frame
    distance = info["distance_to_goal"]
    obs, reward, terminated, _, info = env.step(np.array([1.0, 0.0, 0.0, 0.0], np.float32))  # 0.25 m forward
    assert not terminated and np.isclose(reward, distance - info["distance_to_goal"], atol=1e-5)
    assert obs["goal"][2] == pytest.approx(0.55, abs=1e-3)
    obs, reward, terminated, _, info = env.step(np.array([1.0, 0.0, 0.0, 0.0], np.float32))
    assert terminated and info["success"] and reward > 10.0
