"""Turn away and come back: with the latent cache the room is still there; without memory it is not.

The camera turns left by --turn degrees, then back to where it started, in each memory mode
(same room, seed and noise). The video shows, per mode, the frames side by side with the ground
truth; the script prints how far the frame on return is from the frame before turning away
(mean absolute difference, 0-255), which the memory should keep small.

    .venv/bin/python examples/revisit_demo.py --out revisit.mp4
"""

from __future__ import annotations

import argparse

import numpy as np

from mirage_gym.envs import MirageRoomEnv
from mirage_gym.video import write_video


def rollout(memory: str, args) -> tuple[list[np.ndarray], float]:
    env = MirageRoomEnv(generator=args.generator, memory=memory, resolution=args.resolution, chunk=args.chunk,
                        render_mode="rgb_array", render_layout="grid", max_rotation=args.step_degrees)
    obs, _ = env.reset(seed=args.seed)
    before = obs["rgb"][-1].astype(np.float32)
    frames = [env.render()]
    steps = max(1, round(args.turn / args.step_degrees))
    for direction in (1.0, -1.0):  # away, then back
        for _ in range(steps):
            obs, *_ = env.step(np.array([0.0, 0.0, direction, 0.0], np.float32))
            frames.append(env.render())
    error = float(np.abs(obs["rgb"][-1].astype(np.float32) - before).mean())
    return frames, error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", default="default", help="'default' or a model folder")
    parser.add_argument("--memories", nargs="+", default=["latent", "none"], choices=["latent", "pixel", "none"])
    parser.add_argument("--turn", type=float, default=180.0, help="degrees to turn away")
    parser.add_argument("--step-degrees", type=float, default=15.0)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="revisit.mp4")
    args = parser.parse_args()

    videos = []
    for memory in args.memories:
        frames, error = rollout(memory, args)
        videos.append(np.stack(frames))
        print(f"memory={memory:<6}: mean |frame on return - frame before| = {error:.1f} / 255")
    # Stack the modes vertically: one row per memory mode.
    width = max(v.shape[2] for v in videos)
    rows = [np.pad(v, ((0, 0), (0, 2), (0, width - v.shape[2]), (0, 0))) for v in videos]
    print(f"-> {write_video(args.out, np.concatenate(rows, axis=1), fps=4)}")


if __name__ == "__main__":
    main()
