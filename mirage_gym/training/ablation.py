"""Autoencoder ablation (issue 16): candidate designs trained for the same CPU time on the same frames.

``mirage-gym train ablate-vae --out runs/ablate --budget-min 6`` trains every candidate (the built-in
list, or ``--candidates FILE``), one after the other, and appends one line per finished candidate to
``OUT/ablation.jsonl``; ``OUT/ablation.md`` holds the table. ``--time-decode`` measures decode time
separately (run it while nothing else runs on the machine).

What is the same for every candidate:

* **data** -- ``--train-frames`` frames (4,096) of training houses, rendered once into ``OUT/frames.pt``
  with ``--held-out`` frames (256) of held-out houses: the frames :func:`~.vae_stage.held_out_reconstruction`
  scores (mean and worst-decile PSNR, SSIM, detail ratio), full frames;
* **training** -- stage 1's image loss (:func:`~.vae_stage.reconstruction_loss`: the candidate's
  ``training`` settings over the base config's ``training.vae``), random crops aligned to latent cells,
  horizontal flips, latent noise, AdamW with warm-up and cosine decay, all run by :func:`~.loop.fit`
  (seeded per step; a killed candidate resumes where it stopped, bit for bit). The autoencoder alone:
  no depth head (the ablation compares codecs; stage 1's depth term, weight 0.1, is left out);
* **CPU time** -- each candidate gets ``--budget-min`` minutes of process CPU time
  (``time.process_time``, ``--threads`` torch threads, 1 by default: other jobs on the machine change
  the wall time, not the budget). It is spent as a number of *steps*, measured per candidate before
  it trains: ``--calibration-steps`` steps of the candidate (after two warm-up steps) give its CPU
  seconds per step (also with the discriminator on, for a GAN candidate), and ``steps = budget / cost``
  (with the GAN's share counted at its own cost). So every candidate runs one whole cosine schedule, and
  the run is a function of the step: resumable and reproducible. The CPU seconds actually spent are
  recorded (``cpu_s``) next to the budget; they differ from it by the calibration's error.

Decode time (``--time-decode``): ``VideoVAE.decode`` of a chunk (``model.chunk_frames``, 4) at
``model.resolution`` (128), ``--decode-threads`` threads (2), the median of ``--repeats`` runs after
three warm-up runs, with the candidate's trained weights when it has them (the cost does not depend
on them). Written to ``OUT/decode_ms.json`` and merged into the table.

A candidate file is a JSON list of ``{"name": ..., "vae": {VaeConfig fields}, "training": {VaeTraining
fields}}``; ``training`` may set the loss weights (``grad_weight``, ``gan_weight``, ``gan_start``,
``ssim_weight``, ``chroma_weight``), ``latent_noise``, ``lr``, ``warmup``, ``batch_size`` and ``crop``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderTiny
from torch import Tensor

from mirage_gym.config import Config, VaeConfig, VaeTraining, _build, load_config
from mirage_gym.metrics import reconstruction_figures
from mirage_gym.model.vae import VideoVAE, build_autoencoder
from mirage_gym.training.data import RoomStream
from mirage_gym.training.loop import (
    RunOptions, Stage, fit, load_tensors, save_tensors,
)
from mirage_gym.training.vae_stage import (
    chroma_ratio, discriminator_adversary, held_out_frames, reconstruction_loss, with_latent_noise,
)

__all__ = ["Candidate", "CANDIDATES", "load_candidates", "prepare_frames", "train_candidate", "run_ablation",
           "time_decode", "markdown_table"]

RESULTS = "ablation.jsonl"
TABLE = "ablation.md"
FRAMES = "frames.pt"
DECODE = "decode_ms.json"
# What a candidate's training section may change (the rest is the base config's training.vae).
TRAINING_KEYS = ("grad_weight", "gan_weight", "gan_start", "gan_lr", "gan_width", "ssim_weight", "chroma_weight",
                 "latent_noise", "lr", "warmup", "batch_size", "crop", "seed")
# The prototype's settings for every candidate, over the config's training.vae.
BASE_TRAINING = {"batch_size": 16, "lr": 1e-3, "warmup": 100, "crop": 64, "latent_noise": 0.1, "ssim_weight": 0.5,
                 "chroma_weight": 6.0, "freeze_encoder_at": None, "seed": 0}


@dataclass(frozen=True)
class Candidate:
    """One design: an autoencoder (``vae``) and how it trains (``training``: overrides of ``VaeTraining``)."""

    name: str
    vae: VaeConfig
    training: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def slug(self) -> str:
        """The candidate's folder name under ``OUT/runs``."""
        return re.sub(r"[^A-Za-z0-9_.+-]+", "_", self.name).strip("_")


def _vae(factor: int, channels: int, width: int = 24, **extra: Any) -> VaeConfig:
    levels = int(math.log2(factor)) + 1
    return VaeConfig(latent_channels=channels, encoder_block_out_channels=(32,) * levels,
                     decoder_block_out_channels=(width,) * levels, **extra)


# The nine candidates of the campaign's prototype script (issue 16): grid factor, latent channels, decoder depth
# at low resolution, upsampling, and the sharpness and adversarial terms.
CANDIDATES = (
    Candidate("f8-c8-d24 (shipped)", _vae(8, 8)),
    Candidate("f8-c16-d24", _vae(8, 16)),
    Candidate("f4-c8-d24", _vae(4, 8)),
    Candidate("f4-c12-d24", _vae(4, 12)),
    Candidate("f4-c16-d24", _vae(4, 16)),
    Candidate("f4-c8-d24-deep-low-res", _vae(4, 8, num_decoder_blocks=(6, 4, 1))),
    Candidate("f4-c8-d24-bilinear", _vae(4, 8, upsample_fn="bilinear")),
    Candidate("f4-c8-d24+grad", _vae(4, 8), {"grad_weight": 1.0}),
    Candidate("f4-c8-d24+grad+gan", _vae(4, 8), {"grad_weight": 1.0, "gan_weight": 0.05, "gan_start": 0.3}),
    # The two best of the nine together: the design the sharp campaign trained (configs/default.json now).
    Candidate("f4-c12-d24-deep-low-res (sharp)", _vae(4, 12, num_decoder_blocks=(6, 4, 1))),
)


def load_candidates(path: str | Path) -> tuple[Candidate, ...]:
    """Candidates from a JSON file (see the module's docstring); every field is checked like a config's."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"candidate file {path}: {err}") from err
    if not isinstance(data, list) or not data:
        raise ValueError(f"candidate file {path} must hold a non-empty JSON list of candidates")
    out = []
    for i, item in enumerate(data):
        where = f"candidate file {path}, entry {i}"
        if not isinstance(item, dict) or set(item) - {"name", "vae", "training"} or "name" not in item or "vae" not in item:
            raise ValueError(f"{where}: need an object with 'name', 'vae' and optionally 'training', got {item!r}")
        vae = _build(VaeConfig, item["vae"], "vae", where)
        problems = vae.problems()
        if problems:
            raise ValueError(f"{where}: vae.{problems[0]}")
        training = dict(item.get("training", {}))
        unknown = sorted(set(training) - set(TRAINING_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key training.{unknown[0]} (known: {list(TRAINING_KEYS)})")
        if not isinstance(item["name"], str) or not item["name"].strip():
            raise ValueError(f"{where}: 'name' must be a non-empty string, got {item['name']!r}")
        out.append(Candidate(item["name"], vae, training))
    names = [c.slug for c in out]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate file {path}: two candidates share a name (folder names {names})")
    return tuple(out)


# ---------------------------------------------------------------------- data


def _to_uint8(rgb: Tensor) -> Tensor:
    return ((rgb + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def prepare_frames(out: Path, config: Config, train_frames: int, held_out: int, seed: int = 0) -> dict[str, Tensor]:
    """The ablation's frames, rendered once into ``OUT/frames.pt`` (uint8 ``[N, 3, H, W]``) and read back after.

    Training frames come from the config's training houses; held-out ones are :func:`held_out_frames`
    (the frames ``evaluate_stage1`` scores, for the same count and seed).
    """
    path = out / FRAMES
    meta = {"resolution": config.model.resolution, "fov_deg": config.model.fov_deg, "train": train_frames,
            "held_out": held_out, "seed": seed, "train_room_seeds": list(config.training.data.train_room_seeds)}
    if path.exists():
        saved = load_tensors(path)
        if saved.get("meta") != meta:
            raise ValueError(f"{path} holds other frames ({saved.get('meta')}, asked for {meta}): use another --out "
                             "or move it away")
        return saved
    factor = math.gcd(config.model.resolution, 8)  # the grid of the token depth rendered alongside (unused)
    stream = RoomStream.for_training(config, factor, seed)
    chunks, left = [], train_frames
    while left > 0:
        n = min(64, left)
        chunks.append(_to_uint8(stream.frames(n).rgb[:, 0]))
        left -= n
    test = held_out_frames(resolution=config.model.resolution, fov_deg=config.model.fov_deg, frames=held_out, seed=0,
                           latent_factor=factor)
    frames = {"train": torch.cat(chunks), "held_out": _to_uint8(test.rgb[:, 0]), "meta": meta}
    save_tensors(path, frames)
    return frames


# ---------------------------------------------------------------------- one candidate


def _settings(base: Config, candidate: Candidate, steps: int) -> VaeTraining:
    values = {**dataclasses.asdict(base.stage("vae")), **BASE_TRAINING, **candidate.training}
    hp = _build(VaeTraining, values, "training", f"candidate {candidate.name!r}")
    every = max(1, steps // 20)
    return dataclasses.replace(hp, steps=max(1, steps), log_every=every, checkpoint_every=max(every, 50))


def _candidate_config(base: Config, candidate: Candidate, hp: VaeTraining) -> Config:
    return dataclasses.replace(base, name=f"{base.name}/{candidate.slug}",
                               model=dataclasses.replace(base.model, vae=candidate.vae),
                               training=dataclasses.replace(base.training, vae=hp))


def build_stage(candidate: Candidate, hp: VaeTraining, train: Tensor, step_of: list[int]) -> tuple[Stage, AutoencoderTiny]:
    """The candidate's :class:`~.loop.Stage`: its autoencoder on crops of ``train`` (uint8 frames), and its
    discriminator as the stage's adversary when it has one. ``step_of[0]`` is kept at the current step."""
    autoencoder = build_autoencoder(**dataclasses.asdict(candidate.vae))
    factor = candidate.vae.spatial_factor
    size = train.shape[-1]
    crop = min(hp.crop or size, size) // factor * factor
    shown: dict[str, Tensor] = {}
    adversary = discriminator_adversary(hp, shown, torch.device("cpu"))

    def batch(step: int, rng: torch.Generator) -> Tensor:
        step_of[0] = step
        index = torch.randint(0, train.shape[0], (hp.batch_size,), generator=rng)
        i, j = (int(v) * factor for v in torch.randint(0, (size - crop) // factor + 1, (2,), generator=rng))
        x = train[index, :, i : i + crop, j : j + crop].float() / 127.5 - 1
        flip = torch.rand(hp.batch_size, generator=rng) < 0.5
        return torch.where(flip[:, None, None, None], x.flip(-1), x)

    def loss(x: Tensor, rng: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        z = autoencoder.encoder(x)
        recon = autoencoder.decoder(with_latent_noise(z, hp.latent_noise, rng, scale=z.detach().std()))
        gan_on = adversary is not None and step_of[0] >= adversary.start
        value, stats = reconstruction_loss(recon, x, hp, adversary.module if gan_on else None)
        shown["x"], shown["recon"] = x, recon.detach()
        return value, {"loss": value.item(), **stats}

    stage = Stage(candidate.slug, {"autoencoder": autoencoder}, batch, loss, adversary=adversary)
    return stage, autoencoder


def _step_cost(candidate: Candidate, hp: VaeTraining, train: Tensor, steps: int, gan: bool, config: Config) -> float:
    """CPU seconds per training step of the candidate: ``steps`` steps of the one training loop (:func:`fit`)
    in a throwaway folder, their CPU time over their number (first-step allocation included: a small overestimate)."""
    hp = dataclasses.replace(hp, gan_start=0.0 if gan else float(10**9), steps=steps, log_every=steps,
                             checkpoint_every=steps)
    torch.manual_seed(hp.seed)
    stage, _ = build_stage(candidate, hp, train, [0])
    with tempfile.TemporaryDirectory() as tmp:
        fitted = fit(stage, hp, Path(tmp), config=config, run=RunOptions(resume=False, progress=False))
    return fitted.cpu_time_s / steps


def plan_steps(candidate: Candidate, hp: VaeTraining, train: Tensor, budget_s: float, calibration_steps: int,
               config: Config) -> dict:
    """How many steps fill ``budget_s`` CPU seconds for this candidate (see the module's docstring)."""
    plain = _step_cost(candidate, hp, train, calibration_steps, gan=False, config=config)
    plan = {"budget_s": budget_s, "s_per_step": plain}
    if hp.gan_weight:
        with_gan = _step_cost(candidate, hp, train, calibration_steps, gan=True, config=config)
        plan["s_per_step_gan"] = with_gan
        # steps S with start s: s * plain + (S - s) * with_gan = budget, s = gan_start * S (fraction) or a step
        if hp.gan_start < 1:
            steps = budget_s / (hp.gan_start * plain + (1 - hp.gan_start) * with_gan)
        else:
            start = int(hp.gan_start)
            steps = budget_s / plain if start * plain >= budget_s else start + (budget_s - start * plain) / with_gan
    else:
        steps = budget_s / plain
    plan["steps"] = max(1, int(steps))
    return plan


@torch.no_grad()
def score(autoencoder: AutoencoderTiny, held_out: Tensor, batch: int = 32) -> dict[str, float]:
    """Issue 16's autoencoder figures on the held-out frames (uint8 ``[N, 3, H, W]``), full frames."""
    autoencoder.eval()
    recon = []
    for k in range(0, held_out.shape[0], batch):
        x = held_out[k : k + batch].float() / 127.5 - 1
        recon.append((autoencoder.decoder(autoencoder.encoder(x)).clamp(-1, 1) + 1) / 2)
    pred, target = torch.cat(recon), held_out.float() / 255
    return {**reconstruction_figures(pred, target), "chroma_ratio": chroma_ratio(pred, target).item()}


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def train_candidate(
    candidate: Candidate, frames: dict[str, Tensor], base: Config, folder: Path, *, budget_s: float,
    calibration_steps: int = 10, progress: bool = True,
) -> dict[str, Any]:
    """Train one candidate into ``folder`` (resuming its run there) and score it; returns its result line."""
    folder.mkdir(parents=True, exist_ok=True)
    plan_path = folder / "plan.json"
    hp = _settings(base, candidate, 1)
    if plan_path.exists():  # a resumed candidate keeps its step count
        plan = json.loads(plan_path.read_text())
    else:
        plan = plan_steps(candidate, hp, frames["train"], budget_s, calibration_steps,
                          _candidate_config(base, candidate, hp))
        plan_path.write_text(json.dumps(plan, indent=2))
    hp = _settings(base, candidate, plan["steps"])
    config = _candidate_config(base, candidate, hp)
    torch.manual_seed(hp.seed)  # every candidate starts from its seed's weights
    step_of = [0]
    stage, autoencoder = build_stage(candidate, hp, frames["train"], step_of)
    fitted = fit(stage, hp, folder, config=config, run=RunOptions(progress=progress))
    autoencoder.save_pretrained(folder / "vae")
    result = {
        "name": candidate.name, "vae": dataclasses.asdict(candidate.vae), "training": candidate.training,
        "factor": candidate.vae.spatial_factor,
        "params_encoder": _params(autoencoder.encoder), "params_decoder": _params(autoencoder.decoder),
        "steps": fitted.step, "cpu_s": fitted.cpu_time_s, **plan,
        "held_out_frames": int(frames["held_out"].shape[0]), **score(autoencoder, frames["held_out"]),
        "final_loss": fitted.stats.get("train/loss"),
    }
    return json.loads(json.dumps(result))  # plain JSON (tuples as lists)


def finished(out: Path) -> dict[str, dict]:
    """The result lines in ``OUT/ablation.jsonl`` by candidate name."""
    path = out / RESULTS
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["name"]: row for row in rows}


def run_ablation(
    out: Path, candidates: tuple[Candidate, ...], base: Config, *, budget_s: float, train_frames: int = 4096,
    held_out: int = 256, calibration_steps: int = 10, only: list[str] | None = None, progress: bool = True,
) -> list[dict]:
    """Train and score every candidate not finished yet; returns all result lines, in candidate order."""
    out.mkdir(parents=True, exist_ok=True)
    if only:
        unknown = sorted(set(only) - {c.name for c in candidates} - {c.slug for c in candidates})
        if unknown:
            raise ValueError(f"--only {unknown[0]!r} is no candidate's name ({[c.name for c in candidates]})")
    frames = prepare_frames(out, base, train_frames, held_out)
    done = finished(out)
    for candidate in candidates:
        if candidate.name in done or (only and candidate.name not in only and candidate.slug not in only):
            continue
        print(f"== {candidate.name}", flush=True)
        row = train_candidate(candidate, frames, base, out / "runs" / candidate.slug, budget_s=budget_s,
                              calibration_steps=calibration_steps, progress=progress)
        with (out / RESULTS).open("a") as f:
            f.write(json.dumps(row) + "\n")
        done[candidate.name] = row
        print(json.dumps({k: row[k] for k in ("name", "steps", "cpu_s", "psnr", "psnr_worst_decile", "ssim",
                                                "detail_ratio")}), flush=True)
    return [done[c.name] for c in candidates if c.name in done]


# ---------------------------------------------------------------------- decode time and the table


@torch.no_grad()
def time_decode(
    out: Path, candidates: tuple[Candidate, ...], base: Config, *, threads: int = 2, repeats: int = 20,
) -> dict[str, float]:
    """Median milliseconds of ``VideoVAE.decode`` of one chunk at the config's resolution, per candidate."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    path = out / DECODE
    times = json.loads(path.read_text()) if path.exists() else {}
    try:
        for candidate in candidates:
            trained = out / "runs" / candidate.slug / "vae"
            ae = AutoencoderTiny.from_pretrained(trained) if (trained / "config.json").is_file() else \
                build_autoencoder(**dataclasses.asdict(candidate.vae))
            vae = VideoVAE(ae).eval()
            side = base.model.resolution // vae.spatial_factor
            latents = torch.randn(1, vae.latent_channels, base.model.chunk_frames, side, side,
                                  generator=torch.Generator().manual_seed(0))
            runs = []
            for k in range(3 + repeats):
                begin = time.perf_counter()
                vae.decode(latents)
                if k >= 3:
                    runs.append(1000 * (time.perf_counter() - begin))
            times[candidate.name] = statistics.median(runs)
            print(f"{candidate.name}: {times[candidate.name]:.1f} ms", flush=True)
    finally:
        torch.set_num_threads(previous)
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**times, "_threads": threads, "_repeats": repeats,
                                "_chunk": [base.model.chunk_frames, base.model.resolution]}, indent=2))
    return times


def markdown_table(rows: list[dict], decode_ms: dict[str, float] | None = None) -> str:
    """One row per finished candidate: design, parameters, steps and CPU time, held-out figures, decode ms."""
    decode_ms = decode_ms or {}
    head = ["candidate", "factor", "latent ch", "decoder blocks", "upsample", "grad", "gan", "params enc / dec (k)",
            "steps", "CPU s", "PSNR dB", "worst 10 % dB", "SSIM", "detail", "decode ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in rows:
        vae, training = row["vae"], row["training"]
        ms = decode_ms.get(row["name"])
        cells = [
            row["name"], f"{row['factor']}x", str(vae["latent_channels"]),
            ",".join(str(b) for b in vae["num_decoder_blocks"]) + f" x{vae['decoder_block_out_channels'][0]}",
            vae["upsample_fn"], str(training.get("grad_weight", 0)), str(training.get("gan_weight", 0)),
            f"{row['params_encoder'] / 1e3:.0f} / {row['params_decoder'] / 1e3:.0f}", str(row["steps"]),
            f"{row['cpu_s']:.0f}", f"{row['psnr']:.2f}", f"{row['psnr_worst_decile']:.2f}", f"{row['ssim']:.3f}",
            f"{row['detail_ratio']:.2f}", "n/a" if ms is None else f"{ms:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="results folder: ablation.jsonl, ablation.md, frames, runs/")
    parser.add_argument("--config", default="default", help="base config: resolution, data, training.vae")
    parser.add_argument("--candidates", default=None, help="JSON file of candidates (default: the built-in ten)")
    parser.add_argument("--only", nargs="+", default=None, help="train only these candidates (names or folder names)")
    parser.add_argument("--budget-min", type=float, default=6.0, help="CPU minutes of training per candidate")
    parser.add_argument("--train-frames", type=int, default=4096, help="pre-rendered training frames")
    parser.add_argument("--held-out", type=int, default=256, help="held-out frames scored (full frames)")
    parser.add_argument("--calibration-steps", type=int, default=10, help="steps timed to size each candidate's run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while training (the budget is CPU time)")
    parser.add_argument("--time-decode", action="store_true",
                        help="only measure decode ms of a chunk (run it while nothing else runs on the machine)")
    parser.add_argument("--decode-threads", type=int, default=2, help="torch threads for --time-decode")
    parser.add_argument("--repeats", type=int, default=20, help="decodes timed per candidate (median)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    base = load_config(args.config)
    candidates = load_candidates(args.candidates) if args.candidates else CANDIDATES
    out = Path(args.out)
    for key in ("budget_min", "train_frames", "held_out", "calibration_steps", "threads", "repeats"):
        if getattr(args, key) <= 0:
            raise ValueError(f"--{key.replace('_', '-')} must be positive, got {getattr(args, key)}")
    selected = tuple(c for c in candidates if not args.only or c.name in args.only or c.slug in args.only)
    if args.time_decode:
        time_decode(out, selected, base, threads=args.decode_threads, repeats=args.repeats)
    else:
        torch.set_num_threads(args.threads)
        run_ablation(out, candidates, base, budget_s=60 * args.budget_min, train_frames=args.train_frames,
                     held_out=args.held_out, calibration_steps=args.calibration_steps, only=args.only,
                     progress=not args.no_progress)
    rows = list(finished(out).values())
    order = {c.name: i for i, c in enumerate(candidates)}
    rows.sort(key=lambda r: order.get(r["name"], len(order)))
    decode = {k: v for k, v in json.loads((out / DECODE).read_text()).items() if not k.startswith("_")} \
        if (out / DECODE).exists() else {}
    table = markdown_table(rows, decode)
    (out / TABLE).write_text(table + "\n")
    print(table)
    print(f"wrote {out / RESULTS} and {out / TABLE}")
    return 0
