"""`mirage-gym eval compare`: is one evaluation's figure really better than another's?

Two ``mirage-gym eval`` runs on the same trajectories and noise seed (two generators, or one generator with
other settings) are paired trajectory by trajectory. For every memory mode both ran and every summary figure
(:data:`~mirage_gym.eval.runner.METRICS`): the two means, the mean paired difference (other - base) and its
95 % percentile bootstrap interval over the trajectories. A generated rollout feeds its own depth back into
its memory, so two close models can part ways on one trajectory and not on the next; the interval says how
far the mean difference would move with other houses of the same kinds. A difference whose interval holds
zero is one these trajectories cannot tell apart ("within noise"); otherwise the figure's direction says
whether the other run is better or worse.

The runs must have been made on the same trajectories (resolution, chunk, rooms, kinds, path lengths, moving
objects, frame time, seed); a pair that was not is refused, naming what differs.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from mirage_gym.eval.agreement import bootstrap_mean_ci
from mirage_gym.eval.runner import METRICS

__all__ = ["TRAJECTORY_FIELDS", "load_eval", "compare_runs", "markdown_compare", "add_arguments", "run"]

# EvalConfig fields that decide the trajectories and the noise: two runs are comparable only where they agree.
TRAJECTORY_FIELDS = ("resolution", "fov_deg", "chunk", "rooms", "kinds", "chunks", "moving_objects", "frame_time",
                     "seed")


def load_eval(path: str | Path) -> dict[str, Any]:
    """The ``results`` of an ``eval.json`` (a results folder of ``mirage-gym eval`` or the file itself)."""
    path = Path(path)
    file = path / "eval.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a `mirage-gym eval` results folder or its eval.json")
    try:
        results = json.loads(file.read_text()).get("results")
    except (ValueError, AttributeError) as err:
        raise ValueError(f"{file} is not a `mirage-gym eval` result (not a JSON object)") from err
    if not isinstance(results, dict) or not {"rows", "config"} <= results.keys():
        raise ValueError(f"{file} is not a `mirage-gym eval` result (no results.rows / results.config)")
    return results


def _trajectories(results: dict[str, Any], mode: str) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["kind"], int(r["room_seed"])): r for r in results["rows"] if r["mode"] == mode}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def compare_runs(base: dict[str, Any], other: dict[str, Any], *, modes: list[str] | None = None, n_boot: int = 10000,
            seed: int = 0) -> dict[str, Any]:
    """Paired differences (other - base) of every summary figure, per memory mode both runs have.

    Returns ``{"base", "other", "trajectories", "modes": {mode: {figure: entry}}}``, each entry with ``base``,
    ``other`` (the means over the trajectories where both are finite), ``difference``, ``ci`` (95 % percentile
    bootstrap of the mean difference, ``n_boot`` resamples of the trajectories), ``pairs`` and ``verdict``
    ("better", "worse" or "within noise", in the figure's own direction).
    """
    differ = [f"{name} {base['config'].get(name)!r} vs {other['config'].get(name)!r}" for name in TRAJECTORY_FIELDS
              if base["config"].get(name) != other["config"].get(name)]
    if differ:
        raise ValueError("the two runs were not made on the same trajectories: " + "; ".join(differ))
    shared = [m for m in dict.fromkeys(r["mode"] for r in base["rows"]) if any(r["mode"] == m for r in other["rows"])]
    if modes is not None:
        missing = [m for m in modes if m not in shared]
        if missing:
            raise ValueError(f"mode(s) {missing} are not in both runs (both have {shared})")
        shared = list(modes)
    if not shared:
        raise ValueError("the two runs share no memory mode")
    if n_boot < 1:
        raise ValueError(f"need at least one bootstrap resample, got {n_boot}")
    out: dict[str, Any] = {"base": base.get("generator"), "other": other.get("generator"), "modes": {}}
    for mode in shared:
        rows_b, rows_o = _trajectories(base, mode), _trajectories(other, mode)
        if rows_b.keys() != rows_o.keys():
            only = sorted(rows_b.keys() ^ rows_o.keys())
            raise ValueError(f"mode {mode!r}: the runs do not hold the same trajectories (in one only: {only})")
        keys = sorted(rows_b)
        out["trajectories"] = [f"{kind} {room}" for kind, room in keys]
        figures = {}
        for i, (key, _, higher) in enumerate(METRICS):
            # A figure an older run did not have counts as missing there, as a NaN does.
            pairs = [(rows_b[k].get(key), rows_o[k].get(key)) for k in keys]
            pairs = [(b, o) for b, o in pairs if _finite(b) and _finite(o)]
            entry: dict[str, Any] = {"pairs": len(pairs), "higher_is_better": higher}
            if not pairs:
                figures[key] = {**entry, "base": None, "other": None, "difference": None, "ci": [None, None],
                                "verdict": "n/a"}
                continue
            b, o = np.array(pairs, dtype=np.float64).T
            diffs = o - b
            low, high = bootstrap_mean_ci(diffs, n_boot, seed=seed + i)
            if low is None or high is None or low <= 0.0 <= high:
                verdict = "within noise"
            else:
                verdict = "better" if (low > 0.0) == higher else "worse"
            figures[key] = {**entry, "base": float(b.mean()), "other": float(o.mean()),
                            "difference": float(diffs.mean()), "ci": [low, high], "verdict": verdict}
        out["modes"][mode] = figures
    return out


def markdown_compare(result: dict[str, Any]) -> str:
    """One table per mode: figure | base | other | other - base | 95 % interval | verdict."""
    titles = {key: title for key, title, _ in METRICS}
    lines = [f"base: {result['base']}; other: {result['other']}; paired over {len(result['trajectories'])} "
             f"trajectories, 95 % percentile bootstrap of the mean difference"]
    for mode, figures in result["modes"].items():
        lines += ["", f"mode {mode}:", "", "| figure | base | other | other - base | 95 % interval | verdict |",
                  "|---|---|---|---|---|---|"]
        for key, entry in figures.items():
            if entry["base"] is None:
                lines.append(f"| {titles[key]} | n/a | n/a | n/a | n/a | n/a |")
                continue
            low, high = entry["ci"]
            lines.append(f"| {titles[key]} | {entry['base']:.3f} | {entry['other']:.3f} | {entry['difference']:+.3f}"
                         f" | [{low:+.3f}, {high:+.3f}] | {entry['verdict']} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", help="results folder (or eval.json) of the run to compare against")
    parser.add_argument("other", help="results folder (or eval.json) of the run being compared")
    parser.add_argument("--modes", nargs="+", default=None, help="memory modes to compare (default: every shared one)")
    parser.add_argument("--bootstrap", type=int, default=10000, help="bootstrap resamples of the trajectories")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--out", default=None, help="also write compare.json and compare.md here")


def run(args: argparse.Namespace) -> int:
    from mirage_gym.provenance import write_results

    # Everything is read and checked before --out is touched, so a refused pair leaves earlier results as they were.
    result = compare_runs(load_eval(args.base), load_eval(args.other), modes=args.modes, n_boot=args.bootstrap,
                     seed=args.seed)
    table = markdown_compare(result)
    print(table)
    if args.out is not None:
        path = write_results(args.out, "compare", result, config={"base": str(args.base), "other": str(args.other),
                                                                   "bootstrap": args.bootstrap, "seed": args.seed})
        (Path(args.out) / "compare.md").write_text(table + "\n")
        print(f"wrote {path} and {Path(args.out) / 'compare.md'}")
    return 0
