"""SB3 image observations, the SB3 VecEnv adapter, and a few hundred PPO steps on the tiny generator."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import VecCheckNan, VecMonitor

import mirage_gym  # noqa: F401  (registers the environments)
from mirage_gym.envs import MirageRoomEnv
from mirage_gym.sb3 import MirageVecEnv
from mirage_gym.geometry import backproject, project
from mirage_gym.wrappers import ImageObservation, ResizeFrames, SB3ObservationWrapper, resize_frames
from tiny_generator import CHUNK, RESOLUTION, save_tiny_generator, tiny_env_kwargs

PPO_RESOLUTION = 48  # SB3's NatureCNN needs at least 36x36 images


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_generator(tmp_path_factory.mktemp("tiny_generator"))


def test_image_observation_stacks_frames_and_quantises_depth(tiny_folder):
    env = MirageRoomEnv(**tiny_env_kwargs(tiny_folder))
    transform = ImageObservation(env.observation_space, frames=2, depth=True, depth_range=4.0)
    space = transform.observation_space["image"]
    assert space.shape == (RESOLUTION, RESOLUTION, 8) and space.dtype == np.uint8
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(np.array([0.5, 0, 0.5, 0], np.float32))
    image = transform(obs)["image"]
    assert image in space
    np.testing.assert_array_equal(image[..., 0:3], obs["rgb"][0])
    np.testing.assert_array_equal(image[..., 4:7], obs["rgb"][1])
    expected = np.rint(np.clip(obs["depth"][1, ..., 0] / 4.0 * 255, 0, 255))
    np.testing.assert_array_equal(image[..., 7], expected.astype(np.uint8))
    # Batched observations keep their leading dimension.
    batch = {key: np.stack([value, value]) for key, value in obs.items()}
    assert transform(batch)["image"].shape == (2, RESOLUTION, RESOLUTION, 8)
    with pytest.raises(ValueError, match="frames must be in 1..2"):
        ImageObservation(env.observation_space, frames=3)


def test_wrapped_single_env_passes_sb3_checker(tiny_folder):
    env = SB3ObservationWrapper(gym.make("MirageRoomNav-v0", **tiny_env_kwargs(tiny_folder)))
    assert set(env.observation_space.spaces) == {"image", "goal"}
    sb3_check_env(env, warn=True, skip_render_check=True)


def test_vec_env_adapter_terminal_observations(tiny_folder):
    vector = gym.make_vec("MirageRoom-v0", num_envs=2, vectorization_mode="vector_entry_point",
                          **tiny_env_kwargs(tiny_folder, max_episode_steps=2))
    venv = MirageVecEnv(vector)
    venv.seed(7)
    obs = venv.reset()
    assert obs["image"].shape == (2, RESOLUTION, RESOLUTION, 4) and venv.reset_infos[0]["frames_generated"] == 0
    actions = np.zeros((2, 4), np.float32)
    venv.step(actions)
    obs, rewards, dones, infos = venv.step(actions)
    assert dones.all() and rewards.dtype == np.float32
    assert all(info["TimeLimit.truncated"] for info in infos)
    assert [info["frames_generated"] for info in infos] == [2 * CHUNK] * 2, "the info of the episode's last step"
    assert infos[0]["terminal_observation"]["image"].shape == (RESOLUTION, RESOLUTION, 4)
    assert venv.get_attr("max_episode_steps") == [2, 2]
    with pytest.raises(ValueError, match="SAME_STEP"):
        MirageVecEnv(gym.make_vec("MirageRoom-v0", num_envs=2, vectorization_mode="sync",
                                  **tiny_env_kwargs(tiny_folder)))


def test_ppo_runs_on_the_batched_env(tiny_folder):
    vector = gym.make_vec("MirageRoom-v0", num_envs=2, vectorization_mode="vector_entry_point",
                          **tiny_env_kwargs(tiny_folder, resolution=PPO_RESOLUTION, chunk=1, max_episode_steps=50))
    venv = VecCheckNan(VecMonitor(MirageVecEnv(vector)), raise_exception=True)
    model = PPO("MultiInputPolicy", venv, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu",
                policy_kwargs={"net_arch": [32]})
    model.learn(total_timesteps=256)
    assert model.num_timesteps == 256
    assert len(model.ep_info_buffer) >= 2, "VecMonitor saw the truncated episodes"
    action, _ = model.predict(venv.reset(), deterministic=True)
    assert action.shape == (2, 4)


def test_resize_frames_gives_smaller_frames_of_the_same_camera():

    big = gym.make("MirageRoom-v0", generator="oracle", resolution=64, chunk=2)
    env = ResizeFrames(big, 32)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=3, options={"room_seed": 1_000_001})
    full, _ = big.reset(seed=3, options={"room_seed": 1_000_001})  # the same frames, as the env made them
    assert obs["rgb"].shape == (2, 32, 32, 3) and obs["depth"].shape == (2, 32, 32, 1)
    assert env.observation_space.contains(obs)
    # RGB: the mean of each 2x2 block (area averaging), within rounding.
    blocks = full["rgb"].astype(np.float32).reshape(2, 32, 2, 32, 2, 3).mean(axis=(2, 4))
    assert np.abs(obs["rgb"].astype(np.float32) - blocks).max() <= 1.0
    # Depth: one pixel of each block, never a mix; lifted with the scaled intrinsics it lands where the
    # source pixel's point is.
    candidates = full["depth"][..., 0].reshape(2, 32, 2, 32, 2).transpose(0, 1, 3, 2, 4).reshape(2, 32, 32, 4)
    assert (np.abs(candidates - obs["depth"]).min(axis=-1) == 0).all()
    np.testing.assert_allclose(obs["intrinsics"][:2], full["intrinsics"][:2] / 2)
    # The scaled intrinsics are the small frames' camera: the point each kept pixel shows projects into
    # the small pixel that kept it.
    pose = torch.as_tensor(full["cam_to_world"][-1:])
    points = backproject(torch.as_tensor(full["depth"][-1:, ..., 0]), torch.as_tensor(full["intrinsics"]), pose)
    kept = points[:, 1::2, 1::2].reshape(1, -1, 3)
    uv, _ = project(kept, torch.as_tensor(obs["intrinsics"]), pose)
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    assert (np.floor(uv[0].numpy()) == np.stack([cols.ravel(), rows.ravel()], -1)).all()
    with pytest.raises(ValueError, match="only downsizing"):
        ResizeFrames(big, 128)
    with pytest.raises(ValueError, match="Mirage env"):
        ResizeFrames(gym.make("CartPole-v1"), 32)


def test_image_observation_resizes_frames_of_one_env_and_of_a_batch():
    env = gym.make("MirageRoom-v0", generator="oracle", resolution=64, chunk=2)
    obs, _ = env.reset(seed=3, options={"room_seed": 1_000_001})
    transform = ImageObservation(env.observation_space, frames=2, depth=True, depth_range=4.0, size=32)
    assert transform.observation_space["image"].shape == (32, 32, 8)
    image = transform(obs)["image"]
    small = resize_frames(obs, 32)
    assert image.shape == (32, 32, 8) and transform.observation_space.contains({"image": image})
    assert np.array_equal(image[..., 0:3], small["rgb"][0]) and np.array_equal(image[..., 4:7], small["rgb"][1])
    batch = {key: np.stack([value, value]) for key, value in obs.items()}
    assert np.array_equal(transform(batch)["image"], np.stack([image, image]))
    with pytest.raises(ValueError, match="only downsizing"):
        ImageObservation(env.observation_space, size=128)
