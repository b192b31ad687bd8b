"""A training run's curves on one page: ``mirage-gym train curves --run runs/sharp --out curves.png``.

Reads the tensorboard logs that :func:`~mirage_gym.training.loop.fit` writes (``RUN/tb`` for one
stage, or ``RUN/STAGE/tb`` for each stage of ``mirage-gym train all``) and draws one panel per
scalar (``train/*`` and ``val/*``), one row per stage. A run resumed from a checkpoint has several
event files; where they overlap the newest one wins (the loop already drops a resumed run's events
after its checkpoint). Training curves are drawn raw and as a running mean over ``smooth`` points.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

__all__ = ["read_scalars", "stage_folders", "plot_curves"]

STAGES = ("vae", "generator", "self_forcing", "depth")


def read_scalars(tb: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{tag: (steps, values)}`` of every scalar in the event files of ``tb``, steps ascending and unique."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(tb.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no tensorboard event files in {tb}")
    merged: dict[str, dict[int, float]] = {}
    for path in files:  # oldest first: a newer file's value at a step replaces an older one's
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            merged.setdefault(tag, {}).update({e.step: e.value for e in events.Scalars(tag)})
    return {tag: (np.array(sorted(points)), np.array([points[s] for s in sorted(points)]))
            for tag, points in merged.items()}


def stage_folders(run: Path) -> dict[str, Path]:
    """``{stage: tb folder}``: ``run/tb`` itself (one stage's run) or each ``run/STAGE/tb`` of a whole model's run."""
    if (run / "tb").is_dir():
        return {run.name: run / "tb"}
    found = {stage: run / stage / "tb" for stage in STAGES if (run / stage / "tb").is_dir()}
    if not found:
        raise FileNotFoundError(f"{run} has no tb/ folder, nor any of {', '.join(s + '/tb' for s in STAGES)}")
    return found


def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or values.size < window:
        return values
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    head = cumulative[1:window] / np.arange(1, window)
    return np.concatenate([head, (cumulative[window:] - cumulative[:-window]) / window])


def plot_curves(run: str | Path, out: str | Path, *, tags: list[str] | None = None, smooth: int = 10) -> Path:
    """Draw every stage's scalars (or only ``tags``, e.g. ``["train/loss", "val/psnr"]``) into ``out`` (a PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = {stage: read_scalars(tb) for stage, tb in stage_folders(Path(run)).items()}
    rows = []
    for stage, scalars in stages.items():
        wanted = [t for t in (tags or sorted(scalars)) if t in scalars and t != "train/lr"]
        if wanted:
            rows.append((stage, wanted))
    if not rows:
        raise ValueError(f"none of the tags {tags} is in the logs of {run}")
    cols = max(len(w) for _, w in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(3.2 * cols, 2.6 * len(rows)), squeeze=False)
    for r, (stage, wanted) in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            if c >= len(wanted):
                ax.axis("off")
                continue
            steps, values = stages[stage][wanted[c]]
            if wanted[c].startswith("train/") and smooth > 1:
                ax.plot(steps, values, color="0.8", linewidth=0.6)
                ax.plot(steps, _running_mean(values, smooth), linewidth=1.2)
            else:
                ax.plot(steps, values, marker="." if steps.size < 50 else None, linewidth=1.2)
            ax.set_title(f"{stage}: {wanted[c]}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_xlabel("step", fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="a stage's run folder (with tb/) or a `train all` folder")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--tags", nargs="+", default=None, help="only these scalars (default: all but train/lr)")
    parser.add_argument("--smooth", type=int, default=10, help="running mean over this many logged points")


def run(args: argparse.Namespace) -> int:
    if args.smooth < 1:
        raise ValueError(f"--smooth must be >= 1, got {args.smooth}")
    print(f"wrote {plot_curves(args.run, args.out, tags=args.tags, smooth=args.smooth)}")
    return 0
