"""A batched rollout: ``num_envs`` sub-envs stepped by one generator call, tiled into one video.

    .venv/bin/python examples/batched_rollout.py --num-envs 8 --out batched.mp4
"""

from __future__ import annotations

import argparse
import math
import time

import gymnasium as gym
import numpy as np

import mirage_gym  # noqa: F401  (registers the environments)
from mirage_gym.video import write_video


def tile(frames: tuple[np.ndarray, ...]) -> np.ndarray:
    """Sub-env frames ``[H, W, 3]`` in a near-square grid."""
    cols = math.ceil(math.sqrt(len(frames)))
    rows = math.ceil(len(frames) / cols)
    h, w, _ = frames[0].shape
    canvas = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, frame in enumerate(frames):
        r, c = divmod(i, cols)
        canvas[r * h : (r + 1) * h, c * w : (c + 1) * w] = frame
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", default="default", help="'default', 'oracle' or a model folder")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="batched.mp4")
    args = parser.parse_args()

    envs = gym.make_vec("MirageRoom-v0", num_envs=args.num_envs, vectorization_mode="vector_entry_point",
                        generator=args.generator, resolution=args.resolution, chunk=args.chunk,
                        render_mode="rgb_array", report_step_time=True)
    envs.action_space.seed(args.seed)
    envs.reset(seed=args.seed)
    video, returns = [tile(envs.render())], np.zeros(args.num_envs)
    started = time.perf_counter()
    for _ in range(args.steps):
        _, rewards, _, _, info = envs.step(envs.action_space.sample())
        returns += rewards
        video.append(tile(envs.render()))
    elapsed = time.perf_counter() - started
    print(f"{args.num_envs} envs x {args.steps} steps: {elapsed / args.steps * 1000:.0f} ms per batched step, "
          f"{elapsed / args.steps / args.num_envs * 1000:.0f} ms per env-step "
          f"(generator {info['step_time'].mean() * 1000:.0f} ms per env-step)")
    print(f"coverage per env: {np.round(info['coverage'], 2).tolist()}, mean return {returns.mean():.2f}")
    print(f"-> {write_video(args.out, np.stack(video), fps=4)}")


if __name__ == "__main__":
    main()
