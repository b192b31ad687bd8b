"""``mirage-gym demo``: roll a camera through a room and write a video.

Until the default generator ships, the demo shows the **ground-truth world** (the CPU
renderer that makes the training data and scores the generator): RGB and depth side by
side along a seeded walk through a procedural room.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from mirage_gym.geometry import intrinsics_from_fov
from mirage_gym.video import colorize_depth, side_by_side, write_video
from mirage_gym.world import Renderer, make_scene, trajectories


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo.mp4", help="video file to write (.mp4 or .gif)")
    parser.add_argument("--frames", type=int, default=96, help="frames in the rollout")
    parser.add_argument("--room-seed", type=int, default=1_000_000, help="procedural room seed")
    parser.add_argument("--seed", type=int, default=0, help="seed of the camera path")
    parser.add_argument("--resolution", type=int, default=128, help="frame height and width")
    parser.add_argument("--moving-objects", type=int, default=1, help="moving objects in the room")
    parser.add_argument("--fps", type=int, default=12)


def run(args: argparse.Namespace) -> int:
    if args.frames < 1 or args.resolution < 8:
        raise SystemExit("--frames must be >= 1 and --resolution >= 8")
    scene = make_scene(args.room_seed, moving_objects=args.moving_objects)
    poses = torch.as_tensor(trajectories.random_walk(scene, np.random.default_rng(args.seed), args.frames)).float()
    intrinsics = intrinsics_from_fov(90.0, args.resolution, args.resolution)
    start = time.perf_counter()
    out = Renderer(scene).render(poses, intrinsics, args.resolution, args.resolution, time=torch.arange(args.frames) / args.fps)
    elapsed = time.perf_counter() - start
    video = side_by_side([out.rgb.numpy(), colorize_depth(out.depth.numpy())])
    path = write_video(args.out, video, fps=args.fps)
    print(f"ground-truth world, room seed {args.room_seed}: {args.frames} frames rendered in {elapsed:.2f} s")
    print(f"wrote {path} (left: RGB, right: depth)")
    return 0
