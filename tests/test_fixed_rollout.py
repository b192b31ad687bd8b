"""The shipped default model's observations, bit for bit, along one fixed rollout.

``tests/data/default_rollout.npz`` was recorded from the shipped weights before the training
and environment code was restructured; refactors must leave every frame, depth value and pose
unchanged. Depth is a float sum whose rounding depends on torch's thread count, so the rollout
runs on 2 threads, as it was recorded. When new default weights ship, the recording is made
again from them (``python tests/test_fixed_rollout.py --record``), in the same commit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import mirage_gym  # noqa: F401  (registers the environments)

RECORDING = Path(__file__).parent / "data" / "default_rollout.npz"
ACTIONS = [
    np.array([0.0, 0.0, 1.0, 0.0], np.float32),  # turn
    np.array([1.0, 0.0, 0.0, 0.0], np.float32),  # forward
    np.array([0.5, -0.5, -0.5, 0.2], np.float32),  # everything at once
]


def rollout() -> dict[str, np.ndarray]:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        env = gym.make("MirageRoom-v0")
        obs, _ = env.reset(seed=7, options={"room_seed": 1_000_003})
        steps = [obs]
        for action in ACTIONS:
            steps.append(env.step(action)[0])
        env.close()
    finally:
        torch.set_num_threads(threads)
    return {key: np.stack([obs[key] for obs in steps]) for key in ("rgb", "depth", "cam_to_world")}


def test_default_model_rollout_is_unchanged_bit_for_bit():
    expected = np.load(RECORDING)
    got = rollout()
    for key, value in got.items():
        assert value.dtype == expected[key].dtype and value.shape == expected[key].shape, key
        diff = np.abs(value.astype(np.float64) - expected[key].astype(np.float64)).max()
        assert np.array_equal(value, expected[key]), f"{key} changed (max abs difference {diff})"


if __name__ == "__main__" and "--record" in sys.argv:
    np.savez_compressed(RECORDING, **rollout())
    print(f"wrote {RECORDING}")
