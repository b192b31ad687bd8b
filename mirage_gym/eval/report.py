"""Presentation of an :class:`~mirage_gym.eval.runner.EvalResult`: a markdown table and PNG plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mirage_gym.eval.runner import METRICS, EvalResult

__all__ = ["markdown_table", "plot_summary", "plot_fidelity"]

_MIB = 1024.0**2


def _fmt(value: float | int | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_table(result: EvalResult) -> str:
    """One row per mode: every summary metric, the dynamic tokens let into the memory, cost and memory; then the
    autoencoder's held-out reconstruction, when the result has it."""
    head = ["mode", *(title for _, title, _ in METRICS), "dynamic tokens in memory", "s/chunk", "memory MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for mode, entry in result.summary.items():
        digits = {"revisit_ssim": 3, "reproj_l1": 3, "depth_abs_rel": 3}
        cells = [mode, *(_fmt(entry[key], digits.get(key, 2)) for key, _, _ in METRICS)]
        if "dynamic_tokens_written" in entry:
            cells.append(f"{entry['dynamic_tokens_written']} / {entry['dynamic_tokens_visible']}")
        else:
            cells.append("n/a")
        cells += [_fmt(entry["seconds_per_chunk"], 3), _fmt(entry["memory_bytes"] / _MIB, 3)]
        lines.append("| " + " | ".join(cells) + " |")
    if result.autoencoder:
        ae = result.autoencoder
        lines += ["", f"Autoencoder on {ae['frames']} held-out frames (decode(encode(x)) vs x, full frames):", "",
                  "| PSNR dB | worst-decile PSNR dB | SSIM | detail ratio | colour kept |", "|---|---|---|---|---|",
                  f"| {_fmt(ae['psnr'])} | {_fmt(ae['psnr_worst_decile'])} | {_fmt(ae['ssim'], 3)} | "
                  f"{_fmt(ae['detail_ratio'])} | {_fmt(ae['chroma_ratio'])} |"]
    return "\n".join(lines)


def plot_summary(result: EvalResult, path: str | Path) -> Path:
    """Bar charts of every summary metric, one bar per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(result.summary)
    cols = 3
    rows = math.ceil(len(METRICS) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, title, higher) in zip(axes.flat, METRICS, strict=False):
        values = [result.summary[m][key] for m in modes]
        ax.bar(modes, [v if math.isfinite(v) else 0.0 for v in values], color=colors[: len(modes)])
        for x, v in enumerate(values):
            ax.text(x, 0, _fmt(v), ha="center", va="bottom", fontsize=8)
        ax.set_title(f"{title} ({'higher' if higher else 'lower'} is better)", fontsize=9)
    for ax in list(axes.flat)[len(METRICS) :]:
        ax.axis("off")
    fig.suptitle(f"mirage-gym eval: {result.generator}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_fidelity(result: EvalResult, path: str | Path) -> Path:
    """PSNR against the ground truth (observed pixels) frame by frame, one panel per trajectory kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(r["kind"] for r in result.rows))
    fig, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 3), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        for mode in result.summary:
            curves = [r["fidelity_per_frame"] for r in result.rows if r["kind"] == kind and r["mode"] == mode]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            with np.errstate(all="ignore"):
                mean = np.nanmean(np.array([c[:length] for c in curves], dtype=float), axis=0)
            ax.plot(np.arange(1, length + 1), mean, label=mode)
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel("frame")
        ax.set_ylabel("PSNR vs ground truth (dB)")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
