"""`mirage-gym bench filter`: the dynamic-token filter against ground-truth moving objects.

Renders random walks through procedural houses with moving boxes, runs
:class:`~mirage_gym.memory.TokenFilter` on the ground-truth frames and depth (optionally
with relative Gaussian noise on the depth, to mimic a generator's depth head) chunk by
chunk, and scores its dynamic-token decision against ``RenderOutput.dynamic`` pooled to
the latent grid. A token is ground-truth dynamic when any of its pixels shows a moving
object (such a token must not enter the cache); empty tokens are left out of the scores.
Objects move continuously, so the frame rate sets how far they travel in a chunk; the
bench sweeps it.

``--cross-chunk`` adds the memory along the walk: every chunk is filtered, then (with the
cross-chunk check) the cache drops the tokens the chunk sees through
(:meth:`TokenFilter.carve`), then the kept tokens are written to a :class:`LatentCache`
whose latents carry the ground truth (each token's moving-object pixel fraction), the way
:class:`~mirage_gym.model.MirageGenerator` does with ``rewrite_cached`` off. A token is
dynamic here when at least half of its pixels show a moving object, as in ``mirage-gym eval``.
Reported, with the check off and on: dynamic tokens written / visible (the eval's figure),
dynamic tokens in the memory after each chunk (summed over chunks) and at the end, the
dynamic share of the memory, and for the check the removal precision (dropped tokens that
were dynamic) and the static tokens wrongly dropped, per static token written.
``--scale-noise`` multiplies each frame's depth by ``1 + N(0, s)``: the correlated, whole-frame
error a generator's depth head makes, which iid pixel noise does not mimic.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from mirage_gym.geometry import intrinsics_from_fov, scale_intrinsics
from mirage_gym.memory import LatentCache, TokenFilter, pool_depth, pool_fraction


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
    parser.add_argument("--cross-chunk", action="store_true",
                        help="also run the memory along each walk, without and with the cross-chunk check")
    parser.add_argument("--scale-noise", type=str, default="0",
                        help="comma-separated per-frame depth scale noise std (with --cross-chunk)")
    parser.add_argument("--tolerance", type=float, default=0.2, help="cross-chunk check: depth tolerance")
    parser.add_argument("--radius", type=int, default=1, help="cross-chunk check: neighbourhood radius, pixels")
    parser.add_argument("--votes", type=int, default=2, help="cross-chunk check: frames that must see through")
    parser.add_argument("--no-align", action="store_true", help="cross-chunk check: no per-frame depth scale alignment")


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


def _memory_walk(
    filt: TokenFilter, rgb: torch.Tensor, depth: torch.Tensor, poses: torch.Tensor, dynamic: torch.Tensor,
    k: torch.Tensor, latent: tuple[int, int], cross_chunk: bool,
) -> dict[str, int]:
    """One walk through the memory, chunk by chunk (``[C, T, ...]`` tensors); ground-truth counts."""
    chunks, t, size = depth.shape[0], depth.shape[1], depth.shape[-1]
    k_latent = scale_intrinsics(k, latent[1] / size)
    cache = LatentCache(2, voxel_size=0.05)
    counts = dict(visible=0, written=0, in_memory=0, static_in_memory=0, end=0, end_static=0,
                  dropped=0, dropped_dynamic=0, static_written=0)
    for c in range(chunks):
        keep = filt(rgb[c : c + 1], depth[c : c + 1], poses[c : c + 1], k, latent)[0]
        fraction = pool_fraction(dynamic[c], latent)
        token_depth = pool_depth(depth[c], latent, filt.min_depth, filt.max_depth)
        if c:  # the generator does not write back what it read from the cache
            _, cached = cache.read(poses[c], k_latent, *latent)
            freed = torch.zeros_like(cached)
            if cross_chunk:
                before = cache.points()[1][:, 0]
                freed = filt.carve(cache, depth[c : c + 1], poses[c : c + 1], k, latent)[0]
                after = cache.points()[1][:, 0]
                counts["dropped"] += before.numel() - after.numel()
                counts["dropped_dynamic"] += int((before >= 0.5).sum() - (after >= 0.5).sum())
            keep = keep & ~(cached & ~freed)
        written = keep & torch.isfinite(token_depth)
        counts["visible"] += int((fraction >= 0.5).sum())
        counts["written"] += int((written & (fraction >= 0.5)).sum())
        counts["static_written"] += int((written & (fraction < 0.5)).sum())
        cache.write(torch.stack([fraction, torch.ones_like(fraction)], 1), token_depth, poses[c], k_latent, keep=keep)
        label = cache.points()[1][:, 0]
        counts["in_memory"] += int((label >= 0.5).sum())
        counts["static_in_memory"] += int((label < 0.5).sum())
    counts["end"], counts["end_static"] = int((label >= 0.5).sum()), int((label < 0.5).sum())
    return counts


def run_cross_chunk(args: argparse.Namespace) -> list[dict]:
    fps_values = [float(v) for v in args.fps.split(",")]
    noise_values = [float(v) for v in args.depth_noise.split(",")]
    scale_values = [float(v) for v in args.scale_noise.split(",")]
    k = intrinsics_from_fov(args.fov, args.size, args.size)
    latent = (args.latent, args.latent)
    checks = {
        "in-chunk": TokenFilter(stride=args.stride),
        "+cross-chunk": TokenFilter(stride=args.stride, cross_chunk=True, cross_chunk_tolerance=args.tolerance,
                                    cross_chunk_radius=args.radius, cross_chunk_votes=args.votes,
                                    cross_chunk_align=not args.no_align),
    }
    chunks = args.frames // args.chunk
    shape = (chunks, args.chunk, args.size, args.size)
    print(f"\nmemory along the walks (tolerance {args.tolerance}, radius {args.radius} px, votes {args.votes}, "
          f"scale alignment {'off' if args.no_align else 'on'}); "
          "dynamic: >= 50% of a token's pixels on a moving object")
    print(f"{'fps':>5} {'noise':>6} {'scale':>6} {'check':>12} {'written/visible':>15} {'in memory':>9} "
          f"{'dyn share':>9} {'at end':>6} {'dropped':>7} {'precision':>9} {'static dropped':>14}")
    results = []
    for fps in fps_values:
        renders = _render_walks(args, k, fps)
        for noise in noise_values:
            for scale in scale_values:
                totals = {name: {} for name in checks}
                gen = torch.Generator().manual_seed(0)
                for poses, out in renders:
                    depth = out.depth.view(shape)
                    if noise > 0:
                        depth = depth * (1.0 + noise * torch.randn(depth.shape, generator=gen))
                    if scale > 0:
                        depth = depth * (1.0 + scale * torch.randn(*shape[:2], 1, 1, generator=gen))
                    for name, filt in checks.items():
                        counts = _memory_walk(filt, out.rgb.view(*shape, 3), depth, poses.view(*shape[:2], 4, 4),
                                              out.dynamic.view(shape), k, latent, name != "in-chunk")
                        for key, value in counts.items():
                            totals[name][key] = totals[name].get(key, 0) + value
                for name, c in totals.items():
                    row = dict(c, check=name, fps=fps, depth_noise=noise, scale_noise=scale)
                    row["dynamic_share"] = c["in_memory"] / max(c["in_memory"] + c["static_in_memory"], 1)
                    row["drop_precision"] = c["dropped_dynamic"] / c["dropped"] if c["dropped"] else float("nan")
                    row["static_dropped_rate"] = (c["dropped"] - c["dropped_dynamic"]) / max(c["static_written"], 1)
                    results.append(row)
                    print(f"{fps:5.1f} {noise:6.3f} {scale:6.3f} {name:>12} {c['written']:>7d}/{c['visible']:<7d} "
                          f"{c['in_memory']:9d} {row['dynamic_share']:9.4f} {c['end']:6d} {c['dropped']:7d} "
                          f"{row['drop_precision']:9.3f} {row['static_dropped_rate']:14.4f}")
    print("in memory: dynamic tokens in the cache after each chunk, summed over chunks; dyn share: their share of "
          "the cache; at end: dynamic tokens left after the walk; precision: dropped tokens that were dynamic; "
          "static dropped: static tokens dropped per static token written")
    return results


def _render_walks(args: argparse.Namespace, k: torch.Tensor, fps: float) -> list:
    """``(poses, render)`` of a random walk through each of ``args.scenes`` houses at ``fps`` frames a second."""
    from mirage_gym.world import Renderer, make_scene, trajectories

    renders = []
    for seed in range(args.scenes):
        scene = make_scene(seed, moving_objects=args.moving)
        poses = trajectories.random_walk(scene, np.random.default_rng(seed), args.frames)
        renders.append((poses, Renderer(scene).render(poses, k, args.size, args.size,
                                                      time=torch.arange(args.frames) / fps)))
    return renders


def run(args: argparse.Namespace) -> int:
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
        renders = _render_walks(args, k, fps)
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
    memory = run_cross_chunk(args) if args.cross_chunk else []
    if args.json:
        config = {key: value for key, value in vars(args).items() if not key.startswith("_")}
        with open(args.json, "w") as f:
            json.dump({"config": config, "results": results, "memory": memory}, f, indent=2)
        print(f"wrote {args.json}")
    return 0
