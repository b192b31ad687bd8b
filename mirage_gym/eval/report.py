"""Presentation of an :class:`~mirage_gym.eval.runner.EvalResult`: a markdown table and PNG plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mirage_gym.eval.runner import METRICS, EvalResult, RevisitStrip

__all__ = ["markdown_table", "plot_summary", "plot_fidelity", "strip_image", "save_strips"]

_MIB = 1024.0**2
_DIGITS3 = ("revisit_ssim", "reproj_l1", "depth_abs_rel")  # figures printed to three decimals


def _fmt(value: float | int | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_table(result: EvalResult) -> str:
    """One row per mode: every summary metric, the dynamic tokens let into the memory, cost and memory; then the
    autoencoder's held-out reconstruction, when the result has it."""
    head = ["mode", *(title for _, title, _ in METRICS), "dynamic tokens written", "s/chunk", "memory MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for mode, entry in result.summary.items():
        cells = [mode, *(_fmt(entry[key], 3 if key in _DIGITS3 else 2) for key, _, _ in METRICS)]
        if "dynamic_tokens_written" in entry:
            cells.append(f"{entry['dynamic_tokens_written']} / {entry['dynamic_tokens_visible']}")
        else:
            cells.append("n/a")
        cells += [_fmt(entry["seconds_per_chunk"], 3), _fmt(entry["memory_bytes"] / _MIB, 3)]
        lines.append("| " + " | ".join(cells) + " |")
    if any("ci95" in entry for entry in result.summary.values()):
        head = ["mode", "trajectories", *(title for _, title, _ in METRICS)]
        lines += ["", "95 % bootstrap intervals of the means above, resampling the trajectories:", "",
                  "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for mode, entry in result.summary.items():
            intervals = [_fmt_interval(entry["ci95"][key], 3 if key in _DIGITS3 else 2) for key, _, _ in METRICS]
            lines.append("| " + " | ".join([mode, str(entry["trajectories"]), *intervals]) + " |")
    if result.autoencoder:
        ae = result.autoencoder
        lines += ["", f"Autoencoder on {ae['frames']} held-out frames (decode(encode(x)) vs x, full frames):", "",
                  "| PSNR dB | worst-decile PSNR dB | SSIM | detail ratio | colour kept |", "|---|---|---|---|---|",
                  f"| {_fmt(ae['psnr'])} | {_fmt(ae['psnr_worst_decile'])} | {_fmt(ae['ssim'], 3)} | "
                  f"{_fmt(ae['detail_ratio'])} | {_fmt(ae['chroma_ratio'])} |"]
    if result.reprojection:
        rp = result.reprojection
        lines += ["", f"Reprojection ceiling on {rp['views']} held-out views: a view read from the cache of a moved "
                  "one with ground-truth depth, empty cells given the view's own encoding, PSNR dB on the covered "
                  "pixels:", "", "| move | autoencoder | nearest read | bilinear read | covered | pairs |",
                  "|---|---|---|---|---|---|"]
        for name, entry in rp["moves"].items():
            lines.append(f"| {name} | {_fmt(entry['autoencoder'])} | {_fmt(entry['nearest'])} | "
                         f"{_fmt(entry['bilinear'])} | {_fmt(entry['covered'])} | {entry['pairs']} |")
    if result.observed_filter:
        of = result.observed_filter
        lines += ["", f"Memory filter on the rendered chunks of the {of['trajectories']} trajectories with moving "
                  "objects (frames that show them; the generated rollouts above do not):", "",
                  "| depth | moving-object tokens kept | static tokens dropped |", "|---|---|---|"]
        for source, title in (("model_depth", "predicted from the encoding"), ("true_depth", "true")):
            e = of[source]
            lines.append(f"| {title} | {_share(e['dynamic_kept'], e['dynamic_visible'])} | "
                         f"{_share(e['static_dropped'], e['static'])} |")
    return "\n".join(lines)


def _fmt_interval(bounds: list[float | None], digits: int) -> str:
    low, high = bounds
    return "n/a" if low is None or high is None else f"[{low:.{digits}f}, {high:.{digits}f}]"


def _share(part: int, whole: int) -> str:
    return f"{part} / {whole} ({100.0 * part / whole:.1f} %)" if whole else f"{part} / 0"


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


def _labelled(image: np.ndarray, label: str, scale: int) -> np.ndarray:
    """``image`` enlarged ``scale`` times (nearest: pixels stay pixels) under a white band with ``label``."""
    import cv2

    big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    band = np.full((18, big.shape[1], 3), 255, np.uint8)
    cv2.putText(band, label, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([band, big])


def strip_image(strip: RevisitStrip, *, scale: int = 2) -> np.ndarray:
    """One row: ground truth | autoencoder reconstruction | each mode's frame back at the start pose, each
    labelled with its PSNR against the ground truth (whole frame)."""
    from mirage_gym.metrics import psnr, to_unit_chw
    import torch

    truth = to_unit_chw(torch.from_numpy(strip.truth)[None])

    def db(image: np.ndarray) -> str:
        return f"{float(psnr(to_unit_chw(torch.from_numpy(image)[None]), truth)[0]):.1f} dB"

    panels = [_labelled(strip.truth, f"truth: {strip.kind}, house {strip.room_seed}", scale)]
    if strip.reconstruction is not None:
        panels.append(_labelled(strip.reconstruction, f"autoencoder {db(strip.reconstruction)}", scale))
    for mode, image in strip.returns.items():
        panels.append(_labelled(image, f"{mode}, back at frame {strip.frame}: {db(image)}", scale))
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)


def save_strips(result: EvalResult, folder: str | Path, *, scale: int = 2) -> list[Path]:
    """``folder/<kind>_<house>.png`` per strip of ``result`` and ``folder/revisit_strips.png`` with all of them
    stacked (one row per trajectory that returns to its start). Returns the files written."""
    import cv2

    if not result.strips:
        return []
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written, rows = [], []
    for strip in result.strips:
        row = strip_image(strip, scale=scale)
        path = folder / f"{strip.kind}_{strip.room_seed}.png"
        cv2.imwrite(str(path), row[..., ::-1])
        written.append(path)
        rows.append(row)
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    path = folder / "revisit_strips.png"
    cv2.imwrite(str(path), np.concatenate(rows)[..., ::-1])
    return [*written, path]
