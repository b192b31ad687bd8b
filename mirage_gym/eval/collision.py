"""Collision agreement: would generated physics block the moves the house blocks?

Along random-walk episodes in held-out houses (room seeds >= ``EVAL_ROOM_SEED_OFFSET``), at every
step the same move is put to both physics from the same state:

* the **house**: :meth:`mirage_gym.world.Scene.move` (ground truth);
* **generated physics**: :class:`~mirage_gym.envs.physics.GeneratedPhysics`, fed only what the
  generator returned (each chunk's depth and poses, and its ``LatentCache`` when it keeps one).

The camera then follows the house's answer (the house is the real world here), and the generator
makes the chunk at those poses. "Blocked" is the positive class: precision is the share of
generated blocks the house agrees with, recall the share of house blocks generated physics
catches. Generated blocks are split by reason: a shown surface (``obstacle``) or space the frames
never showed (``unseen``, see the physics module). ``shown_space`` scores only the moves that
generated physics judged by surfaces (every move not stopped as ``unseen``): the agreement of the
surfaces themselves, the figure the oracle bounds. The ``unseen`` stops are reported apart (how
many, and how many of them the house blocks too): they are the price of the no-exploit rule.

Actions are the env's random agent: uniform in ``[-1, 1]^4`` (forward, right, yaw, pitch), with
the env's default step sizes. Everything is seeded, so every generator meets the same rooms, starts
and moves, and follows the same (the house's) path: F1 carries a 95 % bootstrap interval over the
episodes (``f1_ci95``), and with several generators each one after the first also carries its paired F1
difference to the first (``f1_vs_first``: the episodes resampled together), which tells two close
generators apart where their own intervals overlap.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from mirage_gym import geometry
from mirage_gym.envs.physics import GeneratedPhysics
from mirage_gym.eval.agreement import percentile_interval
from mirage_gym.config import EVAL_ROOM_SEED_OFFSET

__all__ = ["CollisionConfig", "collision_agreement", "scores", "f1_interval", "paired_f1_difference", "markdown_line",
           "add_arguments", "run"]


@dataclass
class CollisionConfig:
    """What to measure. ``quick`` is a short run (4 episodes of 15 moves, a minute or two)."""

    episodes: int = 20
    steps: int = 50
    resolution: int = 128
    chunk: int = 4
    fov_deg: float = 90.0
    radius: float = 0.2
    max_translation: float = 0.25
    max_rotation: float = 15.0
    max_pitch: float = 60.0
    first_room: int = EVAL_ROOM_SEED_OFFSET
    seed: int = 0
    physics: dict[str, Any] = field(default_factory=dict)  # GeneratedPhysics keywords

    @classmethod
    def quick(cls, **overrides: Any) -> CollisionConfig:
        return cls(**{"episodes": 4, "steps": 15, **overrides})

    def validate(self) -> None:
        if self.episodes < 1 or self.steps < 1 or self.chunk < 1 or self.resolution < 8:
            raise ValueError(f"need episodes, steps, chunk >= 1 and resolution >= 8, got {self.episodes}, "
                             f"{self.steps}, {self.chunk}, {self.resolution}")
        if self.first_room < EVAL_ROOM_SEED_OFFSET:
            raise ValueError(f"rooms must be held out from training (>= {EVAL_ROOM_SEED_OFFSET}), got {self.first_room}")
        GeneratedPhysics(self.radius, **self.physics)  # raises on bad keywords


def scores(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Precision, recall and F1 of "blocked" (``nan`` where undefined)."""
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
    return {"precision": precision, "recall": recall, "f1": f1}


def _episode_counts(episodes: list[dict]) -> np.ndarray:
    """``[E, 3]`` true positives, false positives, false negatives of each episode."""
    return np.array([[e["tp"], e["fp"], e["fn"]] for e in episodes], dtype=np.float64).reshape(-1, 3)


def _f1_of_resamples(counts: np.ndarray, idx: np.ndarray) -> np.ndarray:
    tp, fp, fn = counts[idx].sum(axis=1).T  # [n_boot] each: the pooled counts of each resample
    with np.errstate(invalid="ignore", divide="ignore"):
        return 2 * tp / (2 * tp + fp + fn)


def f1_interval(episodes: list[dict], n_boot: int = 10000, seed: int = 0) -> list[float | None]:
    """95 % percentile bootstrap interval of the pooled F1, resampling episodes (``[None, None]``: none)."""
    counts = _episode_counts(episodes)
    if not len(counts):
        return [None, None]
    idx = np.random.default_rng(seed).integers(0, len(counts), (n_boot, len(counts)))
    return percentile_interval(_f1_of_resamples(counts, idx))


def paired_f1_difference(base: list[dict], other: list[dict], n_boot: int = 10000,
                         seed: int = 0) -> dict[str, Any]:
    """``other``'s pooled F1 minus ``base``'s on the same episodes, with a 95 % interval from resampling the
    episodes together (``ValueError`` if the two did not run the same rooms)."""
    rooms = [e["room_seed"] for e in base]
    if rooms != [e["room_seed"] for e in other]:
        raise ValueError("a paired F1 difference needs the same episodes (rooms) for both generators")
    cb, co = _episode_counts(base), _episode_counts(other)
    difference = scores(*co.sum(axis=0))["f1"] - scores(*cb.sum(axis=0))["f1"]
    idx = np.random.default_rng(seed).integers(0, len(rooms), (n_boot, len(rooms)))
    differences = _f1_of_resamples(co, idx) - _f1_of_resamples(cb, idx)
    return {"difference": difference, "ci95": percentile_interval(differences)}


def _cache_of(generator: Any) -> Any:
    store = getattr(generator, "memory_store", None)
    return store if store is not None and hasattr(store, "points") and hasattr(store, "read") else None


def collision_agreement(generator: Any, config: CollisionConfig, *, name: str = "", progress: bool = False) -> dict:
    """Run the episodes with ``generator`` (from :func:`mirage_gym.envs.load_generator`); the counts and scores."""
    from mirage_gym.envs.worlds import get_world

    config.validate()
    max_depth = generator.max_depth
    k = geometry.intrinsics_from_fov(config.fov_deg, config.resolution, config.resolution)
    counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0, "fp_unseen": 0, "tp_unseen": 0}
    stop_errors: list[float] = []
    episodes = []
    started = time.perf_counter()
    for e in range(config.episodes):
        room = config.first_room + e
        world = get_world(room)
        scene = world.scene
        rng = np.random.default_rng([room, config.seed])
        noise = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
        pose = scene.sample_pose(rng, config.radius)
        image = world.renderer.render(pose[None], k, config.resolution, config.resolution).rgb
        # Only a generator that renders ground truth reads the house's renderer.
        out = generator.start(image, pose[None], k, renderers=[world.renderer])
        physics = GeneratedPhysics(config.radius, max_depth=max_depth, **config.physics)
        physics.reset(pose)
        physics.observe(out.depth[0].float().cpu(), pose[None], k, _cache_of(generator), 0)
        episode = {"room_seed": room, "house_blocked": 0, "generated_blocked": 0, "agree": 0, "tp": 0, "fp": 0,
                   "fn": 0}
        frac = torch.arange(1, config.chunk + 1, dtype=torch.float32)[:, None] / config.chunk
        for _ in range(config.steps):
            action = torch.from_numpy(rng.uniform(-1.0, 1.0, (1, 4))).float()
            poses = geometry.integrate_action(pose[None], action, config.chunk, max_translation=config.max_translation,
                                              max_rotation_deg=config.max_rotation, max_pitch_deg=config.max_pitch)
            origin = pose[:3, 3].numpy().astype(np.float64)
            target = poses[0, -1, :3, 3].numpy().astype(np.float64)
            house_end, house_blocked = scene.move(origin[None], target[None], config.radius)
            house_blocked = bool(house_blocked[0])
            gen_end, gen_blocked = physics.move(origin, target)
            unseen = gen_blocked and physics.last_block == "unseen"
            key = ("t" if gen_blocked == house_blocked else "f") + ("p" if gen_blocked else "n")
            counts[key] += 1
            if unseen:
                counts[f"{key}_unseen"] += 1
            if gen_blocked and house_blocked and not unseen:
                stop_errors.append(float(np.linalg.norm(gen_end[:2] - house_end[0, :2])))
            episode["house_blocked"] += int(house_blocked)
            episode["generated_blocked"] += int(gen_blocked)
            episode["agree"] += int(gen_blocked == house_blocked)
            if key != "tn":
                episode[key] += 1
            end = torch.from_numpy(house_end[0]).float()
            poses[0, :, :3, 3] = pose[:3, 3] + frac * (end - pose[:3, 3])
            out = generator.step(poses, [noise])
            physics.observe(out.depth[0].float().cpu(), poses[0], k, _cache_of(generator), 0)
            pose = poses[0, -1].clone()
        episode["explored_m2"] = physics.explored_area()
        episodes.append(episode)
        if progress:
            print(f"  episode {e + 1}/{config.episodes} room {room}: house blocked {episode['house_blocked']}, "
                  f"generated {episode['generated_blocked']}, agree {episode['agree']}/{config.steps}", flush=True)
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    return {
        "generator": name or type(generator).__name__,
        "steps": sum(counts[c] for c in ("tp", "fp", "fn", "tn")),
        "counts": counts,
        **scores(tp, fp, fn),
        "f1_ci95": f1_interval(episodes, seed=config.seed),
        "shown_space": scores(tp - counts["tp_unseen"], fp - counts["fp_unseen"], fn),
        "unseen_stops": {"moves": counts["tp_unseen"] + counts["fp_unseen"], "house_blocks_too": counts["tp_unseen"]},
        "stop_error_m": {"mean": float(np.mean(stop_errors)) if stop_errors else math.nan,
                         "max": float(np.max(stop_errors)) if stop_errors else math.nan,
                         "count": len(stop_errors)},
        "episodes": episodes,
        "config": asdict(config),
        "seconds": time.perf_counter() - started,
    }


def markdown_line(result: dict) -> str:
    """One row of :data:`MARKDOWN_HEADER`."""
    c = result["counts"]
    unseen = result["unseen_stops"]
    low, high = result.get("f1_ci95", [None, None])
    f1 = f"**{result['f1']:.3f}**" + ("" if low is None else f" ({low:.3f}-{high:.3f})")
    paired = result.get("f1_vs_first")
    vs_first = "" if paired is None else f"{paired['difference']:+.3f}"
    if paired is not None and paired["ci95"][0] is not None:
        vs_first += f" ({paired['ci95'][0]:+.3f}, {paired['ci95'][1]:+.3f})"
    return (f"| {result['generator']} | {result['steps']} | {c['tp'] + c['fn']} | {result['precision']:.3f} | "
            f"{result['recall']:.3f} | {f1} | {vs_first} | {result['shown_space']['f1']:.3f} | "
            f"{unseen['moves']} ({unseen['house_blocks_too']}) | {result['stop_error_m']['mean'] * 100:.1f} cm |")


MARKDOWN_HEADER = ("| generator | moves | house blocks | precision | recall | F1 (95 % interval) | F1 - the first "
                   "generator's, paired (95 %) | F1 in shown space | stopped at unseen space (house blocks too) | "
                   "mean stop error |\n|---|---|---|---|---|---|---|---|---|---|")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="default", help="model config giving resolution, fov and chunk")
    parser.add_argument("--resolution", type=int, default=None, help="frame size (default: the config's)")
    parser.add_argument("--chunk", type=int, default=None, help="frames per chunk (default: the config's)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per chunk (default: the model's)")
    parser.add_argument("--quick", action="store_true", help="4 short episodes")
    parser.add_argument("--seed", type=int, default=0, help="walk seed")
    parser.add_argument("--device", default="cpu", help="torch device of the generator")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--generators", nargs="+", default=["oracle", "default"],
                        help="'oracle', 'default' or model folders, each measured in turn")
    parser.add_argument("--out", default=None, help="write collisions.json and collisions.md here")
    parser.add_argument("--episodes", type=int, default=None, help="random-walk episodes (default 20, quick 4)")
    parser.add_argument("--episode-steps", type=int, default=None, help="moves per episode (default 50, quick 15)")


def run_collisions(args: argparse.Namespace) -> int:
    """``mirage-gym eval collisions``: the agreement table for each of ``--generators``."""
    from mirage_gym.envs import load_generator
    from mirage_gym.provenance import results_folder, write_results
    from mirage_gym.config import load_config

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    model = load_config(args.config).model
    overrides: dict[str, Any] = {"resolution": args.resolution or model.resolution, "fov_deg": model.fov_deg,
                                 "chunk": args.chunk or model.chunk_frames, "seed": args.seed}
    if args.episodes is not None:
        overrides["episodes"] = args.episodes
    if args.episode_steps is not None:
        overrides["steps"] = args.episode_steps
    config = CollisionConfig.quick(**overrides) if args.quick else CollisionConfig(**overrides)
    config.validate()
    results = []
    lines = [MARKDOWN_HEADER]
    for spec in args.generators:
        generator = load_generator(spec, memory="latent", num_inference_steps=args.steps, device=args.device)
        print(f"collision agreement of {spec}: {config.episodes} episodes x {config.steps} moves, "
              f"{config.resolution}px, rooms from {config.first_room}", flush=True)
        result = collision_agreement(generator, config, name=str(spec), progress=not args.no_progress)
        if results:  # the same episodes as the first generator's: pair them
            result["f1_vs_first"] = {"first": results[0]["generator"],
                                     **paired_f1_difference(results[0]["episodes"], result["episodes"],
                                                            seed=config.seed)}
        results.append(result)
        lines.append(markdown_line(result))
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.out:
        out = results_folder(args.out)
        path = write_results(out, "collisions", results,
                             config={"args": {k: v for k, v in vars(args).items() if not k.startswith("_")}})
        (out / "collisions.md").write_text(table + "\n")
        print(f"wrote {path} and {out / 'collisions.md'}")
    return 0


run = run_collisions

