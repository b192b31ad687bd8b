"""`mirage-gym bench render`: throughput of the ground-truth renderer (frames/s).

Renders batches of poses from a random walk through a procedural house and prints
frames per second (wall clock and process CPU time; the CPU figure is robust to
other processes sharing the machine), per-frame milliseconds and the scene size.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from mirage_gym import geometry
from mirage_gym.world import Renderer, make_scene, trajectories


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resolution", type=int, default=128, help="square frame size in pixels (default 128)")
    parser.add_argument("--frames", type=int, default=256, help="frames to time (default 256)")
    parser.add_argument("--batch", type=int, default=16, help="poses per render call (default 16)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
    parser.add_argument("--rooms", type=int, default=None, help="rooms in the house (default: drawn from the seed)")
    parser.add_argument("--moving", type=int, default=2, help="moving objects (default 2)")
    parser.add_argument("--fov", type=float, default=90.0, help="horizontal field of view in degrees (default 90)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best is reported (default 3)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")


def run(args: argparse.Namespace) -> int:
    for name in ("resolution", "frames", "batch", "threads", "repeats"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    scene = make_scene(args.seed, num_rooms=args.rooms, moving_objects=args.moving)
    renderer = Renderer(scene, device=args.device)
    rng = np.random.default_rng(args.seed)
    poses = trajectories.random_walk(scene, rng, args.frames).to(args.device)
    k = geometry.intrinsics_from_fov(args.fov, args.resolution, args.resolution, device=args.device)
    times = torch.arange(args.frames, dtype=torch.float32, device=args.device) / 30.0
    batches = [(poses[i : i + args.batch], times[i : i + args.batch]) for i in range(0, args.frames, args.batch)]

    first_pose, first_time = batches[0]
    renderer.render(first_pose, k, args.resolution, args.resolution, time=first_time)  # warm-up
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(args.repeats):
        _sync(args.device)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for pose, t in batches:
            renderer.render(pose, k, args.resolution, args.resolution, time=t)
        _sync(args.device)
        best_wall = min(best_wall, time.perf_counter() - wall0)
        best_cpu = min(best_cpu, time.process_time() - cpu0)
    result = {
        "resolution": args.resolution,
        "frames": args.frames,
        "batch": args.batch,
        "threads": args.threads,
        "device": args.device,
        "quads": len(scene.quads),
        "rooms": scene.num_rooms,
        "frames_per_s": args.frames / best_wall,
        "ms_per_frame": 1000.0 * best_wall / args.frames,
        # CPU seconds of this process: wall time if it had the cores to itself (threads x cores at most).
        "frames_per_cpu_s": args.frames / best_cpu,
    }
    print(
        f"render {args.resolution}x{args.resolution}, batch {args.batch}, {args.threads} threads, {args.device}, "
        f"{scene.num_rooms} rooms / {len(scene.quads)} quads: {result['frames_per_s']:.1f} frames/s "
        f"({result['ms_per_frame']:.2f} ms/frame); {result['frames_per_cpu_s']:.1f} frames per CPU-second"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
