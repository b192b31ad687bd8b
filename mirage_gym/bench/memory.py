"""`mirage-gym bench memory`: LatentCache against the pixel-space PointCloudMemory.

One camera trajectory (a random walk through a procedural house) is rendered once,
untimed. Then both memories run the generation loop side by side, chunk by chunk:
read the chunk's poses, then write the chunk. The latent cache gets a ``C x h x w``
latent grid per frame (random, fixed-size: the cache never looks inside a latent) with
the rendered depth pooled to the latent grid; the point cloud gets the full-resolution
RGB and depth, as Gen3C/VMem/Spatia do.

Reads are pure, so only the ``--repeats`` chunks ending at each checkpoint are timed
(read + write, the median is reported); every chunk is written, so the memory held at a
checkpoint is exactly that of the full loop. Both memories are timed in the same run on
the same inputs.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np
import torch

from mirage_gym.geometry import intrinsics_from_fov, scale_intrinsics
from mirage_gym.memory import LatentCache, PointCloudMemory, pool_depth

_MIB = 1024.0**2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=1000, help="frames in the trajectory")
    parser.add_argument("--checkpoints", type=str, default="10,100,1000", help="comma-separated frame counts to report")
    parser.add_argument("--chunk", type=int, default=4, help="frames per chunk")
    parser.add_argument("--size", type=int, default=128, help="frame height and width (point cloud)")
    parser.add_argument("--latent", type=int, default=16, help="latent grid height and width (latent cache)")
    parser.add_argument("--channels", type=int, default=16, help="latent channels")
    parser.add_argument("--voxel-size", type=float, default=0.05, help="latent cache voxel size, metres")
    parser.add_argument("--capacity", type=int, default=200_000, help="latent cache capacity (tokens per scene)")
    parser.add_argument("--fov", type=float, default=90.0, help="horizontal field of view, degrees")
    parser.add_argument("--repeats", type=int, default=3, help="timed chunks ending at each checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="house and trajectory seed")
    parser.add_argument("--json", type=str, default=None, help="write the figures to this JSON file")


def _render(frames: int, size: int, fov: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from mirage_gym.world import Renderer, make_scene, trajectories

    scene = make_scene(seed)
    poses = trajectories.random_walk(scene, np.random.default_rng(seed), frames)
    k = intrinsics_from_fov(fov, size, size)
    renderer = Renderer(scene)
    rgb, depth = [], []
    for start in range(0, frames, 64):
        out = renderer.render(poses[start : start + 64], k, size, size)
        rgb.append(out.rgb)
        depth.append(out.depth)
    return poses, k, torch.cat(rgb), torch.cat(depth)


def run(args: argparse.Namespace) -> int:
    checkpoints = sorted({int(v) for v in args.checkpoints.split(",") if int(v) <= args.frames})
    if not checkpoints or args.frames % args.chunk or args.size % args.latent:
        raise ValueError("need a checkpoint <= --frames, --frames divisible by --chunk and --size by --latent")
    print(f"rendering {args.frames} frames of {args.size}x{args.size} (untimed) ...", flush=True)
    poses, k, rgb, depth = _render(args.frames, args.size, args.fov, args.seed)
    k_latent = scale_intrinsics(k, args.latent / args.size)
    token_depth = pool_depth(depth, (args.latent, args.latent))
    gen = torch.Generator().manual_seed(args.seed)

    cache = LatentCache(args.channels, voxel_size=args.voxel_size, capacity=args.capacity)
    cloud = PointCloudMemory()
    # Checkpoint k is reached by the chunk holding frame k; its last `repeats` chunks are timed.
    last_chunk = {ckpt: math.ceil(ckpt / args.chunk) - 1 for ckpt in checkpoints}
    timed = {c for last in last_chunk.values() for c in range(max(0, last - args.repeats + 1), last + 1)}
    times: dict[str, dict[int, float]] = {"latent": {}, "cloud": {}}
    coverage: dict[int, float] = {}
    rows = []
    for c in range(args.frames // args.chunk):
        f = slice(c * args.chunk, (c + 1) * args.chunk)
        latents = torch.randn(args.chunk, args.channels, args.latent, args.latent, generator=gen)
        if c in timed:
            start = time.perf_counter()
            _, mask = cache.read(poses[f], k_latent, args.latent, args.latent)
            cache.write(latents, token_depth[f], poses[f], k_latent)
            times["latent"][c] = time.perf_counter() - start
            coverage[c] = float(mask.float().mean())
            start = time.perf_counter()
            cloud.read(poses[f], k, args.size, args.size)
            cloud.write(rgb[f], depth[f], poses[f], k)
            times["cloud"][c] = time.perf_counter() - start
        else:
            cache.write(latents, token_depth[f], poses[f], k_latent)
            cloud.write(rgb[f], depth[f], poses[f], k)
        for ckpt, last in last_chunk.items():
            if c == last:
                window = range(max(0, last - args.repeats + 1), last + 1)
                row = {
                    "frames": ckpt,
                    "frames_written": (c + 1) * args.chunk,
                    "latent_ms_per_chunk": 1000 * statistics.median(times["latent"][i] for i in window),
                    "cloud_ms_per_chunk": 1000 * statistics.median(times["cloud"][i] for i in window),
                    "latent_bytes": cache.nbytes,
                    "cloud_bytes": cloud.nbytes,
                    "latent_tokens": len(cache),
                    "cloud_points": len(cloud),
                    "latent_read_coverage": statistics.mean(coverage[i] for i in window),
                }
                row["time_ratio"] = row["cloud_ms_per_chunk"] / row["latent_ms_per_chunk"]
                row["bytes_ratio"] = row["cloud_bytes"] / max(row["latent_bytes"], 1)
                rows.append(row)
                print(f"  reached {ckpt} frames", flush=True)

    print(
        f"\nchunk of {args.chunk} frames: read the chunk's poses, then write it. LatentCache: {args.channels}x"
        f"{args.latent}x{args.latent} latents, {args.voxel_size} m voxels; PointCloudMemory: {args.size}x{args.size} RGB-D"
    )
    head = (f"{'frames':>6} | {'latent ms/chunk':>15} {'cloud ms/chunk':>14} {'x faster':>8} | "
            f"{'latent MiB':>10} {'cloud MiB':>10} {'x smaller':>9} | {'tokens':>7} {'points':>10} {'read cover':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['frames']:>6} | {r['latent_ms_per_chunk']:>15.2f} {r['cloud_ms_per_chunk']:>14.2f} {r['time_ratio']:>8.1f} | "
            f"{r['latent_bytes'] / _MIB:>10.3f} {r['cloud_bytes'] / _MIB:>10.2f} {r['bytes_ratio']:>9.1f} | "
            f"{r['latent_tokens']:>7d} {r['cloud_points']:>10d} {r['latent_read_coverage']:>10.2f}"
        )
    print(f"(torch threads: {torch.get_num_threads()}; time = median of {args.repeats} chunks ending at the checkpoint; "
          "read cover = fraction of latent cells the cache filled)")
    if args.json:
        config = {key: value for key, value in vars(args).items() if not key.startswith("_")}
        with open(args.json, "w") as f:
            json.dump({"config": config, "torch_threads": torch.get_num_threads(), "results": rows}, f, indent=2)
        print(f"wrote {args.json}")
    return 0
