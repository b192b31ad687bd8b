"""``mirage-gym demo``: drive ``MirageRoom-v0`` on the shipped model and write a video.

The camera looks around a full turn and then walks out and back along its heading, so
the video shows the thing the project exists for: a generated room that is still the same
room when the camera comes back. Each video frame is, left to right, the generated RGB,
the generated depth (near bright, far dark) and the ground truth at the same pose.

``--generator oracle`` shows the ground-truth world instead (no model; for comparison).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

from mirage_gym.video import colorize_depth, side_by_side, write_video


def look_around_and_return(turn_steps: int, walk_steps: int) -> list[np.ndarray]:
    """The demo's actions ``[forward, right, yaw, pitch]``: a full turn left, then out and back."""
    turn = [np.array([0.0, 0.0, 1.0, 0.0], np.float32)] * turn_steps
    out = [np.array([1.0, 0.0, 0.0, 0.0], np.float32)] * walk_steps
    half_turn = [np.array([0.0, 0.0, 1.0, 0.0], np.float32)] * (turn_steps // 2)
    return turn + out + half_turn + out


def ground_truth(env: gym.Env, cam_to_world: np.ndarray) -> np.ndarray:
    """Ground-truth RGB ``[T, H, W, 3]`` of the env's room at the given poses."""
    import torch

    sim = env.unwrapped.simulator
    sub = sim.subenv(0)
    poses = torch.as_tensor(cam_to_world, dtype=torch.float32)
    return sub.world.renderer.render(poses, sim.intrinsics, sim.resolution, sim.resolution, time=sub.time).rgb.numpy()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo.mp4", help="video file to write (.mp4 or .gif)")
    parser.add_argument("--generator", default="default", help="'default' (shipped), a model folder, or 'oracle'")
    parser.add_argument("--memory", default="latent", choices=["latent", "pixel", "none"])
    parser.add_argument("--seed", type=int, default=0, help="env seed (room, start pose, generation noise)")
    parser.add_argument("--room-seed", type=int, default=1_000_000, help="procedural room (>= 1e6: never trained on)")
    parser.add_argument("--turn-steps", type=int, default=24, help="steps of the full turn (360 / 15 degrees)")
    parser.add_argument("--walk-steps", type=int, default=6, help="steps out along the heading (0.25 m each)")
    parser.add_argument("--resolution", type=int, default=128, help="frame size (the model's)")
    parser.add_argument("--chunk", type=int, default=4, help="frames per step (the model's)")
    parser.add_argument("--fps", type=int, default=12)
    parser.add_argument("--strip", default=None, help="also write a PNG of five key frames, top to bottom "
                        "(start, half turn, full turn, walked out, back), as in the README")


def key_frames(turn_steps: int, walk_steps: int, chunk: int) -> list[int]:
    """Video frame indices of the start, the half turn, the full turn, the end of the walk out and the return."""
    steps = [0, turn_steps // 2, turn_steps, turn_steps + walk_steps, 2 * walk_steps + turn_steps + turn_steps // 2]
    return [chunk * s for s in steps]  # video frame 0 is the start view, then ``chunk`` frames a step


def run(args: argparse.Namespace) -> int:
    if args.turn_steps < 2 or args.walk_steps < 0:
        raise SystemExit("--turn-steps must be >= 2 and --walk-steps >= 0")
    env = gym.make("MirageRoom-v0", generator=args.generator, memory=args.memory, resolution=args.resolution,
                   chunk=args.chunk, max_rotation=360.0 / args.turn_steps, report_step_time=True)
    obs, _ = env.reset(seed=args.seed, options={"room_seed": args.room_seed})
    frames, step_times = [], []

    def record(obs: dict) -> None:
        truth = ground_truth(env, obs["cam_to_world"])
        frames.extend(side_by_side([obs["rgb"], colorize_depth(obs["depth"]), truth]))

    record({**obs, "rgb": obs["rgb"][:1], "depth": obs["depth"][:1], "cam_to_world": obs["cam_to_world"][:1]})
    start = time.perf_counter()
    for action in look_around_and_return(args.turn_steps, args.walk_steps):
        obs, _, terminated, truncated, info = env.step(action)
        step_times.append(info["step_time"])
        record(obs)
        if terminated or truncated:
            break
    elapsed = time.perf_counter() - start
    env.close()
    path = write_video(Path(args.out), np.stack(frames), fps=args.fps)
    if args.strip:
        import imageio.v3 as iio

        keys = [min(i, len(frames) - 1) for i in key_frames(args.turn_steps, args.walk_steps, args.chunk)]
        iio.imwrite(args.strip, np.concatenate([frames[i] for i in keys], axis=0))
    print(f"MirageRoom-v0, generator {args.generator!r}, memory {args.memory}, room {args.room_seed}: "
          f"{len(step_times)} steps, {len(frames)} frames in {elapsed:.1f} s "
          f"(median step {1000 * float(np.median(step_times)):.0f} ms)")
    print(f"wrote {path} (generated RGB | generated depth | ground truth)")
    return 0
