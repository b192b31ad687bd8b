"""Run the evaluation trajectories through a generator in every memory mode and score them.

For every trajectory the ground truth (RGB, depth, moving-object masks) is rendered once;
then each mode -- ``latent``, ``pixel``, ``none`` on the same :class:`MirageGenerator`, and
``oracle`` (the ground-truth renderer behind the same interface, an upper bound) -- starts
from the same ground-truth start image and follows the same poses with the same noise seed.
The generated frames and depth are scored with :mod:`mirage_gym.eval.consistency`:

* ``revisit_psnr`` / ``revisit_ssim`` -- same pose, first visit vs return after a turn >= 90 deg, the
  generated return against the *generated* first visit (does the memory bring back what was shown);
* ``revisit_psnr_gt`` / ``revisit_ssim_gt`` -- the same pairs (every kind; pairs back at the start pose
  included), the generated return against the *ground truth* of the first view (is what comes back right);
* ``reproj_l1`` -- consecutive frames warped with the generated depth (3D consistency);
* ``flow_epe`` -- DIS flow vs the flow implied by poses and generated depth (pixels);
* ``rot_err_deg`` / ``trans_dir_err_deg`` / ``pose_recovered`` -- camera control, frame to frame
  (the commanded motion of a step is spread evenly over its frames);
* ``depth_abs_rel`` / ``fidelity_psnr`` -- against the ground truth where the scene was
  observed before (a generator cannot know what it never saw);
* ``fidelity_start_psnr`` / ``depth_start_abs_rel`` -- the same, only where the *start frame* showed the
  surface: the one real observation of a rollout, so this is how well the memory carries what it was given to other
  viewpoints (``fidelity_psnr`` also counts surfaces first shown by generated frames, whose
  ground truth the generator never saw);
* ``detail_cached`` / ``detail_new`` -- :func:`~mirage_gym.metrics.detail_ratio` of the generated
  frames against the ground truth at the same pose (1: as much fine detail, below 1: blur), pooled
  over a rollout's generated frames, on the pixels seen before (where the memory covers the view:
  ``observed``) and on the rest (new areas), static surfaces only. The same pixels in every mode;
* ``dynamic_tokens_written`` / ``dynamic_tokens_visible`` -- tokens at ground-truth moving-object
  pixels that the generator handed to its memory (its own record, :attr:`ChunkOutput.written`),
  out of those in the written frames. A generated world shows only what its generator paints: it
  never saw a box that was not in the start view, so what these count is mostly generated static
  content at the places the box occupies in the house, not the box. Hence the next figure.

``EvalResult.observed_filter`` scores the memory's filter where frames do show the moving objects:
every chunk of the trajectories with moving objects, rendered, goes through
:meth:`~mirage_gym.model.MirageGenerator.write_decision` once with the depth the generator predicts
from its encoding and once with the true depth (the rule's own limit). Counted: tokens on moving
objects kept (at least half their pixels moving, as above) out of those visible, and static tokens
(no moving pixel, not empty) dropped out of all static ones. Generators with a per-frame autoencoder only.

With a generator that has an autoencoder, ``EvalResult.autoencoder`` also holds its reconstruction on
``autoencoder_frames`` held-out frames (:func:`~mirage_gym.training.vae_stage.held_out_reconstruction`:
mean and worst-decile PSNR, SSIM, detail ratio, colour kept): the ceiling of every generated frame.
``EvalResult.reprojection`` holds the ceiling its latent cache adds on a moved view
(:func:`~mirage_gym.eval.reprojection.reprojection_ceiling`, ``reprojection_views`` held-out views):
a view read from the cache of a moved one with ground-truth depth and perfect hole filling, per
interpolation -- what ``fidelity_start_psnr`` could reach with perfect depth and painting.

For every trajectory that comes back to its start pose, ``EvalResult.strips`` keeps a
:class:`RevisitStrip`: the ground-truth start view, the autoencoder's reconstruction of it and each
mode's frame on the return (what :func:`~mirage_gym.eval.report.save_strips` draws).

Moving-object pixels (ground truth) are left out of every image comparison: they are meant
to differ between visits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mirage_gym.envs.oracle import OracleGenerator
from mirage_gym.eval.agreement import bootstrap_mean_ci
from mirage_gym.eval.consistency import (
    camera_control_error,
    flow_error,
    observed_mask,
    reprojection_error,
    revisit_pairs,
)
from mirage_gym.eval.trajectories import KINDS, EvalTrajectory, eval_trajectories
from mirage_gym.geometry import intrinsics_from_fov
from mirage_gym.memory import pool_fraction
from mirage_gym.metrics import abs_rel, detail_ratio, psnr, ssim, to_unit_chw
from mirage_gym.model.generator import MEMORY_MODES, ChunkOutput
from mirage_gym.model.protocols import Generator
from mirage_gym.world import Renderer

__all__ = ["MODES", "METRICS", "EvalConfig", "GroundTruth", "Rollout", "render_truth", "rollout", "score", "evaluate",
           "EvalResult", "RevisitStrip", "observed_filter_counts"]

MODES = (*MEMORY_MODES, "oracle")
# Summary metrics: (key, column title, better is higher).
METRICS = (
    ("revisit_psnr", "revisit PSNR dB", True),
    ("revisit_ssim", "revisit SSIM", True),
    ("revisit_psnr_gt", "revisit PSNR vs GT dB", True),
    ("reproj_l1", "reproj L1", False),
    ("flow_epe", "flow EPE px", False),
    ("rot_err_deg", "rot err deg", False),
    ("trans_dir_err_deg", "trans dir err deg", False),
    ("pose_recovered", "pose recovered", True),
    ("depth_abs_rel", "depth abs-rel", False),
    ("depth_start_abs_rel", "depth abs-rel on start view", False),
    ("fidelity_psnr", "fidelity PSNR dB", True),
    ("fidelity_start_psnr", "fidelity on start view dB", True),
    ("depth_painted_abs_rel", "depth abs-rel where painted", False),
    ("fidelity_painted_psnr", "fidelity where painted dB", True),
    ("detail_cached", "detail cached", True),
    ("detail_new", "detail new areas", True),
)


@dataclass
class EvalConfig:
    """What to evaluate. ``chunks[kind]`` chunks of ``chunk`` frames follow the start frame."""

    resolution: int = 128
    fov_deg: float = 90.0
    chunk: int = 4
    rooms: int = 8  # per kind: 32 trajectories; with 8 (2 a kind) two close models' figures part by chance
    kinds: tuple[str, ...] = KINDS
    chunks: dict[str, int] = field(
        default_factory=lambda: {"orbit": 16, "walk_and_return": 12, "look_around": 12, "random_walk": 30}
    )
    modes: tuple[str, ...] = MODES
    moving_objects: int = 2
    frame_time: float = 0.25
    seed: int = 0
    autoencoder_frames: int = 256  # held-out frames of the autoencoder's reconstruction figure (0: none)
    reprojection_views: int = 12  # held-out views of the cache's reprojection ceiling (0: none)

    @classmethod
    def quick(cls, **overrides: Any) -> EvalConfig:
        """One room per kind and short paths: a minute or two for the default-sized model on 2 cores."""
        base = dict(rooms=1, chunks={"orbit": 8, "walk_and_return": 6, "look_around": 8, "random_walk": 8},
                    autoencoder_frames=64, reprojection_views=4)
        return cls(**{**base, **overrides})

    def validate(self) -> None:
        if self.autoencoder_frames < 0 or self.reprojection_views < 0:
            raise ValueError(f"need autoencoder_frames >= 0 and reprojection_views >= 0, got "
                             f"{self.autoencoder_frames}, {self.reprojection_views}")
        if self.resolution < 8 or self.chunk < 1 or self.rooms < 1:
            raise ValueError(f"need resolution >= 8, chunk >= 1, rooms >= 1; got {self.resolution}, {self.chunk}, "
                             f"{self.rooms}")
        if not 0.0 < self.fov_deg < 180.0 or self.frame_time <= 0:
            raise ValueError(f"need fov_deg in (0, 180) and frame_time > 0, got {self.fov_deg}, {self.frame_time}")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes or len(set(self.modes)) != len(self.modes):
            raise ValueError(f"modes must be distinct entries of {MODES}, got {list(self.modes)}")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {list(self.kinds)}")


@dataclass
class GroundTruth:
    """The procedural truth along a trajectory (CPU tensors), with frame ``t`` at time ``t * frame_time``."""

    rgb: Tensor  # [N, H, W, 3] uint8
    depth: Tensor  # [N, H, W]
    static: Tensor  # [N, H, W] bool: not a moving object
    observed: Tensor  # [N, H, W] bool: seen in an earlier frame (static surfaces only)
    renderer: Renderer
    start_seen: Tensor  # [N, H, W] bool: seen in frame 0, the start image (static surfaces only)


def render_truth(trajectory: EvalTrajectory, intrinsics: Tensor, resolution: int, frame_time: float) -> GroundTruth:
    renderer = Renderer(trajectory.scene)
    poses = trajectory.cam_to_world
    times = torch.arange(poses.shape[0], dtype=torch.float32) * frame_time
    parts = [renderer.render(poses[s : s + 32], intrinsics, resolution, resolution, time=times[s : s + 32])
             for s in range(0, poses.shape[0], 32)]
    rgb = torch.cat([p.rgb for p in parts])
    depth = torch.cat([p.depth for p in parts])
    static = ~torch.cat([p.dynamic for p in parts])
    return GroundTruth(rgb, depth, static, observed_mask(depth, poses, intrinsics, static=static), renderer,
                       observed_mask(depth, poses, intrinsics, static=static, sources=1))


@dataclass
class Rollout:
    """One mode's generated video along a trajectory (CPU tensors)."""

    mode: str
    rgb: Tensor  # [N, H, W, 3] uint8 (frame 0: the start image)
    depth: Tensor  # [N, H, W]
    chunk_seconds: list[float]
    timings: list[dict[str, float]]
    memory_bytes: list[int]  # after each chunk
    dynamic_written: int | None  # tokens on moving objects written to the memory (None: no memory)
    dynamic_visible: int | None  # tokens on moving objects in the frames written


def _dynamic_counts(generator: Generator, out: ChunkOutput, static: Tensor) -> tuple[int, int] | None:
    """Moving-object tokens the generator handed to its memory in one chunk, and those present in it.

    What was written is the generator's own record (:attr:`ChunkOutput.written`: the filter's
    decision less the cells the memory already held), not a re-run of the filter; a token is on a
    moving object when at least half of its ground-truth pixels are.
    """
    if out.written is None:  # no memory write to measure
        return None
    written = out.written[0].cpu()  # [T, h, w]
    dynamic = pool_fraction((~static).float(), tuple(written.shape[-2:])) >= 0.5  # [T, h, w]
    if generator.memory == "latent":  # the cache takes one latent frame per temporal group
        stride = generator.vae.temporal_factor
        written, dynamic = written[::stride], dynamic[::stride]
    return int((written & dynamic).sum()), int(dynamic.sum())


def observed_filter_counts(generator: Generator, trajectory: EvalTrajectory, truth: GroundTruth,
                           intrinsics: Tensor, chunk: int) -> dict[str, dict[str, int]] | None:
    """The memory filter's decisions on the rendered chunks of ``trajectory`` (None: no moving object in it, or a
    generator without :meth:`~mirage_gym.model.MirageGenerator.write_decision` and a per-frame autoencoder).

    Per depth source (``"model_depth"``: predicted from the encoded chunk; ``"true_depth"``): tokens on moving
    objects kept / visible and static tokens dropped / all static ones. The generator's ``filter_history``
    frames before each chunk (rendered, the start frame first) go to the filter as its history.
    """
    vae = getattr(generator, "vae", None)
    if (truth.static.all() or vae is None or vae.temporal_factor != 1
            or not callable(getattr(generator, "write_decision", None))):
        return None
    counts = {source: dict.fromkeys(("dynamic_kept", "dynamic_visible", "static_dropped", "static"), 0)
              for source in ("model_depth", "true_depth")}
    poses = trajectory.cam_to_world
    history = getattr(generator, "filter_history", 0)
    for c in range((poses.shape[0] - 1) // chunk):
        first = 1 + c * chunk
        frames = slice(first, first + chunk)
        shown = slice(max(0, first - history), first + chunk)  # the filter's history frames, then the chunk
        moving = (~truth.static[frames]).float()
        for source, depth in (("model_depth", None), ("true_depth", truth.depth[None, shown])):
            decision = generator.write_decision(truth.rgb[None, shown], poses[None, shown], intrinsics, depth=depth,
                                                history=first - shown.start)
            keep, empty = decision.keep[0].cpu(), decision.empty[0].cpu()
            share = pool_fraction(moving, tuple(keep.shape[-2:]))
            dynamic, static = share >= 0.5, (share == 0) & ~empty
            entry = counts[source]
            entry["dynamic_kept"] += int((keep & dynamic).sum())
            entry["dynamic_visible"] += int(dynamic.sum())
            entry["static_dropped"] += int((~keep & static).sum())
            entry["static"] += int(static.sum())
    return counts


def rollout(
    generator: Generator,
    trajectory: EvalTrajectory,
    truth: GroundTruth,
    intrinsics: Tensor,
    chunk: int,
    *,
    mode: str,
    seed: int = 0,
) -> Rollout:
    """Start from the ground-truth first frame and generate the trajectory chunk by chunk."""
    poses = trajectory.cam_to_world
    if (poses.shape[0] - 1) % chunk:
        raise ValueError(f"a trajectory of {poses.shape[0]} frames is not 1 + whole chunks of {chunk}")
    noise = torch.Generator(device=generator.device).manual_seed(seed)
    start = generator.start(truth.rgb[:1], poses[:1], intrinsics, renderers=[truth.renderer])
    rgb, depth = [start.rgb[0].cpu()], [start.depth[0].cpu()]
    dyn = _dynamic_counts(generator, start, truth.static[:1])
    written, visible = (None, None) if dyn is None else dyn
    seconds, timings, memory = [], [], []
    for c in range(poses.shape[0] // chunk):
        frames = slice(1 + c * chunk, 1 + (c + 1) * chunk)
        begin = time.perf_counter()
        out = generator.step(poses[None, frames], generator=noise)
        seconds.append(time.perf_counter() - begin)
        timings.append(dict(out.timings))
        memory.append(int(generator.memory_bytes()[0]))
        rgb.append(out.rgb[0].cpu())
        depth.append(out.depth[0].cpu())
        dyn = _dynamic_counts(generator, out, truth.static[frames])
        if dyn is not None:
            written, visible = written + dyn[0], visible + dyn[1]
    return Rollout(mode, torch.cat(rgb), torch.cat(depth).float(), seconds, timings, memory, written, visible)


def _nanmean(values: Tensor | Sequence[float]) -> float:
    x = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    x = x[torch.isfinite(x)]
    return float(x.mean()) if x.numel() else math.nan


def _masked(metric: Callable[..., Tensor], pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """A per-image metric that is NaN (not a perfect score) where the mask is empty."""
    values = metric(pred, target, mask)
    return torch.where(mask.flatten(-2).any(-1), values, torch.full_like(values, math.nan))


def score(run: Rollout, truth: GroundTruth, cam_to_world: Tensor, intrinsics: Tensor) -> dict[str, Any]:
    """All metrics of one rollout (scalars, plus ``fidelity_per_frame`` for the plots)."""
    n = cam_to_world.shape[0]
    gen = to_unit_chw(run.rgb)
    gt = to_unit_chw(truth.rgb)
    pairs = revisit_pairs(cam_to_world)
    if pairs:
        i, j = (torch.tensor(v) for v in zip(*pairs, strict=True))
        both_static = truth.static[i] & truth.static[j]
        revisit_psnr = _nanmean(_masked(psnr, gen[j], gen[i], both_static))
        revisit_ssim = _nanmean(_masked(ssim, gen[j], gen[i], both_static))
        revisit_psnr_gt = _nanmean(_masked(psnr, gen[j], gt[i], both_static))
        revisit_ssim_gt = _nanmean(_masked(ssim, gen[j], gt[i], both_static))
    else:
        revisit_psnr = revisit_ssim = revisit_psnr_gt = revisit_ssim_gt = math.nan
    reproj = reprojection_error(
        run.rgb[:-1], run.rgb[1:], run.depth[:-1], run.depth[1:], cam_to_world[:-1], cam_to_world[1:], intrinsics,
        mask=truth.static[1:],
    )
    epe = flow_error(run.rgb, run.depth, cam_to_world, intrinsics, mask=truth.static)
    control = camera_control_error(run.rgb, run.depth, cam_to_world, intrinsics, [(t, t + 1) for t in range(n - 1)])
    seen = truth.observed[1:] & truth.static[1:] & torch.isfinite(truth.depth[1:])
    fidelity = _masked(psnr, gen[1:], gt[1:], seen)
    start_seen = truth.start_seen[1:] & truth.static[1:] & torch.isfinite(truth.depth[1:])
    fidelity_start = _masked(psnr, gen[1:], gt[1:], start_seen)
    depth_err = _masked(abs_rel, run.depth[1:], truth.depth[1:], seen)
    depth_start_err = _masked(abs_rel, run.depth[1:], truth.depth[1:], start_seen)
    painted = seen & ~truth.start_seen[1:]
    unseen = ~truth.observed[1:] & truth.static[1:] & torch.isfinite(truth.depth[1:])
    return {
        "revisit_pairs": len(pairs),
        "revisit_psnr": revisit_psnr,
        "revisit_ssim": revisit_ssim,
        "revisit_psnr_gt": revisit_psnr_gt,
        "revisit_ssim_gt": revisit_ssim_gt,
        "detail_cached": float(detail_ratio(gen[1:], gt[1:], seen, pooled=True)),
        "detail_new": float(detail_ratio(gen[1:], gt[1:], unseen, pooled=True)),
        "reproj_l1": _nanmean(reproj.l1),
        "reproj_valid": _nanmean(reproj.valid_fraction),
        "flow_epe": _nanmean(epe),
        "rot_err_deg": _nanmean(control.rotation_deg),
        "trans_dir_err_deg": _nanmean(control.translation_deg),
        "pose_recovered": float(control.recovered.float().mean()) if control.recovered.numel() else math.nan,
        "depth_abs_rel": _nanmean(depth_err),
        "depth_start_abs_rel": _nanmean(depth_start_err),
        "fidelity_psnr": _nanmean(fidelity),
        "fidelity_start_psnr": _nanmean(fidelity_start),
        "depth_painted_abs_rel": _nanmean(_masked(abs_rel, run.depth[1:], truth.depth[1:], painted)),
        "fidelity_painted_psnr": _nanmean(_masked(psnr, gen[1:], gt[1:], painted)),
        "fidelity_per_frame": [float(v) for v in fidelity],
        "seconds_per_chunk": float(np.median(run.chunk_seconds)),
        "memory_bytes": run.memory_bytes[-1],
        "dynamic_tokens_written": run.dynamic_written,
        "dynamic_tokens_visible": run.dynamic_visible,
    }


@dataclass
class RevisitStrip:
    """A trajectory's ground-truth start view and what each mode shows on returning to that pose.

    ``frame`` is the last frame at the start pose after a turn of at least 90 degrees. Images are
    ``[H, W, 3]`` uint8; ``reconstruction`` is decode(encode(truth)), the ceiling of every generated
    frame (None for a generator without an autoencoder).
    """

    kind: str
    room_seed: int
    frame: int
    truth: np.ndarray
    reconstruction: np.ndarray | None
    returns: dict[str, np.ndarray]


def revisit_strip(
    generator: Generator, path: EvalTrajectory, truth: GroundTruth, runs: Sequence[Rollout]
) -> RevisitStrip | None:
    """The :class:`RevisitStrip` of one trajectory, or None when it never comes back to its start pose."""
    back = [j for i, j in revisit_pairs(path.cam_to_world) if i == 0]
    if not back:
        return None
    frame = back[-1]
    reconstruction = None
    vae = getattr(generator, "vae", None)
    if vae is not None and not generator.renders_ground_truth:
        with torch.no_grad():
            x = truth.rgb[:1].permute(0, 3, 1, 2).float().div(127.5).sub(1)[None].to(generator.device)
            y = vae.decode(vae.encode(x))[0, 0].clamp(-1, 1).add(1).mul(127.5).round()
        reconstruction = y.to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return RevisitStrip(path.kind, path.room_seed, frame, truth.rgb[0].numpy(), reconstruction,
                        {run.mode: run.rgb[frame].numpy() for run in runs})


@dataclass
class EvalResult:
    """Per-run rows (one per trajectory and mode), the per-mode summary and the revisit strips."""

    config: dict[str, Any]
    generator: str
    rows: list[dict[str, Any]]
    summary: dict[str, dict[str, Any]]  # per mode: the means, their 95 % intervals (ci95), counts
    autoencoder: dict[str, float] | None = None  # the generator's autoencoder on held-out frames (None: none)
    reprojection: dict[str, Any] | None = None  # its latent cache's ceiling on a moved view (None: none)
    observed_filter: dict[str, Any] | None = None  # its memory filter on rendered chunks with moving objects
    strips: list[RevisitStrip] = field(default_factory=list)  # images: not part of the JSON

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "strips"}


def summarize(rows: list[dict[str, Any]], modes: Sequence[str], n_boot: int = 10000,
              seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per mode: the mean of each metric over trajectories (NaN-aware), its 95 % percentile bootstrap interval
    over the trajectories (``ci95``: how far the mean would move with other houses of the same kinds) and
    totals of the dynamic counts."""
    summary = {}
    for mode in modes:
        mine = [r for r in rows if r["mode"] == mode]
        if not mine:
            continue
        entry: dict[str, Any] = {key: _nanmean([r[key] for r in mine]) for key, _, _ in METRICS}
        entry["trajectories"] = len(mine)
        entry["ci95"] = {}
        for i, (key, _, _) in enumerate(METRICS):
            values = [r[key] for r in mine if r[key] is not None and math.isfinite(r[key])]
            entry["ci95"][key] = bootstrap_mean_ci(values, n_boot, seed=seed + i)
        entry["seconds_per_chunk"] = _nanmean([r["seconds_per_chunk"] for r in mine])
        entry["memory_bytes"] = _nanmean([r["memory_bytes"] for r in mine])
        counts = [(r["dynamic_tokens_written"], r["dynamic_tokens_visible"]) for r in mine]
        if all(w is not None for w, _ in counts):
            entry["dynamic_tokens_written"] = sum(w for w, _ in counts)
            entry["dynamic_tokens_visible"] = sum(v for _, v in counts)
        summary[mode] = entry
    return summary


def _with_memory(generator: Generator, mode: str) -> Generator:
    generator.set_memory(mode)  # one set of weights serves every mode
    return generator


def evaluate(
    generator: Generator,
    config: EvalConfig | None = None,
    *,
    name: str = "generator",
    progress: bool = True,
) -> EvalResult:
    """Run every trajectory of ``config`` through ``generator`` in each of ``config.modes`` and score it.

    ``generator`` is a generated world such as :class:`MirageGenerator` (its memory mode is switched
    per run and restored afterwards) or one that renders the ground truth, such as
    :class:`OracleGenerator` (then only ``"oracle"`` runs). The ``"oracle"`` mode of a generated
    world's evaluation uses a fresh :class:`OracleGenerator`.
    """
    from tqdm.auto import tqdm

    config = config or EvalConfig()
    config.validate()
    modes = tuple(config.modes)
    if not isinstance(generator, Generator):
        raise TypeError(f"generator must implement mirage_gym.model.protocols.Generator (a MirageGenerator or an "
                        f"OracleGenerator), got {type(generator).__name__}")
    if generator.renders_ground_truth:
        if modes != ("oracle",) and "oracle" not in modes:
            raise ValueError(f"the oracle generator only runs mode 'oracle', got modes {list(modes)}")
        if generator.frame_time != config.frame_time:
            raise ValueError(f"the oracle's frame_time ({generator.frame_time}) must equal config.frame_time "
                             f"({config.frame_time}): the ground truth is rendered at the same times")
        modes = ("oracle",)
    k = intrinsics_from_fov(config.fov_deg, config.resolution, config.resolution)
    paths = eval_trajectories(config.kinds, config.rooms, config.chunk, dict(config.chunks),
                              moving_objects=config.moving_objects, seed=config.seed)
    oracle = generator if generator.renders_ground_truth else OracleGenerator(frame_time=config.frame_time)
    original = None if generator.renders_ground_truth else generator.memory
    rows, strips, observed = [], [], []
    bar = tqdm(total=len(paths) * len(modes), desc="eval", disable=not progress, dynamic_ncols=True)
    try:
        for path in paths:
            truth = render_truth(path, k, config.resolution, config.frame_time)
            if not generator.renders_ground_truth:
                observed.append(observed_filter_counts(generator, path, truth, k, config.chunk))
            runs = []
            for mode in modes:
                bar.set_postfix_str(f"{path.name} {mode}")
                runner = oracle if mode == "oracle" else _with_memory(generator, mode)
                run = rollout(runner, path, truth, k, config.chunk, mode=mode, seed=config.seed)
                rows.append({"kind": path.kind, "room_seed": path.room_seed, "frames": path.num_frames, "mode": mode,
                             **score(run, truth, path.cam_to_world, k)})
                runs.append(run)
                bar.update(1)
            strip = revisit_strip(generator, path, truth, runs)
            if strip is not None:
                strips.append(strip)
    finally:
        bar.close()
        if original is not None:
            generator.set_memory(original)
    return EvalResult(config=asdict(config), generator=name, rows=rows, summary=summarize(rows, modes),
                      autoencoder=autoencoder_figures(generator, config),
                      reprojection=reprojection_figures(generator, config),
                      observed_filter=_sum_counts([c for c in observed if c is not None]), strips=strips)


def _sum_counts(counts: list[dict[str, dict[str, int]]]) -> dict[str, Any] | None:
    if not counts:
        return None
    total = {source: {key: sum(c[source][key] for c in counts) for key in counts[0][source]} for source in counts[0]}
    return {"trajectories": len(counts), **total}


def autoencoder_figures(generator: Generator, config: EvalConfig) -> dict[str, float] | None:
    """The generator's autoencoder on ``config.autoencoder_frames`` held-out frames (None without one)."""
    vae = getattr(generator, "vae", None)
    if generator.renders_ground_truth or vae is None or config.autoencoder_frames <= 0:
        return None
    from mirage_gym.training.vae_stage import held_out_reconstruction  # the one definition stage 1 reports too

    return held_out_reconstruction(vae, resolution=config.resolution, fov_deg=config.fov_deg,
                                   frames=config.autoencoder_frames, seed=config.seed)


def reprojection_figures(generator: Generator, config: EvalConfig) -> dict[str, Any] | None:
    """The ceiling the generator's latent cache puts on a moved view (None without a per-frame autoencoder: a
    temporal one, Wan's, encodes clips, not single views)."""
    vae = getattr(generator, "vae", None)
    if generator.renders_ground_truth or vae is None or config.reprojection_views <= 0 or vae.temporal_factor != 1:
        return None
    from mirage_gym.eval.reprojection import reprojection_ceiling

    return reprojection_ceiling(vae, resolution=config.resolution, fov_deg=config.fov_deg,
                                views=config.reprojection_views, voxel_size=generator.voxel_size, seed=config.seed)
