"""A random agent in MirageRoom-v0, saved as a video: generated frames | depth | ground truth.

    .venv/bin/python examples/random_rollout.py --out random_rollout.mp4
    .venv/bin/python examples/random_rollout.py --generator oracle --steps 20   # the ground-truth renderer
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

import mirage_gym  # noqa: F401  (registers the environments)
from mirage_gym.video import write_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", default="default", help="'default', 'oracle' or a model folder")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="random_rollout.mp4")
    args = parser.parse_args()

    env = gym.make("MirageRoom-v0", generator=args.generator, resolution=args.resolution, chunk=args.chunk,
                   render_mode="rgb_array", render_layout="grid")
    env.action_space.seed(args.seed)
    env.reset(seed=args.seed)
    frames, total = [env.render()], 0.0
    for _ in range(args.steps):
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        frames.append(env.render())
        total += reward
        if terminated or truncated:
            break
    path = write_video(args.out, np.stack(frames), fps=4)
    print(f"{len(frames) - 1} steps, return {total:.2f}, coverage {info['coverage']:.2f}, "
          f"memory {info['memory_bytes'] / 1024:.1f} KiB -> {path}")


if __name__ == "__main__":
    main()
