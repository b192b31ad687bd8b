"""`mirage-gym bench generator`: end-to-end cost per chunk as the trajectory grows, per memory mode.

One long random walk through a held-out procedural house is generated chunk by chunk,
from the same ground-truth start image with the same noise, once per memory mode
(``latent``, ``pixel``, ``none``) in the same process. For every chunk it records the
wall time of :meth:`MirageGenerator.step` and its breakdown (``ChunkOutput.timings``:
``cache_read``, ``denoise``, ``decode``, ``filter``, ``write``; ``render`` and ``encode``
for the pixel memory), the bytes the memory holds and the process RSS; the peak RSS
(and peak CUDA memory) of each mode is measured from a reset high-water mark. Printed at
each checkpoint (frames generated): the median time of the last ``--repeats`` chunks and
the ratios ``pixel / latent`` in time and in memory held; also how flat each mode's
per-chunk time stays from chunk 10 to the last chunk. Plots: time per chunk and memory
held against frames.

Weights: a trained Mirage folder with ``--model``; otherwise the architecture of
``--config`` (``mirage_gym/configs/default.json``: ``AutoencoderTiny`` per-frame VAE, the
widened Wan transformer, ``DepthHead``) with **random weights** -- speed and memory do not
depend on the weights' values. ``--arch wan2.2-5b`` (CUDA) builds the real Wan2.2 TI2V-5B
transformer and VAE sizes with random weights in bf16. The output says which was used.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoencoderKLWan,
    UniPCMultistepScheduler,
    WanTransformer3DModel,
)

from mirage_gym.config import EVAL_ROOM_SEED_OFFSET, Config, build_generator, load_config
from mirage_gym.geometry import intrinsics_from_fov
from mirage_gym.model.depth_head import DepthHead
from mirage_gym.model.generator import MEMORY_MODES, MirageGenerator
from mirage_gym.model.transformer import widen_patch_embedding
from mirage_gym.model.vae import VideoVAE

__all__ = [
    "build_random_generator",
    "build_wan22_5b_generator",
    "ProcessMemory",
    "bench_generator",
    "summarize_checkpoints",
]

_MIB = 1024.0**2
STAGES = ("cache_read", "render", "encode", "denoise", "decode", "filter", "write")


# ---------------------------------------------------------------------- models


def _give_conditioning_weights(transformer: WanTransformer3DModel, seed: int) -> None:
    """Random weights on the zero-initialised cache/mask/camera channels, as training would give them.

    Without them a random model ignores its memory and every mode generates the same video.
    """
    emb = transformer.patch_embedding
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        extra = emb.weight[:, emb.base_channels :]
        extra.copy_((torch.randn(extra.shape, generator=g) * 0.02).to(extra))


def build_random_generator(
    config: str | Config = "default", *, seed: int = 0, device: torch.device | str = "cpu"
) -> MirageGenerator:
    """A :class:`MirageGenerator` with the architecture of a model config and random weights.

    The same parts as a trained default model (``AutoencoderTiny`` VAE, widened Wan transformer,
    ``DepthHead``, the config's sampler and memory settings): for timing, and for exercising the
    evaluation on a generator whose outputs are not the ground truth.
    """
    config = load_config(config) if isinstance(config, str) else config
    torch.manual_seed(seed)
    generator = build_generator(config)
    _give_conditioning_weights(generator.transformer, seed)
    return generator.to(device).eval()


# Wan2.2 TI2V-5B (diffusers layout): 30 layers of width 3072, 48-channel latents, 16x VAE.
WAN22_5B_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=24, attention_head_dim=128, in_channels=48, out_channels=48,
    text_dim=4096, freq_dim=256, ffn_dim=14336, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)
WAN22_VAE = dict(
    base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
    temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12, patch_size=2,
    scale_factor_temporal=4, scale_factor_spatial=16, latents_mean=[0.0] * 48, latents_std=[1.0] * 48,
)


def build_wan22_5b_generator(
    *, device: torch.device | str = "cuda", dtype: torch.dtype = torch.bfloat16, seed: int = 0,
    num_inference_steps: int = 20, voxel_size: float = 0.05, cache_capacity: int = 400_000,
) -> MirageGenerator:
    """The real Wan2.2 TI2V-5B transformer and VAE sizes with **random** weights (for timing only)."""
    torch.manual_seed(seed)
    with torch.device(device):  # initialised on the device in float32 (20 GB for 5B), then cast
        transformer = widen_patch_embedding(WanTransformer3DModel(**WAN22_5B_TRANSFORMER))
        vae = AutoencoderKLWan(**WAN22_VAE)
    _give_conditioning_weights(transformer, seed)
    transformer, vae = transformer.to(dtype), vae.to(dtype)
    head = DepthHead(latent_channels=48, spatial_factor=16, hidden_channels=128, num_blocks=3)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    return MirageGenerator(
        transformer, VideoVAE(vae), head.to(device, dtype), scheduler, num_inference_steps=num_inference_steps,
        voxel_size=voxel_size, cache_capacity=cache_capacity,
    ).eval()


# ---------------------------------------------------------------------- process memory


class ProcessMemory:
    """Resident memory of this process (Linux ``/proc``), with a resettable peak; CUDA peak when on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @staticmethod
    def _status(field: str) -> float:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024.0
        except OSError:
            pass
        return math.nan

    def rss(self) -> float:
        """Current resident set size, bytes (NaN where unknown)."""
        return self._status("VmRSS")

    def reset_peak(self) -> bool:
        """Restart the peak measurement; ``False`` where the kernel does not allow it."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
            return True
        except OSError:
            return False

    def peak(self) -> dict[str, float]:
        out = {"peak_rss_bytes": self._status("VmHWM")}
        if self.device.type == "cuda":
            out["peak_cuda_bytes"] = float(torch.cuda.max_memory_allocated(self.device))
        return out


# ---------------------------------------------------------------------- the benchmark


def _trajectory(chunks: int, chunk: int, resolution: int, fov: float, room_seed: int) -> tuple[torch.Tensor, ...]:
    """A random walk of ``1 + chunks * chunk`` poses in a held-out house, and its ground-truth start image."""
    from mirage_gym.world import Renderer, make_scene, trajectories

    scene = make_scene(room_seed)
    poses = trajectories.random_walk(scene, np.random.default_rng(room_seed), 1 + chunks * chunk)
    k = intrinsics_from_fov(fov, resolution, resolution)
    start = Renderer(scene).render(poses[:1], k, resolution, resolution).rgb
    return poses, k, start


def bench_generator(
    generator: MirageGenerator,
    cam_to_world: torch.Tensor,
    intrinsics: torch.Tensor,
    start_image: torch.Tensor,
    chunk: int,
    *,
    modes: Sequence[str] = MEMORY_MODES,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, list[dict[str, float]]]:
    """Per-chunk records of every mode: ``frames``, ``seconds``, stage timings, ``memory_bytes``, ``rss_bytes``.

    ``cpu_seconds`` is the process CPU time of the step: on a shared machine, where other
    processes stretch wall times, it still measures the work done (exactly so with one torch thread).

    ``cam_to_world`` ``[1 + C * chunk, 4, 4]``; the first pose is the start image's. Each mode's
    list ends with a ``{"peak_rss_bytes", ...}`` record under the key ``f"{mode}/peak"``.
    """
    from tqdm.auto import tqdm

    bad = [m for m in modes if m not in MEMORY_MODES]
    if bad or not modes:
        raise ValueError(f"modes must be entries of {MEMORY_MODES}, got {list(modes)}")
    if chunk < 1 or (cam_to_world.shape[0] - 1) % chunk or cam_to_world.shape[0] < 1 + chunk:
        raise ValueError(f"cam_to_world must hold 1 + whole chunks of {chunk} poses, got {cam_to_world.shape[0]}")
    device = generator.device
    memory = ProcessMemory(device)
    chunks = (cam_to_world.shape[0] - 1) // chunk
    original = generator.memory
    records: dict[str, Any] = {}
    try:
        for mode in modes:
            generator.set_memory(mode)  # one set of weights serves every mode
            memory.reset_peak()
            generator.start(start_image, cam_to_world[:1], intrinsics)
            noise = torch.Generator(device=device).manual_seed(seed)
            rows = []
            for c in tqdm(range(chunks), desc=f"bench {mode}", disable=not progress, dynamic_ncols=True):
                poses = cam_to_world[None, 1 + c * chunk : 1 + (c + 1) * chunk]
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                begin, begin_cpu = time.perf_counter(), time.process_time()
                out = generator.step(poses, generator=noise)
                seconds = time.perf_counter() - begin  # step() synchronises its own stages
                cpu = time.process_time() - begin_cpu
                rows.append({"chunk": c + 1, "frames": 1 + (c + 1) * chunk, "seconds": seconds, "cpu_seconds": cpu,
                             **{s: out.timings.get(s, 0.0) for s in STAGES},
                             "memory_bytes": generator.memory_bytes()[0], "rss_bytes": memory.rss()})
                del out
            records[mode] = rows
            records[f"{mode}/peak"] = memory.peak()
            generator.start(start_image, cam_to_world[:1], intrinsics)  # drop this mode's memory before the next
    finally:
        generator.set_memory(original)
    return records


def _window(rows: list[dict[str, float]], frames: int, repeats: int) -> list[dict[str, float]]:
    """The ``repeats`` chunks ending at the first chunk that reaches ``frames``."""
    last = next((i for i, r in enumerate(rows) if r["frames"] >= frames), len(rows) - 1)
    return rows[max(0, last - repeats + 1) : last + 1]


def summarize_checkpoints(
    records: dict[str, Any], checkpoints: Sequence[int], repeats: int
) -> list[dict[str, float]]:
    """One row per checkpoint: median time (and stages) per mode over the window, memory, ratios."""
    modes = [m for m in MEMORY_MODES if m in records]
    out = []
    for frames in checkpoints:
        row: dict[str, float] = {"frames": frames}
        for mode in modes:
            window = _window(records[mode], frames, repeats)
            row["frames_reached"] = window[-1]["frames"]
            row[f"{mode}_ms"] = 1000 * statistics.median(r["seconds"] for r in window)
            row[f"{mode}_cpu_ms"] = 1000 * statistics.median(r["cpu_seconds"] for r in window)
            for stage in STAGES:
                row[f"{mode}_{stage}_ms"] = 1000 * statistics.median(r[stage] for r in window)
            row[f"{mode}_memory_bytes"] = window[-1]["memory_bytes"]
            row[f"{mode}_rss_bytes"] = window[-1]["rss_bytes"]
        if "latent" in modes and "pixel" in modes:
            row["time_ratio"] = row["pixel_ms"] / row["latent_ms"]
            row["cpu_time_ratio"] = row["pixel_cpu_ms"] / max(row["latent_cpu_ms"], 1e-6)
            row["memory_ratio"] = row["pixel_memory_bytes"] / max(row["latent_memory_bytes"], 1)
            # The part of the chunk each memory costs by itself (read + write; render + encode for pixel).
            latent_mem = row["latent_cache_read_ms"] + row["latent_write_ms"]
            pixel_mem = row["pixel_render_ms"] + row["pixel_encode_ms"] + row["pixel_write_ms"]
            row["memory_time_ratio"] = pixel_mem / max(latent_mem, 1e-6)
        out.append(row)
    return out


def flatness(
    rows: list[dict[str, float]], first: int = 10, repeats: int = 5, key: str = "seconds"
) -> dict[str, float]:
    """Median ``key`` time per chunk from chunk ``first`` on and over the last ``repeats`` chunks, and the change."""
    if len(rows) < first + repeats:
        return {}
    early = statistics.median(r[key] for r in rows[first - 1 : first - 1 + repeats])
    late = statistics.median(r[key] for r in rows[-repeats:])
    return {"from_chunk": first, "to_chunk": rows[-1]["chunk"], "early_ms": 1000 * early, "late_ms": 1000 * late,
            "change": late / early - 1.0}


def plot(records: dict[str, Any], folder: Path, title: str) -> list[Path]:
    """``bench_time.png`` (time per chunk, total and the memory's own stages) and ``bench_memory.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in MEMORY_MODES if m in records]
    fig, (total, own) = plt.subplots(1, 2, figsize=(11, 4))
    for mode in modes:
        frames = [r["frames"] for r in records[mode]]
        line, = total.plot(frames, [1000 * r["cpu_seconds"] for r in records[mode]], label=f"{mode} (cpu)")
        total.plot(frames, [1000 * r["seconds"] for r in records[mode]], color=line.get_color(), alpha=0.3,
                   linewidth=0.8, label=f"{mode} (wall)")
        if mode != "none":
            stages = ("cache_read", "write") if mode == "latent" else ("render", "encode", "write")
            own.plot(frames, [1000 * sum(r[s] for s in stages) for r in records[mode]],
                     label=f"{mode}: {' + '.join(stages)}")
    total.set(xlabel="frames generated", ylabel="ms per chunk", title="time per chunk (end to end)")
    own.set(xlabel="frames generated", ylabel="ms per chunk", title="time in the memory itself", yscale="log")
    total.legend(fontsize=8)
    own.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    paths = [folder / "bench_time.png", folder / "bench_memory.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in modes:
        if mode == "none":
            continue
        ax.plot([r["frames"] for r in records[mode]], [r["memory_bytes"] / _MIB for r in records[mode]], label=mode)
    ax.set(xlabel="frames generated", ylabel="MiB held by the memory", yscale="log", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="a trained Mirage folder (default: random weights)")
    parser.add_argument("--arch", default=None, choices=["config", "wan2.2-5b"],
                        help="random-weight architecture: --config's, or Wan2.2 TI2V-5B sizes in bf16 "
                             "(default: wan2.2-5b on CUDA, config on CPU)")
    parser.add_argument("--config", default="default", help="model config for the random-weight architecture")
    parser.add_argument("--chunks", type=int, default=250, help="chunks per mode (default 250: 1000 frames)")
    parser.add_argument("--chunk", type=int, default=None, help="frames per chunk (default: the config's; 33 for Wan)")
    parser.add_argument("--resolution", type=int, default=None, help="frame size (default: the config's; 704 for Wan)")
    parser.add_argument("--checkpoints", default="16,40,100,250,500,1000", help="frame counts to report")
    parser.add_argument("--repeats", type=int, default=3, help="chunks in each checkpoint's median")
    parser.add_argument("--modes", nargs="+", default=list(MEMORY_MODES), choices=MEMORY_MODES)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per chunk (default: the model's)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench_generator", help="results folder (JSON, plots, provenance)")
    parser.add_argument("--no-progress", action="store_true")


def _load(args: argparse.Namespace, device: torch.device) -> tuple[MirageGenerator, str, int, int, float]:
    """The generator, a description of its weights, and the chunk, resolution and fov to run it at."""
    config = load_config(args.config)
    if args.model:
        generator = MirageGenerator.from_pretrained(args.model, device=device).eval()
        what = f"trained weights from {args.model}"
        chunk, resolution, fov = config.model.chunk_frames, config.model.resolution, config.model.fov_deg
    elif (args.arch or ("wan2.2-5b" if device.type == "cuda" else "config")) == "wan2.2-5b":
        if device.type != "cuda":
            raise ValueError("--arch wan2.2-5b needs a CUDA device (bf16 5B parameters)")
        generator = build_wan22_5b_generator(device=device, seed=args.seed)
        what = "RANDOM weights, Wan2.2 TI2V-5B architecture sizes, bf16 (timing only)"
        chunk, resolution, fov = 33, 704, 90.0
    else:
        generator = build_random_generator(config, seed=args.seed, device=device)
        what = f"RANDOM weights, the {config.name!r} config's architecture (speed does not depend on weights)"
        chunk, resolution, fov = config.model.chunk_frames, config.model.resolution, config.model.fov_deg
    if args.steps:
        generator.num_inference_steps = int(args.steps)
    return generator, what, args.chunk or chunk, args.resolution or resolution, fov


def run(args: argparse.Namespace) -> int:
    from mirage_gym.provenance import results_folder, write_results

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.chunks < 1 or args.repeats < 1:
        raise ValueError(f"--chunks and --repeats must be >= 1, got {args.chunks} and {args.repeats}")
    try:
        checkpoints = sorted({int(v) for v in args.checkpoints.split(",")})
    except ValueError as err:
        raise ValueError(f"--checkpoints must be comma-separated integers, got {args.checkpoints!r}") from err
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = results_folder(args.out)
    generator, what, chunk, resolution, fov = _load(args, device)
    total = 1 + args.chunks * chunk
    checkpoints = [c for c in checkpoints if c <= total] or [total]
    poses, k, start = _trajectory(args.chunks, chunk, resolution, fov, EVAL_ROOM_SEED_OFFSET + args.seed)
    params = sum(p.numel() for p in generator.transformer.parameters())
    print(f"weights: {what}\ndevice {device}, torch threads {torch.get_num_threads()}, {resolution}x{resolution}, "
          f"chunks of {chunk} frames, {generator.num_inference_steps} denoising steps, transformer "
          f"{params / 1e6:.1f} M parameters; {args.chunks} chunks ({total} frames) per mode: {args.modes}", flush=True)
    records = bench_generator(generator, poses, k, start, chunk, modes=args.modes, seed=args.seed,
                              progress=not args.no_progress)
    rows = summarize_checkpoints(records, checkpoints, args.repeats)
    flat = {m: flatness(records[m]) for m in args.modes}
    flat_cpu = {m: flatness(records[m], key="cpu_seconds") for m in args.modes}

    modes = [m for m in MEMORY_MODES if m in args.modes]
    head = f"{'frames':>6} | " + " ".join(f"{m + ' ms':>10}" for m in modes)
    head += " | " + " ".join(f"{m + ' cpu ms':>14}" for m in modes)
    head += " | " + " ".join(f"{m + ' MiB':>11}" for m in modes if m != "none")
    both = "latent" in modes and "pixel" in modes
    if both:
        head += f" | {'time px/lat':>11} {'cpu px/lat':>10} {'mem px/lat':>10} {'own px/lat':>10}"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        line = f"{r['frames']:>6} | " + " ".join(f"{r[m + '_ms']:>10.1f}" for m in modes)
        line += " | " + " ".join(f"{r[m + '_cpu_ms']:>14.1f}" for m in modes)
        line += " | " + " ".join(f"{r[m + '_memory_bytes'] / _MIB:>11.3f}" for m in modes if m != "none")
        if both:
            line += (f" | {r['time_ratio']:>11.2f} {r['cpu_time_ratio']:>10.2f} {r['memory_ratio']:>10.1f} "
                     f"{r['memory_time_ratio']:>10.1f}")
        print(line)
    print("\nstage breakdown at the last checkpoint (ms, median):")
    last = rows[-1]
    for m in modes:
        print(f"  {m:>6}: " + ", ".join(f"{s} {last[f'{m}_{s}_ms']:.1f}" for s in STAGES if last[f"{m}_{s}_ms"] > 0))
    for m in modes:
        peak = records[f"{m}/peak"]
        text = f"  {m:>6}: peak RSS {peak['peak_rss_bytes'] / _MIB:.0f} MiB"
        if "peak_cuda_bytes" in peak:
            text += f", peak CUDA {peak['peak_cuda_bytes'] / _MIB:.0f} MiB"
        if flat[m]:
            f, g = flat[m], flat_cpu[m]
            text += (f"; per-chunk time chunk {f['from_chunk']} -> {f['to_chunk']}: wall {f['early_ms']:.0f} -> "
                     f"{f['late_ms']:.0f} ms ({100 * f['change']:+.1f} %), cpu {g['early_ms']:.0f} -> "
                     f"{g['late_ms']:.0f} ms ({100 * g['change']:+.1f} %)")
        print(text)
    print(f"(time = median of {args.repeats} chunks ending at the checkpoint; cpu = process CPU time, robust to "
          "other load on the machine; own = the memory's own stages (wall): read + write for latent, render + "
          "encode + write for pixel)")
    title = f"{what}; {resolution}x{resolution}, chunk {chunk}, {device}"
    config = {"args": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "weights": what,
              "resolution": resolution, "chunk": chunk, "device": str(device),
              "num_inference_steps": generator.num_inference_steps, "transformer_parameters": params}
    results = {"checkpoints": rows, "flatness": flat, "flatness_cpu": flat_cpu, "per_chunk": records}
    path = write_results(out, "bench_generator", results,
                         config=config)
    plots = plot(records, out, title)
    print(f"wrote {path}, " + ", ".join(str(p) for p in plots))
    return 0
