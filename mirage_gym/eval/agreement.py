"""Does a world model rank policies the way the real world does? Spearman, Pearson and MMRV over a zoo.

Given per-episode scores of K policies in the world-model env ("sim") and in the ground-truth
env ("real", the procedural house with the oracle renderer), on the same episodes:

* **Spearman rho** and **Pearson r** (``scipy.stats``) between the K per-policy means;
* **MMRV**, the mean maximum rank violation of SIMPLER (Li et al. 2024, "Evaluating Real-World
  Robot Manipulation Policies in Simulation"), exactly as its code computes it::

      MMRV = 1/K sum_i max_j |real_i - real_j| * 1[(sim_i > sim_j) != (real_i > real_j)]

  a pair whose order differs between sim and real costs how far apart the policies really
  are. SIMPLER's scores are success rates in [0, 1]; here scores that are already fractions
  (coverage, the fraction of the house's navigable floor seen, and success) are used as they are,
  and any other score (a return, ``explored_m2`` in square metres) is first min-max normalised
  over the K policies' real means, ``(real - min) / (max - min)``, so MMRV is in [0, 1] for every metric
  (0: the world model never orders two policies differently from the house; only the real
  values are scaled, the sim values enter only through their order);
* **bootstrap intervals**: ``n_boot`` resamples (seeded) of each policy's episodes with
  replacement -- the same episode indices in sim and real, since episode k is the same room,
  start and seed in both -- recomputing every statistic; the interval is the 2.5-97.5 percentile.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["mmrv", "spearman", "pearson", "normalise_real", "agreement", "bootstrap_mean_ci",
           "percentile_interval"]

FRACTION_METRICS = frozenset({"coverage", "success"})  # in [0, 1] by meaning (coverage: of the house's floor)


def mmrv(sim: Sequence[float], real: Sequence[float]) -> float:
    """Mean maximum rank violation (SIMPLER); ``real`` should be in [0, 1] (see :func:`normalise_real`)."""
    sim, real = np.asarray(sim, float), np.asarray(real, float)
    if sim.shape != real.shape or sim.ndim != 1:
        raise ValueError(f"sim and real must be 1-D of the same length, got {sim.shape} and {real.shape}")
    violated = (sim[:, None] > sim[None, :]) != (real[:, None] > real[None, :])
    gaps = np.abs(real[:, None] - real[None, :]) * violated
    return float(gaps.max(axis=1).mean())


def _corr(fn, sim, real) -> float:
    sim, real = np.asarray(sim, float), np.asarray(real, float)
    if len(sim) < 2 or np.all(sim == sim[0]) or np.all(real == real[0]):
        return float("nan")  # undefined for a constant input
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(sim, real)[0])


def spearman(sim: Sequence[float], real: Sequence[float]) -> float:
    return _corr(stats.spearmanr, sim, real)


def pearson(sim: Sequence[float], real: Sequence[float]) -> float:
    return _corr(stats.pearsonr, sim, real)


def normalise_real(real: Sequence[float], metric: str) -> np.ndarray:
    """Real scores in [0, 1] for MMRV: fractions as they are, anything else min-max over the policies."""
    real = np.asarray(real, float)
    if metric in FRACTION_METRICS:
        return real
    span = real.max() - real.min()
    return np.zeros_like(real) if span == 0 else (real - real.min()) / span


def _statistics(sim_means: np.ndarray, real_means: np.ndarray, metric: str) -> dict[str, float]:
    return {
        "spearman": spearman(sim_means, real_means),
        "pearson": pearson(sim_means, real_means),
        "mmrv": mmrv(sim_means, normalise_real(real_means, metric)),
    }


def percentile_interval(values: Sequence[float]) -> list[float | None]:
    """The 2.5-97.5 percentile interval of the finite ``values`` (``[None, None]``: none)."""
    finite = np.asarray([v for v in values if math.isfinite(v)])
    if len(finite) == 0:
        return [None, None]
    return [float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))]


def agreement(sim: Sequence[Sequence[float]], real: Sequence[Sequence[float]], metric: str = "return",
              n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Spearman, Pearson and MMRV between sim and real per-policy means, with bootstrap intervals.

    ``sim[i]`` and ``real[i]`` are policy i's per-episode scores, episode k paired in both.
    Returns ``{stat: {"value", "ci": [lo, hi]}}`` plus ``"policies"`` and ``"n_boot"``.
    """
    if len(sim) != len(real):
        raise ValueError(f"sim has {len(sim)} policies, real {len(real)}")
    if len(sim) < 3:
        raise ValueError(f"agreement needs at least 3 policies, got {len(sim)}")
    sim_eps = [np.asarray(s, float) for s in sim]
    real_eps = [np.asarray(r, float) for r in real]
    for i, (s, r) in enumerate(zip(sim_eps, real_eps, strict=True)):
        if s.shape != r.shape or s.ndim != 1 or len(s) == 0:
            raise ValueError(f"policy {i}: sim and real need the same (paired) episodes, got {s.shape} and {r.shape}")
    point = _statistics(np.array([s.mean() for s in sim_eps]), np.array([r.mean() for r in real_eps]), metric)
    rng = np.random.default_rng(seed)
    boots: dict[str, list[float]] = {key: [] for key in point}
    for _ in range(int(n_boot)):
        sim_means, real_means = [], []
        for s, r in zip(sim_eps, real_eps, strict=True):
            idx = rng.integers(0, len(s), len(s))
            sim_means.append(s[idx].mean())
            real_means.append(r[idx].mean())
        for key, value in _statistics(np.array(sim_means), np.array(real_means), metric).items():
            boots[key].append(value)
    out: dict[str, Any] = {key: {"value": value, "ci": percentile_interval(boots[key]) if n_boot else [None, None]}
                           for key, value in point.items()}
    out["n_boot"] = int(n_boot)
    out["normalised_real_for_mmrv"] = "as is (a fraction)" if metric in FRACTION_METRICS else "min-max over policies"
    return out


def bootstrap_mean_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0) -> list[float | None]:
    """2.5-97.5 percentile bootstrap interval of a mean."""
    values = np.asarray(values, float)
    if len(values) == 0 or n_boot == 0:
        return [None, None]
    rng = np.random.default_rng(seed)
    # One draw of every resample at once: the same stream, and the same means, as drawing them one by one.
    means = values[rng.integers(0, len(values), (int(n_boot), len(values)))].mean(axis=1)
    return percentile_interval(means)
