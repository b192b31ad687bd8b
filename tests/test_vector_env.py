"""The natively batched vector env: make_vec, shapes, autoreset, per-sub-env seeding, batch == singles."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import mirage_gym  # noqa: F401  (registers the environments)
from mirage_gym.envs import MirageRoomEnv, MirageRoomNavVectorEnv, MirageRoomVectorEnv
from tiny_generator import CHUNK, RESOLUTION, save_tiny_generator, tiny_env_kwargs


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_generator(tmp_path_factory.mktemp("tiny_generator"))


def make(tiny_folder, num_envs=3, **overrides):
    return gym.make_vec("MirageRoom-v0", num_envs=num_envs, vectorization_mode="vector_entry_point",
                        **tiny_env_kwargs(tiny_folder, **overrides))


def test_make_vec_gives_the_batched_env(tiny_folder):
    envs = make(tiny_folder, num_envs=8)
    assert isinstance(envs, MirageRoomVectorEnv) and envs.num_envs == 8
    assert envs.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert envs.max_episode_steps == 200  # from the registration
    assert envs.generator.batch_size == 0
    obs, info = envs.reset(seed=0)
    assert envs.generator.batch_size == 8, "one generator holds all sub-envs"
    assert obs in envs.observation_space
    assert obs["rgb"].shape == (8, CHUNK, RESOLUTION, RESOLUTION, 3)
    obs, rewards, terminated, truncated, info = envs.step(envs.action_space.sample())
    assert obs in envs.observation_space and rewards.shape == (8,) and terminated.shape == truncated.shape == (8,)
    assert info["frames_generated"].tolist() == [CHUNK] * 8 and info["_coverage"].all()


def test_each_sub_env_equals_a_single_env_with_its_seed(tiny_folder):
    envs = make(tiny_folder, num_envs=3)
    actions = np.random.default_rng(1).uniform(-1, 1, (2, 3, 4)).astype(np.float32)
    obs, _ = envs.reset(seed=10)
    batched = [obs]
    rewards = []
    for a in actions:
        out = envs.step(a)
        batched.append(out[0])
        rewards.append(out[1])
    for i in range(3):
        single = MirageRoomEnv(**tiny_env_kwargs(tiny_folder))
        obs, _ = single.reset(seed=10 + i)
        np.testing.assert_array_equal(obs["rgb"], batched[0]["rgb"][i])
        for k, a in enumerate(actions):
            obs, reward, *_ = single.step(a[i])
            np.testing.assert_allclose(obs["cam_to_world"], batched[k + 1]["cam_to_world"][i], atol=1e-6)
            assert np.abs(obs["rgb"].astype(int) - batched[k + 1]["rgb"][i].astype(int)).max() <= 1
            np.testing.assert_allclose(obs["depth"], batched[k + 1]["depth"][i], rtol=1e-4, atol=1e-4)
            assert reward == pytest.approx(rewards[k][i])


def test_per_sub_env_seeds_and_rooms(tiny_folder):
    envs = make(tiny_folder, num_envs=4, room_seeds=list(range(8)))
    first, _ = envs.reset(seed=3)
    rooms = [envs.simulator.subenv(i).world.seed for i in range(4)]
    assert len({tuple(p.ravel()) for p in first["cam_to_world"][:, 0]}) == 4, "sub-envs start at different poses"
    again, _ = envs.reset(seed=3)
    assert [envs.simulator.subenv(i).world.seed for i in range(4)] == rooms
    np.testing.assert_array_equal(first["rgb"], again["rgb"])
    listed, _ = envs.reset(seed=[3, 4, 5, 6])
    np.testing.assert_array_equal(listed["rgb"], first["rgb"])
    with pytest.raises(ValueError, match="4 seeds"):
        envs.reset(seed=[1, 2])


def test_same_step_autoreset(tiny_folder):
    envs = make(tiny_folder, num_envs=2, max_episode_steps=2)
    envs.reset(seed=0)
    action = np.zeros((2, 4), np.float32)
    _, _, _, truncated, info = envs.step(action)
    assert not truncated.any() and "final_obs" not in info
    obs, _, terminated, truncated, info = envs.step(action)
    assert truncated.all() and not terminated.any()
    assert info["_final_obs"].all() and info["final_obs"][0]["rgb"].shape == (CHUNK, RESOLUTION, RESOLUTION, 3)
    assert info["final_info"]["frames_generated"].tolist() == [2 * CHUNK] * 2
    # The returned observation starts the next episode (the start view repeated over the chunk).
    assert info["frames_generated"].tolist() == [0, 0]
    assert all(np.array_equal(obs["rgb"][i, 0], obs["rgb"][i, -1]) for i in range(2))
    _, _, _, truncated, info = envs.step(action)
    assert not truncated.any() and info["frames_generated"].tolist() == [CHUNK] * 2


def test_partial_reset_leaves_other_sub_envs(tiny_folder):
    envs = make(tiny_folder, num_envs=2)
    envs.reset(seed=0)
    envs.step(np.zeros((2, 4), np.float32))
    pose_0 = envs.simulator.subenv(0).pose.clone()
    bytes_before = envs.generator.memory_bytes()
    image = np.full((RESOLUTION, RESOLUTION, 3), 90, np.uint8)
    obs, info = envs.reset(options={"reset_mask": np.array([False, True]), "start_image": image})
    assert (obs["rgb"][1] == 90).all() and info["_frames_generated"].tolist() == [False, True]
    assert envs.simulator.subenv(0).pose.equal(pose_0) and envs.generator.memory_bytes()[0] == bytes_before[0]


def test_bad_actions_and_options_leave_it_usable(tiny_folder):
    envs = make(tiny_folder, num_envs=2)
    envs.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        envs.step(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        envs.step(np.full((2, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="unknown reset option"):
        envs.reset(options={"room": 3})
    with pytest.raises(ValueError, match="one seed per reset sub-env"):
        envs.reset(options={"room_seed": [1, 2, 3]})
    obs, *_ = envs.step(np.zeros((2, 4), np.float32))
    assert obs["rgb"].shape[0] == 2


def test_nav_vector_env_in_oracle_mode():
    envs = gym.make_vec("MirageRoomNav-v0", num_envs=2, vectorization_mode="vector_entry_point",
                        generator="oracle", resolution=RESOLUTION, chunk=CHUNK, room_seeds=[0, 1])
    assert isinstance(envs, MirageRoomNavVectorEnv) and envs.max_episode_steps == 100
    obs, info = envs.reset(seed=0)
    assert obs["goal"].shape == (2, 3) and info["success"].tolist() == [False, False]
    assert (info["distance_to_goal"] >= 1.0 - 0.5).all()
    obs, rewards, *_ = envs.step(np.zeros((2, 4), np.float32))
    np.testing.assert_allclose(rewards, 0.0, atol=1e-6)  # standing still: no progress, no penalty


def test_single_and_vector_envs_take_the_same_keywords():
    import inspect

    from mirage_gym.envs.vector import PAIRS

    for single, vector in PAIRS:
        a = {k: (p.default, p.annotation) for k, p in inspect.signature(single).parameters.items()}
        b = {k: (p.default, p.annotation) for k, p in inspect.signature(vector).parameters.items()}
        assert set(b) - set(a) == {"num_envs", "max_episode_steps"}
        assert all(b[k] == a[k] for k in a), f"{vector.__name__} and {single.__name__} disagree"
        assert not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(vector).parameters.values())


def test_vector_reward_terms_and_bounds(tiny_folder):
    envs = make(tiny_folder, num_envs=2)
    _, info = envs.reset(seed=0)
    assert info["reward_explored"].tolist() == [0.0, 0.0]
    _, rewards, _, _, info = envs.step(np.array([[1, 0, 0, 0], [0, 0, 1, 0]], np.float32))
    np.testing.assert_allclose(rewards, info["reward_explored"] + info["reward_collision"], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"max_translation must be in \(0, 2\]"):
        make(tiny_folder, max_translation=1e5)
    with pytest.raises(ValueError, match=r"max_episode_steps must be in \[1, 1000000\]"):
        make(tiny_folder, max_episode_steps=0)
    with pytest.raises(ValueError, match=r"num_envs must be in \[1, 1024\]"):
        make(tiny_folder, num_envs=0)
