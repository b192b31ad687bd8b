"""`mirage-gym bench filter`: the dynamic-token filter against ground-truth moving objects.

Renders random walks through procedural houses with moving boxes, runs
:class:`~mirage_gym.memory.TokenFilter` on the ground-truth frames and depth (optionally
with relative Gaussian noise on the depth, to mimic a generator's depth head) chunk by
chunk, and scores its dynamic-token decision against ``RenderOutput.dynamic`` pooled to
the latent grid. A token is ground-truth dynamic when any of its pixels shows a moving
object (such a token must not enter the cache); empty tokens are left out of the scores.
Objects move continuously, so the frame rate sets how far they travel in a chunk; the
bench sweeps it.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from mirage_gym.geometry import intrinsics_from_fov
from mirage_gym.memory import TokenFilter, pool_fraction


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenes", type=int, default=4, help="procedural houses (seeds 0..N-1)")
    parser.add_argument("--frames", type=int, default=64, help="frames per scene (a multiple of --chunk)")
    parser.add_argument("--chunk", type=int, default=4, help="frames per generation chunk")
    parser.add_argument("--moving", type=int, default=3, help="moving objects per house")
    parser.add_argument("--size", type=int, default=128, help="frame height and width")
    parser.add_argument("--latent", type=int, default=16, help="latent grid height and width")
    parser.add_argument("--fov", type=float, default=90.0, help="horizontal field of view, degrees")
    parser.add_argument("--fps", type=str, default="2,4,10", help="comma-separated frame rates to sweep")
    parser.add_argument("--depth-noise", type=str, default="0,0.02", help="comma-separated relative depth noise std")
    parser.add_argument("--stride", type=int, default=1, help="TokenFilter stride: analyse every N-th pixel")
    parser.add_argument("--json", type=str, default=None, help="write the figures to this JSON file")


def _scores(pred: torch.Tensor, gt: torch.Tensor, gt_majority: torch.Tensor, scored: torch.Tensor) -> dict[str, float]:
    tp = int((pred & gt & scored).sum())
    fp = int((pred & ~gt & scored).sum())
    fn = int((~pred & gt & scored).sum())
    static = int((~gt & scored).sum())
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    majority = int((gt_majority & scored).sum())
    return {
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / max(precision + recall, 1e-12),
        "recall_majority_dynamic": int((pred & gt_majority & scored).sum()) / max(majority, 1),
        "static_dropped": fp / max(static, 1),
        "dynamic_tokens": tp + fn,
        "static_tokens": static,
    }


def run(args: argparse.Namespace) -> int:
    from mirage_gym.world import Renderer, make_scene, trajectories

    if args.frames % args.chunk:
        raise ValueError(f"--frames ({args.frames}) must be a multiple of --chunk ({args.chunk})")
    fps_values = [float(v) for v in args.fps.split(",")]
    noise_values = [float(v) for v in args.depth_noise.split(",")]
    k = intrinsics_from_fov(args.fov, args.size, args.size)
    latent = (args.latent, args.latent)
    filt = TokenFilter(stride=args.stride)
    chunks = args.frames // args.chunk
    shape = (chunks, args.chunk, args.size, args.size)
    results = []
    print(f"TokenFilter on {args.scenes} houses x {args.frames} frames, {args.moving} moving objects, "
          f"{args.size}x{args.size} -> {args.latent}x{args.latent} tokens, chunks of {args.chunk}, stride {args.stride}")
    print(f"{'fps':>5} {'noise':>6} {'precision':>9} {'recall':>7} {'F1':>6} {'recall(>=50%)':>13} "
          f"{'static dropped':>14} {'dyn tokens':>10} {'ms/chunk':>9}")
    for fps in fps_values:
        renders = []
        for seed in range(args.scenes):
            scene = make_scene(seed, moving_objects=args.moving)
            poses = trajectories.random_walk(scene, np.random.default_rng(seed), args.frames)
            out = Renderer(scene).render(poses, k, args.size, args.size, time=torch.arange(args.frames) / fps)
            renders.append((poses, out))
        for noise in noise_values:
            gen = torch.Generator().manual_seed(0)
            preds, gts, majors, scored, elapsed = [], [], [], [], 0.0
            for poses, out in renders:
                depth = out.depth.view(shape)
                if noise > 0:
                    depth = depth * (1.0 + noise * torch.randn(depth.shape, generator=gen))
                start = time.perf_counter()
                res = filt.analyze(out.rgb.view(*shape, 3), depth, poses.view(chunks, args.chunk, 4, 4), k, latent)
                elapsed += time.perf_counter() - start
                fraction = pool_fraction(out.dynamic.view(shape), latent)
                preds.append(res.dynamic)
                gts.append(fraction > 0)
                majors.append(fraction >= 0.5)
                scored.append(~res.empty)
            row = _scores(*(torch.cat(x) for x in (preds, gts, majors, scored)))
            row.update(fps=fps, depth_noise=noise, ms_per_chunk=1000 * elapsed / (chunks * args.scenes))
            results.append(row)
            print(f"{fps:5.1f} {noise:6.3f} {row['precision']:9.3f} {row['recall']:7.3f} {row['f1']:6.3f} "
                  f"{row['recall_majority_dynamic']:13.3f} {row['static_dropped']:14.4f} "
                  f"{row['dynamic_tokens']:10d} {row['ms_per_chunk']:9.1f}")
    print("recall(>=50%): recall on tokens at least half covered by a moving object; "
          "static dropped: static tokens the filter wrongly keeps out of the cache")
    if args.json:
        config = {key: value for key, value in vars(args).items() if not key.startswith("_")}
        with open(args.json, "w") as f:
            json.dump({"config": config, "results": results}, f, indent=2)
        print(f"wrote {args.json}")
    return 0
