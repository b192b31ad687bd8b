"""Is the world model useful for RL? Policy-ranking agreement (``mirage-gym eval rl``) and dream-to-real
transfer (``mirage-gym eval transfer``).

**Ranking agreement.** A zoo of K >= 3 (the issue asks for >= 8) policies runs the same episodes in
two environments: the *world-model* env (a generator -- the shipped ``default`` model unless told
otherwise -- and env options of the user's choice) and the *ground-truth* env (``generator="oracle"``:
the procedural house rendered exactly). Episode k uses the held-out room ``first_room + k`` (room seeds
>= 1,000,000 are never trained on) and reset seed ``seed + k``, in both envs and for every policy.
Per policy: return, coverage, explored m^2, collisions, success (Nav); over policies: Spearman rho,
Pearson r and MMRV for return and exploration (and success), with bootstrap intervals
(:mod:`mirage_gym.eval.agreement`).

**Which exploration metric is compared** (:meth:`RLEvalConfig.exploration_metric`, recorded as
``"exploration_metric"`` in the result and named in the table): ``coverage``, the fraction of the
house's navigable floor seen, when both envs run the house's physics; ``explored_m2``, the floor
area shown (m^2), when either runs ``physics="generated"``, whose ``info["coverage"]`` is ``inf`` (a
generated world has no known total). Both envs report ``explored_m2`` under either physics, each
physics measuring it its own way (generated physics gives a few times the house's area for the same
walk, see :mod:`mirage_gym.envs.tasks`): Spearman, Pearson and MMRV do not depend on that scale, the
scatter's y = x line does. An episode's ``coverage`` is logged as ``null`` where it is not measured.

**Frame size.** Both envs make frames of ``env_resolution`` (default: the world model's own, 128x128
for the shipped default) and the policies see them resized to ``resolution`` (64x64, as the PPO zoo was
trained; :class:`~mirage_gym.wrappers.ResizeFrames`). A model made to generate below its own size is
another, worse world: the shipped default's depth on held-out start views is 0.61 abs-rel at 64x64
against 0.18 at 128x128.

Python API::

    from mirage_gym.eval.rl import RLEvalConfig, evaluate_policies, load_policies
    config = RLEvalConfig(env_id="MirageRoom-v0", world_generator="default", episodes=20)
    result = evaluate_policies(load_policies(["agents/zoo/MirageRoom-v0.json"], config.env_id), config, "runs/rl")
    print(result["table"])

**Resumable.** Every finished (policy, env, episode) is appended as one JSON line to
``OUT/episodes.jsonl`` (one ``write`` + ``fsync``); a rerun with the same ``--out`` skips what is
there, and a torn last line (a kill mid-write) is cut off. ``OUT/rl_run.json`` holds the run's
settings: a rerun with other settings (or another policy under a known name) is an error, not a mix.

**Bad input** -- an unknown policy or missing file, a PPO zip trained for another observation space,
fewer than 3 policies, duplicate names -- is a ``ValueError``/``FileNotFoundError`` before any episode
runs (the envs are built and every policy is checked against them first).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mirage_gym.eval.agreement import agreement, bootstrap_mean_ci
from mirage_gym.eval.policies import SCRIPTED, DEFAULT_WRAPPER_KWARGS, Policy, PPOPolicy

from mirage_gym.config import EVAL_ROOM_SEED_OFFSET

__all__ = [
    "ENV_IDS",
    "QUICK_POLICIES",
    "RLEvalConfig",
    "evaluate_policies",
    "load_policies",
    "markdown_table",
    "plot_scatter",
    "dream_to_real",
    "repo_root",
]

ENV_IDS = ("MirageRoom-v0", "MirageRoomNav-v0")
SIDES = ("truth", "world")
METRICS = ("return", "coverage", "explored_m2", "collisions", "success", "length")
QUICK_POLICIES = ("random", "turn_in_place", "bump_and_turn")
LOG = "episodes.jsonl"
RUN = "rl_run.json"
_KILL_AFTER = "MIRAGE_RL_KILL_AFTER"  # tests: SIGKILL this process after N episodes were logged


def repo_root() -> Path:
    """The source checkout holding ``agents/`` (the package's parent folder)."""
    return Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- configuration


@dataclass
class RLEvalConfig:
    """What is evaluated where. ``world_kwargs``/``truth_kwargs`` go to ``gym.make`` (e.g. ``physics=...``)."""

    env_id: str = "MirageRoom-v0"
    world_generator: str = "default"
    truth_generator: str = "oracle"
    episodes: int = 20
    seed: int = 1000
    first_room: int = EVAL_ROOM_SEED_OFFSET
    resolution: int = 64  # the frames the policies see
    env_resolution: int | None = None  # the frames the envs make (None: the world model's own), resized for them
    chunk: int = 4
    max_episode_steps: int | None = None  # None: the registration's (200 Room, 100 Nav)
    memory: str = "latent"
    device: str = "cpu"
    world_kwargs: dict[str, Any] = field(default_factory=dict)
    truth_kwargs: dict[str, Any] = field(default_factory=dict)
    sides: tuple[str, ...] = SIDES
    n_boot: int = 1000

    @classmethod
    def quick(cls, **overrides: Any) -> RLEvalConfig:
        """CI: oracle vs oracle at 64x64, 2 episodes of 8 steps, 200 bootstrap resamples."""
        base = dict(world_generator="oracle", episodes=2, max_episode_steps=8, resolution=64, n_boot=200)
        merged = {**base, **overrides}
        merged.setdefault("env_resolution", merged["resolution"])  # the envs make the policies' frames
        return cls(**merged)

    def validate(self) -> None:
        if self.env_id not in ENV_IDS:
            raise ValueError(f"env must be one of {ENV_IDS}, got {self.env_id!r}")
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.first_room < EVAL_ROOM_SEED_OFFSET:
            raise ValueError(f"first room {self.first_room} is not held out: room seeds below "
                             f"{EVAL_ROOM_SEED_OFFSET} are training rooms")
        if self.env_resolution is not None and self.env_resolution < self.resolution:
            raise ValueError(f"env_resolution ({self.env_resolution}) must be at least resolution ({self.resolution}): "
                             "frames are only resized down for the policies")
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {self.max_episode_steps}")
        if not self.sides or any(side not in SIDES for side in self.sides):
            raise ValueError(f"sides must be a non-empty subset of {SIDES}, got {self.sides}")
        if self.n_boot < 0:
            raise ValueError(f"n_boot must be >= 0, got {self.n_boot}")

    def env_kwargs(self, side: str) -> dict[str, Any]:
        generator = self.world_generator if side == "world" else self.truth_generator
        kwargs: dict[str, Any] = dict(generator=str(generator), resolution=self.env_resolution, chunk=self.chunk,
                                      memory=self.memory, device=self.device)
        if self.max_episode_steps is not None:
            kwargs["max_episode_steps"] = self.max_episode_steps
        kwargs.update(self.world_kwargs if side == "world" else self.truth_kwargs)
        return kwargs

    def exploration_metric(self) -> str:
        """The exploration metric compared between the envs (and normalised by dream-to-real).

        ``"coverage"`` (fraction of the house's navigable floor seen) when every env of ``sides`` runs
        the house's physics; ``"explored_m2"`` (floor area shown, m^2) when one runs
        ``physics="generated"``, where coverage is ``inf``. Evaluation episodes start in a house, so
        ``physics=None`` is the house's there.
        """
        generated = any(self.env_kwargs(side).get("physics") == "generated" for side in self.sides)
        return "explored_m2" if generated else "coverage"

    def fingerprint(self) -> dict[str, Any]:
        """The settings an episode's result depends on (not how many episodes or resamples), the models by the
        SHA-256 of their files: a new build of ``"default"`` is another run."""
        from mirage_gym.provenance import generator_identity

        generators = {"world": self.world_generator, "truth": self.truth_generator}
        return {"env_id": self.env_id, "seed": self.seed, "first_room": self.first_room, "resolution": self.resolution,
                "sides": {side: self.env_kwargs(side) for side in SIDES},
                "models": {side: generator_identity(generators[side])["files"] for side in SIDES}}

    def episode(self, k: int) -> tuple[int, int]:
        """(room seed, reset seed) of episode k."""
        return self.first_room + k, self.seed + k


# --------------------------------------------------------------------------- policies


def load_policies(specs: Sequence[str], env_id: str, device: str = "cpu") -> list[Policy]:
    """Policies from names, ``.zip`` files (``NAME=PATH.zip`` to name one) and zoo manifests (``.json``).

    A zoo manifest (``agents/zoo/*.json``) lists ``{"name", "scripted": NAME}`` and
    ``{"name", "ppo": PATH, "wrapper_kwargs": {...}, "recipe": "..."}`` entries; PPO paths are relative
    to the manifest. Unknown names, missing files and duplicate names are errors.
    """
    policies: list[Policy] = []
    for spec in specs:
        spec = str(spec)
        name, _, target = spec.partition("=") if "=" in spec else (None, "", spec)
        if target.endswith(".json"):
            policies += _load_zoo(Path(target), env_id, device)
        elif target.endswith(".zip"):
            policies.append(PPOPolicy(target, name=name, device=device))
        elif target in SCRIPTED:
            policy = SCRIPTED[target]()
            if name:
                policy.name = name
            policies.append(policy)
        else:
            raise ValueError(f"unknown policy {spec!r}: give one of {sorted(SCRIPTED)}, a PPO .zip or a zoo .json")
    names = [p.name for p in policies]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"policy names must be unique; repeated: {duplicates} (name them NAME=PATH.zip)")
    return policies


def _load_zoo(path: Path, env_id: str, device: str) -> list[Policy]:
    if not path.is_file():
        raise FileNotFoundError(f"zoo manifest {path} does not exist")
    try:
        zoo = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"zoo manifest {path} is not valid JSON: {err}") from err
    if zoo.get("env") not in (None, env_id):
        raise ValueError(f"zoo manifest {path} is for {zoo['env']}, not {env_id}")
    policies: list[Policy] = []
    for entry in zoo.get("policies", []):
        if "scripted" in entry:
            if entry["scripted"] not in SCRIPTED:
                raise ValueError(f"{path}: unknown scripted policy {entry['scripted']!r}; known: {sorted(SCRIPTED)}")
            policy = SCRIPTED[entry["scripted"]]()
            policy.name = entry.get("name", policy.name)
        elif "ppo" in entry:
            file = (path.parent / entry["ppo"]).resolve()
            if not file.is_file():
                recipe = entry.get("recipe", "see agents/zoo/README.md")
                raise FileNotFoundError(f"{path}: policy {entry.get('name')!r} file {file} does not exist; "
                                        f"build it with: {recipe}")
            policy = PPOPolicy(file, name=entry.get("name"), wrapper_kwargs=entry.get("wrapper_kwargs"),
                               device=device)
        else:
            raise ValueError(f"{path}: every entry needs 'scripted' or 'ppo', got {entry}")
        policies.append(policy)
    return policies


# --------------------------------------------------------------------------- the resumable log


def _read_log(path: Path) -> list[dict[str, Any]]:
    """The finished episodes; a torn last line (a kill mid-write) is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(end)
    return [json.loads(line) for line in data[:end].decode().splitlines() if line.strip()]


def _append(path: Path, record: dict[str, Any]) -> None:
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_run(
    out: Path, config: RLEvalConfig, policies: Sequence[Policy], done: list[dict[str, Any]]
) -> dict[str, Any]:
    """The run's fingerprint, after checking it and the policies against what ``out`` holds already."""
    fingerprint = json.loads(json.dumps(config.fingerprint()))  # hashes the model files: once a run
    run = out / RUN
    if run.exists():
        previous = json.loads(run.read_text())
        if previous != fingerprint:
            raise ValueError(f"{out} holds a run with other settings ({run}: {previous}); these are "
                             f"{fingerprint}. Use another --out, or the same settings to resume it.")
    def identity(pid: dict[str, Any]) -> dict[str, Any]:  # a PPO zip is its bytes (sha256), wherever it lies
        return {k: v for k, v in pid.items() if k != "path"}

    known = {r["policy"]: identity(r["policy_id"]) for r in done}
    for policy in policies:
        pid = identity(json.loads(json.dumps(policy.describe())))
        if policy.name in known and known[policy.name] != pid:
            raise ValueError(f"{out} holds episodes of another policy named {policy.name!r} ({known[policy.name]}); "
                             f"this one is {pid}. Use another --out or another name.")
    return fingerprint


# --------------------------------------------------------------------------- running


def _make_envs(config: RLEvalConfig) -> dict[str, Any]:
    """The envs of ``config.sides``, their frames resized to the policies' ``resolution``.

    Both make frames of one size: ``env_resolution``, or the world model's own (the size ``gym.make``
    picks for it), which the ground-truth env then renders too.
    """
    import gymnasium as gym

    import mirage_gym  # noqa: F401  (registers the environments)
    from mirage_gym.wrappers import ResizeFrames

    envs: dict[str, Any] = {}
    size = config.env_resolution
    try:
        for side in sorted(config.sides, key=lambda s: s != "world"):  # the world model's size first
            kwargs = config.env_kwargs(side)
            if size is not None:
                kwargs["resolution"] = size
            env = gym.make(config.env_id, **kwargs)
            envs[side] = env
            size = int(env.observation_space["rgb"].shape[2])
            if size != config.resolution:
                envs[side] = ResizeFrames(env, config.resolution)  # only downsizing: smaller frames are an error
    except Exception:
        for env in envs.values():
            env.close()
        raise
    return {side: envs[side] for side in config.sides}


def run_episode(env, policy: Policy, room_seed: int, seed: int) -> dict[str, Any]:
    """One episode through the public Gymnasium API; the metrics of its end and its wall time."""
    begin = time.perf_counter()
    policy.reset(seed)
    obs, info = env.reset(seed=seed, options={"room_seed": int(room_seed)})
    total, collisions, steps = 0.0, 0, 0
    while True:
        obs, reward, terminated, truncated, info = env.step(policy.act(obs))
        total += float(reward)
        collisions += int(bool(info.get("collided", False)))
        steps += 1
        if terminated or truncated:
            break
    coverage = float(info["coverage"])  # inf under generated physics (no house total): logged as null
    return {"return": total, "coverage": coverage if math.isfinite(coverage) else None,
            "explored_m2": float(info["explored_m2"]), "collisions": collisions, "length": steps,
            "success": float(info["success"]) if "success" in info else None,
            "seconds": time.perf_counter() - begin}


def evaluate_policies(policies: Sequence[Policy], config: RLEvalConfig, out: str | os.PathLike,
                      progress: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Run every (side, policy, episode) not yet in ``out/episodes.jsonl``, then summarise all of them.

    Returns ``{"config", "policies", "per_policy", "agreement", "table"}``; writes nothing but the log
    (see :func:`write_outputs` for the JSON, the plot and the table).
    """
    config.validate()
    if len(policies) < 3:
        raise ValueError(f"ranking agreement needs at least 3 policies, got {len(policies)}")
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise ValueError(f"policy names must be unique, got {names}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    log = out / LOG
    done = _read_log(log)
    fingerprint = _check_run(out, config, policies, done)

    # Everything is checked before the first episode: both envs are built, every policy meets their spaces.
    envs = _make_envs(config)
    try:
        for side, env in envs.items():
            for policy in policies:
                policy.check(env.observation_space, env.action_space, config.env_id)
    except Exception:
        for env in envs.values():
            env.close()
        raise
    out.mkdir(parents=True, exist_ok=True)
    if not (out / RUN).exists():
        (out / RUN).write_text(json.dumps(fingerprint, indent=2) + "\n")

    finished = {(r["policy"], r["side"], r["episode"]) for r in done}
    explore = config.exploration_metric()
    kill_after = int(os.environ.get(_KILL_AFTER, "0") or 0)
    written = 0
    try:
        for side, env in envs.items():
            for policy in policies:
                pid = json.loads(json.dumps(policy.describe()))
                for k in range(config.episodes):
                    if (policy.name, side, k) in finished:
                        continue
                    room_seed, seed = config.episode(k)
                    metrics = run_episode(env, policy, room_seed, seed)
                    record = {"policy": policy.name, "policy_id": pid, "side": side, "episode": k,
                              "room_seed": room_seed, "seed": seed, **metrics}
                    _append(log, record)
                    done.append(record)
                    written += 1
                    if progress:
                        progress(f"{side:<5} {policy.name:<16} episode {k + 1}/{config.episodes}: return "
                                 f"{metrics['return']:.3f}, {explore} {metrics[explore]:.3f}, "
                                 f"collisions {metrics['collisions']}")
                    if kill_after and written >= kill_after:
                        os.kill(os.getpid(), signal.SIGKILL)
    finally:
        for env in envs.values():
            env.close()
    return summarise(done, policies, config)


def summarise(records: Sequence[dict[str, Any]], policies: Sequence[Policy], config: RLEvalConfig) -> dict[str, Any]:
    """Per-policy means (with bootstrap intervals) and the agreement statistics, from the logged episodes.

    A metric an env does not measure (``coverage`` under generated physics, logged as ``null``) gets
    ``None`` for its mean, interval and episodes. The exploration metric compared is
    :meth:`RLEvalConfig.exploration_metric` (``result["exploration_metric"]``).
    """
    names = [p.name for p in policies]
    missing = object()  # no record of this episode, or a record from before the metric was logged
    table: dict[str, dict[str, dict[str, list]]] = {n: {s: {m: [missing] * config.episodes for m in METRICS}
                                                        for s in config.sides} for n in names}
    for r in records:
        if r["policy"] in table and r["side"] in config.sides and r["episode"] < config.episodes:
            for m in METRICS:
                table[r["policy"]][r["side"]][m][r["episode"]] = r.get(m, missing)
    explore = config.exploration_metric()
    metrics = [m for m in METRICS if m != "success" or config.env_id == "MirageRoomNav-v0"]
    per_policy: dict[str, Any] = {}
    for i, name in enumerate(names):
        per_policy[name] = {"describe": json.loads(json.dumps(policies[i].describe()))}
        for side in config.sides:
            logged = sum(v is not missing for v in table[name][side]["return"])
            if logged != config.episodes:
                raise RuntimeError(f"{name} {side}: {logged} of {config.episodes} episodes logged")
            entry = {}
            for m in metrics:
                values = table[name][side][m]
                if any(v is missing for v in values):  # a log written before this metric was recorded
                    if m == explore:
                        raise RuntimeError(f"{name} {side}: the logged episodes have no {m!r} (a log from an "
                                           "older version); evaluate into a new --out")
                    continue
                if all(v is None for v in values):  # not measured in this env (coverage under generated physics)
                    entry[m] = {"mean": None, "std": None, "ci": [None, None], "episodes": [None] * len(values)}
                    continue
                if any(v is None for v in values):
                    raise RuntimeError(f"{name} {side} {m}: measured in some episodes only; its mean would mix "
                                       "episodes with and without a house")
                entry[m] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                            "ci": bootstrap_mean_ci(values, config.n_boot, seed=config.seed + i),
                            "episodes": [float(v) for v in values]}
            per_policy[name][side] = entry
    result: dict[str, Any] = {"config": asdict(config), "policies": names, "exploration_metric": explore,
                              "per_policy": per_policy, "agreement": {}}
    # Wall time of the episodes (whatever else ran beside them; logs from before it was kept lack it).
    timed = [r for r in records if r["policy"] in names and r["episode"] < config.episodes and "seconds" in r]
    result["episode_seconds"] = {side: sum(r["seconds"] for r in timed if r["side"] == side) for side in config.sides}
    result["episodes_timed"] = len(timed)
    if set(SIDES) <= set(config.sides):
        for m in ("return", explore, "success"):
            if m not in metrics:
                continue
            sim = [per_policy[n]["world"][m]["episodes"] for n in names]
            real = [per_policy[n]["truth"][m]["episodes"] for n in names]
            result["agreement"][m] = agreement(sim, real, metric=m, n_boot=config.n_boot, seed=config.seed)
    result["table"] = markdown_table(result)
    return result


# --------------------------------------------------------------------------- presentation


EXPLORATION_MEANINGS = {
    "coverage": "fraction of the house's navigable floor seen; both envs run the house's physics",
    "explored_m2": "floor area shown, m^2; an env runs generated physics, where coverage is inf (no house total)",
}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def markdown_table(result: dict[str, Any]) -> str:
    """Per policy (world model | ground truth), then the agreement statistics with 95% bootstrap intervals."""
    config = result["config"]
    sides = [s for s in SIDES if s in config["sides"]]
    shown = [m for m in ("return", "coverage", "explored_m2", "collisions", "success")
             if m != "success" or config["env_id"] == "MirageRoomNav-v0"]
    first = result["per_policy"][result["policies"][0]]
    metrics = [m for m in shown if all(m in first[s] for s in sides)]  # an old log may lack explored_m2
    label = {"world": f"world ({Path(str(config['world_generator'])).name})", "truth": "truth (oracle)"}
    head = ["policy"] + [f"{m} {label[s]}" for m in metrics for s in reversed(sides)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for name in result["policies"]:
        cells = [name]
        for m in metrics:
            for s in reversed(sides):
                entry = result["per_policy"][name][s][m]
                if entry["mean"] is None:
                    cells.append("n/a")  # not measured in this env (coverage under generated physics)
                    continue
                cells.append(f"{_fmt(entry['mean'], 2 if m == 'collisions' else 3)} +- "
                             f"{_fmt(entry['std'], 2 if m == 'collisions' else 3)}")
        lines.append("| " + " | ".join(cells) + " |")
    if result["agreement"]:
        explore = result.get("exploration_metric", "coverage")
        lines += ["", f"Exploration compared on `{explore}` ({EXPLORATION_MEANINGS[explore]})."]
        lines += ["", "| metric | Spearman rho [95% CI] | Pearson r [95% CI] | MMRV [95% CI] |", "|---|---|---|---|"]
        for m, stats in result["agreement"].items():
            cells = [m] + [f"{_fmt(stats[k]['value'])} [{_fmt(stats[k]['ci'][0])}, {_fmt(stats[k]['ci'][1])}]"
                           for k in ("spearman", "pearson", "mmrv")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_scatter(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """World-model score (y) against ground-truth score (x), one labelled point per policy, y = x dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(result["agreement"])  # return, the exploration metric compared, success
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4.6), squeeze=False)
    for ax, m in zip(axes[0], metrics, strict=True):
        xs, ys = [], []
        for name in result["policies"]:
            truth, world = result["per_policy"][name]["truth"][m], result["per_policy"][name]["world"][m]
            x, y = truth["mean"], world["mean"]
            xerr = [[x - (truth["ci"][0] if truth["ci"][0] is not None else x)],
                    [(truth["ci"][1] if truth["ci"][1] is not None else x) - x]]
            yerr = [[y - (world["ci"][0] if world["ci"][0] is not None else y)],
                    [(world["ci"][1] if world["ci"][1] is not None else y) - y]]
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", ms=5, capsize=2)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
            xs.append(x)
            ys.append(y)
        lo, hi = min(xs + ys), max(xs + ys)
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8, label="y = x")
        stats = result["agreement"][m]
        ax.set_title(f"{m}: Spearman {_fmt(stats['spearman']['value'], 2)}, Pearson {_fmt(stats['pearson']['value'], 2)}"
                     f", MMRV {_fmt(stats['mmrv']['value'], 3)}", fontsize=9)
        ax.set_xlabel(f"ground truth (oracle) {m}")
        ax.set_ylabel(f"world model ({Path(str(result['config']['world_generator'])).name}) {m}")
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"mirage-gym eval rl: {result['config']['env_id']}, {result['config']['episodes']} held-out episodes "
                 "per policy (95% bootstrap intervals)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(result: dict[str, Any], out: str | os.PathLike, name: str = "rl",
                  args: dict[str, Any] | None = None) -> list[Path]:
    """``NAME.json`` (with provenance), ``NAME_table.md`` and, with both envs, ``NAME_scatter.png``."""
    from mirage_gym.provenance import write_results

    out = Path(out)
    body = {k: v for k, v in result.items() if k != "table"}
    paths = [write_results(out, name, body, config={"args": args or {}})]
    (out / f"{name}_table.md").write_text(result["table"] + "\n")
    paths.append(out / f"{name}_table.md")
    if result.get("agreement"):
        paths.append(plot_scatter(result, out / f"{name}_scatter.png"))
    return paths


# --------------------------------------------------------------------------- dream to real


def _hyperparams(env_id: str, path: Path) -> dict[str, Any]:
    import yaml

    entries = yaml.safe_load(Path(path).read_text())
    if env_id not in entries:
        raise ValueError(f"{path} has no entry for {env_id}")
    return dict(entries[env_id])


def train_run_name(env_id: str, generator: str, seed: int, env_options: dict[str, Any] | None = None) -> str:
    """The run folder name of agents/train_ppo.py: env, generator, seed and each non-default env option."""
    options = "".join(f"_{key}-{value}" for key, value in sorted((env_options or {}).items()))
    return f"{env_id}_{Path(str(generator)).name}_seed{seed}{options}"


def dream_to_real(
    env_id: str,
    out: str | os.PathLike,
    *,
    generator: str = "default",
    timesteps: int = 100_000,
    seed: int = 0,
    episodes: int = 20,
    eval_seed: int = 1000,
    max_episode_steps: int | None = None,
    train_args: Sequence[str] = (),
    dream_model: str | os.PathLike | None = None,
    truth_model: str | os.PathLike | None = None,
    eval_kwargs: dict[str, Any] | None = None,
    world_kwargs: dict[str, Any] | None = None,
    n_boot: int = 1000,
    threads: int = 2,
    agents_dir: str | os.PathLike | None = None,
    python: str = sys.executable,
    progress: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Train PPO only in the world model and score it in the house, against the same budget trained in the house.

    Both runs use ``agents/train_ppo.py`` with the same ``timesteps``, ``seed``, hyperparameters
    (``agents/hyperparams.yml``) and ``train_args``; only ``--generator`` differs (``generator`` vs
    ``oracle``). Each run is skipped when its ``final_model.zip`` exists (or replaced by ``dream_model`` /
    ``truth_model``: then the caller vouches for equal budgets). ``world_kwargs`` are ``gym.make`` options
    of the world-model env only (``physics="generated"``: the dream PPO also meets the generated
    world's walls); the ground-truth run and the scoring keep the house's. The final models (not EvalCallback's
    "best", which is picked on held-out rooms) and a random policy then run the same ``episodes``
    held-out episodes in the ground-truth env (resumable, ``OUT/eval``), and
    ``normalised = (dream - random) / (truth - random)`` for return, exploration (coverage, or
    ``explored_m2`` when ``eval_kwargs`` ask for ``physics="generated"``: see
    :meth:`RLEvalConfig.exploration_metric`; ``result["exploration_metric"]`` names it) and success on
    Nav, with a paired bootstrap interval over episodes.
    """
    agents = Path(agents_dir) if agents_dir else repo_root() / "agents"
    script, hyper = agents / "train_ppo.py", agents / "hyperparams.yml"
    if not script.is_file():
        raise FileNotFoundError(f"{script} not found: dream-to-real trains with agents/train_ppo.py from a source "
                                "checkout (pass agents_dir / --agents-dir)")
    if env_id not in ENV_IDS:
        raise ValueError(f"env must be one of {ENV_IDS}, got {env_id!r}")
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    params = _hyperparams(env_id, hyper)
    env_kwargs = dict(params.get("env_kwargs", {}))
    wrapper = dict(params.get("wrapper_kwargs", DEFAULT_WRAPPER_KWARGS[env_id]))
    train_args = list(train_args)
    for flag, key in (("--resolution", "resolution"), ("--chunk", "chunk")):
        if flag in train_args:
            env_kwargs[key] = int(train_args[train_args.index(flag) + 1])
    if max_episode_steps is not None:
        train_args += ["--max-episode-steps", str(max_episode_steps)]
    for model in (dream_model, truth_model):
        if model is not None and not Path(model).is_file():
            raise FileNotFoundError(f"model {model} does not exist")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = RLEvalConfig(env_id=env_id, truth_generator="oracle", episodes=episodes, seed=eval_seed,
                          resolution=int(env_kwargs.get("resolution", 64)), chunk=int(env_kwargs.get("chunk", 4)),
                          env_resolution=int(env_kwargs.get("resolution", 64)),  # as the PPO runs were trained
                          max_episode_steps=max_episode_steps, sides=("truth",), n_boot=n_boot,
                          truth_kwargs=dict(eval_kwargs or {}))
    config.validate()

    models = {}
    world_kwargs = dict(world_kwargs or {})
    for role, gen, given, options in (("dream", generator, dream_model, world_kwargs),
                                      ("truth", "oracle", truth_model, {})):
        if given is not None:
            models[role] = Path(given)
            continue
        logdir = out / "train" / role
        final = logdir / train_run_name(env_id, gen, seed, options) / "final_model.zip"
        if not final.is_file():
            # The script runs in agents/: a relative logdir would land there, where this check does not look.
            cmd = [python, str(script), "--env", env_id, "--generator", str(gen), "--total-timesteps", str(timesteps),
                   "--seed", str(seed), "--logdir", str(logdir.resolve()), "--video-freq", "0",
                   "--threads", str(threads),
                   "--resume", *train_args]
            for key, value in options.items():
                cmd += ["--env-option", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
            if progress:
                progress(f"training {role} PPO ({timesteps} steps on generator {gen}): {' '.join(cmd)}")
            subprocess.run(cmd, check=True, cwd=agents)
        models[role] = final
    policies: list[Policy] = [SCRIPTED["random"]()]
    policies += [PPOPolicy(models[role], name=f"ppo_{role}", wrapper_kwargs=wrapper) for role in ("dream", "truth")]
    evaluated = evaluate_policies(policies, config, out / "eval", progress=progress)
    explore = config.exploration_metric()
    metrics = ["return", explore] + (["success"] if env_id == "MirageRoomNav-v0" else [])
    per = evaluated["per_policy"]
    normalised = {}
    rng = np.random.default_rng(eval_seed)
    for m in metrics:
        eps = {name: np.asarray(per[name]["truth"][m]["episodes"]) for name in ("random", "ppo_dream", "ppo_truth")}
        value = _normalised(eps["random"], eps["ppo_dream"], eps["ppo_truth"])
        boots = []
        for _ in range(n_boot):
            idx = rng.integers(0, episodes, episodes)  # paired: episode k is the same house for all three
            boots.append(_normalised(eps["random"][idx], eps["ppo_dream"][idx], eps["ppo_truth"][idx]))
        finite = [b for b in boots if math.isfinite(b)]
        normalised[m] = {"value": value, "ci": ([float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))]
                                                if finite else [None, None]),
                         "undefined_resamples": 1.0 - len(finite) / n_boot,
                         "random": float(eps["random"].mean()), "dream": float(eps["ppo_dream"].mean()),
                         "truth": float(eps["ppo_truth"].mean())}
    result = {"env_id": env_id, "generator": str(generator), "world_kwargs": world_kwargs, "timesteps": timesteps,
              "train_seed": seed,
              "train_args": train_args, "models": {k: str(v) for k, v in models.items()},
              "exploration_metric": explore,
              "model_sha256": {k: p.sha256 for k, p in zip(("dream", "truth"), policies[1:], strict=True)},
              "normalised": normalised, "evaluation": {k: v for k, v in evaluated.items() if k != "table"}}
    result["table"] = transfer_table(result)
    return result


def _normalised(random: np.ndarray, dream: np.ndarray, truth: np.ndarray) -> float:
    """``(dream - random) / (truth - random)`` of the means; NaN where the ground-truth PPO does not beat random.

    The scale assumes the ground-truth budget is above random; below it, the ratio flips its meaning (a dream
    policy worse than both would score above 1), so it is undefined there, as at a tie.
    """
    gap = float(truth.mean() - random.mean())
    if gap <= 1e-12:
        return float("nan")
    return float((dream.mean() - random.mean()) / gap)


def transfer_table(result: dict[str, Any]) -> str:
    world = "".join(f", {key}={value}" for key, value in result.get("world_kwargs", {}).items())
    lines = [f"Dream-to-real, {result['env_id']}: PPO trained {result['timesteps']} steps on "
             f"`{result['generator']}`{world} vs the same budget on `oracle`, scored on the ground truth", "",
             "| metric | random | PPO trained on truth | PPO trained in the world model | normalised [95% CI] |",
             "|---|---|---|---|---|"]
    undefined = []
    for m, entry in result["normalised"].items():
        lines.append(f"| {m} | {_fmt(entry['random'])} | {_fmt(entry['truth'])} | {_fmt(entry['dream'])} | "
                     f"{_fmt(entry['value'])} [{_fmt(entry['ci'][0])}, {_fmt(entry['ci'][1])}] |")
        if entry.get("undefined_resamples", 0.0) > 0.0:
            undefined.append(f"{m} ({entry['undefined_resamples']:.0%} of resamples)")
    if undefined:
        lines += ["", "Where the PPO trained on truth does not beat random the normalised score is undefined (n/a); "
                  "intervals are over the resamples where it does. Undefined in: " + ", ".join(undefined) + "."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def parse_options(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs, the values read as JSON where they parse (numbers, true/false), else strings."""
    options: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"env options are KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Rank a zoo of policies in the world-model env and in the ground-truth env (oracle) on "
                          "the same held-out episodes; Spearman, Pearson and MMRV of the two rankings. Resumable: "
                          "rerun with the same --out to continue.")
    parser.add_argument("--out", required=True, help="results folder (episodes.jsonl, rl.json, rl_table.md, "
                                                     "rl_scatter.png)")
    parser.add_argument("--env", default="MirageRoom-v0", choices=ENV_IDS)
    parser.add_argument("--policies", nargs="+", default=None,
                        help=f"policy names ({', '.join(sorted(SCRIPTED))}), PPO zips ([NAME=]PATH.zip; SB3 zips "
                             "are pickles: only files you trust) or zoo manifests (.json); default: "
                             "agents/zoo/ENV.json")
    parser.add_argument("--generator", default="default",
                        help="the world model: 'default' (shipped weights), a model folder, or 'oracle'")
    parser.add_argument("--world-option", action="append", metavar="KEY=VALUE",
                        help="extra gym.make option of the world-model env (repeatable, e.g. physics=generated: "
                             "exploration is then compared on explored_m2, the floor area shown, as coverage is inf)")
    parser.add_argument("--truth-option", action="append", metavar="KEY=VALUE",
                        help="extra gym.make option of the ground-truth env (repeatable)")
    parser.add_argument("--episodes", type=int, default=None, help="held-out episodes per policy (default 20, quick 2)")
    parser.add_argument("--seed", type=int, default=1000, help="episode k resets with seed SEED + k")
    parser.add_argument("--first-room", type=int, default=EVAL_ROOM_SEED_OFFSET,
                        help="episode k is held-out room FIRST_ROOM + k")
    parser.add_argument("--resolution", type=int, default=None,
                        help="frame size the policies see (default 64, as the PPO zoo)")
    parser.add_argument("--env-resolution", type=int, default=None,
                        help="frame size both envs make, resized to --resolution for the policies (default: the "
                             "world model's own, 128 for the shipped default; quick 64)")
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--max-episode-steps", type=int, default=None,
                        help="default: the registration's (200 Room, 100 Nav); quick 8")
    parser.add_argument("--memory", default="latent", choices=["latent", "pixel", "none"])
    parser.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (default 1000, quick 200)")
    parser.add_argument("--quick", action="store_true",
                        help=f"CI: policies {', '.join(QUICK_POLICIES)}, oracle vs oracle at 64x64, 2 short episodes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides: dict[str, Any] = dict(env_id=args.env, seed=args.seed, first_room=args.first_room, chunk=args.chunk,
                                     memory=args.memory, device=args.device,
                                     world_kwargs=parse_options(args.world_option), truth_kwargs=parse_options(args.truth_option))
    for key, value in (("episodes", args.episodes), ("resolution", args.resolution),
                       ("env_resolution", args.env_resolution),
                       ("max_episode_steps", args.max_episode_steps), ("n_boot", args.bootstrap)):
        if value is not None:
            overrides[key] = value
    if args.quick:
        config = RLEvalConfig.quick(**overrides)
        specs = args.policies or list(QUICK_POLICIES)
    else:
        config = RLEvalConfig(world_generator=args.generator, **overrides)
        default_zoo = repo_root() / "agents" / "zoo" / f"{args.env}.json"
        if args.policies is None and not default_zoo.is_file():
            raise ValueError(f"no --policies given and no zoo at {default_zoo}")
        specs = args.policies or [str(default_zoo)]
    config.validate()
    policies = load_policies(specs, config.env_id, device=config.device)
    if len(policies) < 3:
        raise ValueError(f"ranking agreement needs at least 3 policies, got {len(policies)}: {[p.name for p in policies]}")
    print(f"eval rl: {len(policies)} policies on {config.env_id}, world {config.world_generator} vs truth "
          f"{config.truth_generator}, {config.episodes} held-out episodes each (rooms {config.first_room}..), "
          f"results in {args.out}", flush=True)
    result = evaluate_policies(policies, config, args.out, progress=lambda s: print(s, flush=True))
    print(result["table"])
    paths = write_outputs(result, args.out, "rl", args={k: v for k, v in vars(args).items() if not k.startswith("_")})
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def add_transfer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Dream-to-real: PPO trained only in the world model, scored in the ground-truth env on "
                          "held-out houses, normalised by the same PPO budget trained on the ground truth.")
    parser.add_argument("--out", required=True, help="results folder (train/, eval/, transfer.json, transfer_table.md)")
    parser.add_argument("--env", default="MirageRoom-v0", choices=ENV_IDS)
    parser.add_argument("--generator", default="default", help="the world model to train in")
    parser.add_argument("--timesteps", type=int, default=100_000, help="PPO budget of each of the two runs")
    parser.add_argument("--seed", type=int, default=0, help="training seed (both runs)")
    parser.add_argument("--episodes", type=int, default=20, help="held-out evaluation episodes")
    parser.add_argument("--eval-seed", type=int, default=1000)
    parser.add_argument("--max-episode-steps", type=int, default=None, help="training and evaluation episode length")
    parser.add_argument("--dream-model", default=None, help="an already trained world-model PPO zip (skip training)")
    parser.add_argument("--truth-model", default=None, help="an already trained ground-truth PPO zip (same budget)")
    parser.add_argument("--world-option", action="append", metavar="KEY=VALUE",
                        help="extra gym.make option of the world-model env the dream PPO trains in (repeatable, e.g. "
                             "physics=generated); the ground-truth run and the scoring keep the house's")
    parser.add_argument("--eval-option", action="append", metavar="KEY=VALUE",
                        help="extra gym.make option of the ground-truth env the policies are scored in (repeatable)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--agents-dir", default=None, help="folder of train_ppo.py (default: the checkout's agents/)")
    parser.add_argument("--train-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for agents/train_ppo.py, both runs (repeatable: --train-arg=--num-envs "
                             "--train-arg=8)")


def run_transfer(args: argparse.Namespace) -> int:
    result = dream_to_real(args.env, args.out, generator=args.generator, timesteps=args.timesteps, seed=args.seed,
                           episodes=args.episodes, eval_seed=args.eval_seed, max_episode_steps=args.max_episode_steps,
                           train_args=args.train_arg, dream_model=args.dream_model, truth_model=args.truth_model,
                           eval_kwargs=parse_options(args.eval_option),
                           world_kwargs=parse_options(args.world_option), n_boot=args.bootstrap, threads=args.threads,
                           agents_dir=args.agents_dir, progress=lambda s: print(s, flush=True))
    from mirage_gym.provenance import write_results

    out = Path(args.out)
    path = write_results(out, "transfer", {k: v for k, v in result.items() if k != "table"},
                         config={"args": {k: v for k, v in vars(args).items() if not k.startswith("_")}})
    (out / "transfer_table.md").write_text(result["table"] + "\n")
    print(result["table"])
    print(f"wrote {path}, {out / 'transfer_table.md'}")
    return 0
