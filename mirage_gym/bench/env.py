"""`mirage-gym bench env`: environment steps per second, single and natively batched.

``MirageRoom-v0`` is made with ``gymnasium.make`` (one env) and ``gymnasium.make_vec`` with
``vectorization_mode="vector_entry_point"`` (one generator forward for all sub-envs) for each
``--num-envs``, and stepped with random actions; the median wall time of ``--steps`` timed
steps (after ``--warmup``) gives env steps per second (one step = one chunk of frames).
``--episode-steps N`` then runs one long episode of the single env and prints the process RSS
and ``info["memory_bytes"]`` along it: with the latent cache both must stay flat.

Generators: ``--generator random`` (default) is the default config's architecture with random
weights (speed does not depend on weights), ``oracle`` the ground-truth renderer, ``default``
the shipped weights, or a model folder. The output says which was used.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from mirage_gym.config import EVAL_ROOM_SEED_OFFSET

__all__ = ["time_steps", "bench_env", "episode_memory"]

ENV_ID = "MirageRoom-v0"


def time_steps(step: Callable[[int], Any], steps: int, warmup: int) -> list[float]:
    """Wall times of ``steps`` calls of ``step(i)`` after ``warmup`` untimed ones."""
    times = []
    for i in range(warmup + steps):
        begin = time.perf_counter()
        step(i)
        if i >= warmup:
            times.append(time.perf_counter() - begin)
    return times


def bench_env(
    generator: Any,
    num_envs: Sequence[int],
    *,
    steps: int = 10,
    warmup: int = 2,
    memory: str = "latent",
    env_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Rows ``{"num_envs", "batched", "ms_per_step", "env_steps_per_s", "frames_per_s"}``; ``num_envs`` 1 is
    also measured unbatched (``gymnasium.make``)."""
    import mirage_gym  # noqa: F401  (registers the environments)

    if steps < 1 or warmup < 0 or not num_envs or min(num_envs) < 1:
        raise ValueError(f"need steps >= 1, warmup >= 0 and num_envs >= 1, got {steps}, {warmup}, {list(num_envs)}")
    kwargs = {"generator": generator, "memory": memory, **(env_kwargs or {})}
    rng = np.random.default_rng(seed)
    rows = []

    env = gym.make(ENV_ID, disable_env_checker=True, **kwargs)
    env.reset(seed=seed)
    chunk = env.unwrapped.simulator.chunk

    def single(_: int) -> None:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()

    env.action_space.seed(seed)
    t = statistics.median(time_steps(single, steps, warmup))
    rows.append({"num_envs": 1, "batched": False, "ms_per_step": 1000 * t, "env_steps_per_s": 1 / t,
                 "frames_per_s": chunk / t})
    env.close()
    for n in num_envs:
        vec = gym.make_vec(ENV_ID, num_envs=n, vectorization_mode="vector_entry_point", **kwargs)
        vec.reset(seed=seed)

        def batched(_: int, vec=vec, n=n) -> None:
            vec.step(rng.uniform(-1, 1, (n, *vec.single_action_space.shape)).astype(np.float32))

        t = statistics.median(time_steps(batched, steps, warmup))
        rows.append({"num_envs": n, "batched": True, "ms_per_step": 1000 * t, "env_steps_per_s": n / t,
                     "frames_per_s": n * chunk / t})
        vec.close()
    return rows


def episode_memory(
    generator: Any, steps: int, *, memory: str = "latent", env_kwargs: dict[str, Any] | None = None, seed: int = 0
) -> list[dict[str, float]]:
    """Process RSS and ``memory_bytes`` at steps 10, 50, 100, ... of one ``steps``-long episode of random actions."""
    import mirage_gym  # noqa: F401  (registers the environments)
    from mirage_gym.bench.generator import ProcessMemory

    # Unwrapped: no TimeLimit, the episode is as long as asked.
    env = gym.make(ENV_ID, disable_env_checker=True, generator=generator, memory=memory, **(env_kwargs or {})).unwrapped
    env.reset(seed=seed)
    env.action_space.seed(seed)
    process = ProcessMemory(torch.device("cpu"))
    marks = sorted({10, *range(50, steps + 1, 50), steps})
    rows = []
    for k in range(1, steps + 1):
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        if terminated or truncated:
            raise RuntimeError(f"the episode ended at step {k}; choose fewer --episode-steps")
        if k in marks:
            rows.append({"step": k, "rss_mib": process.rss() / 2**20, "memory_mib": info["memory_bytes"] / 2**20,
                         "coverage": info["coverage"], "explored_m2": info["explored_m2"]})
    env.close()
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generator", default="random",
                        help="'random' (default architecture, random weights), 'oracle', 'default' or a model folder")
    parser.add_argument("--memory", default="latent", choices=["latent", "pixel", "none"])
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 2, 4, 8], help="batch sizes of the vector env")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--resolution", type=int, default=None, help="frame size (default: the config's)")
    parser.add_argument("--chunk", type=int, default=None, help="frames per step (default: the config's)")
    parser.add_argument("--config", default="default", help="model config (architecture, resolution, chunk)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--physics", nargs="+", default=["ground_truth"], choices=["ground_truth", "generated"],
                        help="physics settings timed one after the other in this run (side by side)")
    parser.add_argument("--episode-steps", type=int, default=0,
                        help="then one episode this long: RSS and memory_bytes along it (0: skip)")
    parser.add_argument("--out", default="runs/bench_env", help="results folder (JSON, provenance)")


def run(args: argparse.Namespace) -> int:
    from mirage_gym.bench.generator import build_random_generator
    from mirage_gym.provenance import results_folder, write_results
    from mirage_gym.config import load_config

    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config)
    out = results_folder(args.out)
    if args.generator == "random":
        generator: Any = build_random_generator(config, seed=args.seed)
        what = f"RANDOM weights, the {config.name!r} config's architecture (speed does not depend on weights)"
    else:
        generator = args.generator
        what = {"oracle": "the ground-truth renderer (oracle)", "default": "the shipped default weights"}.get(
            args.generator, f"weights from {args.generator}")
    env_kwargs = {"resolution": args.resolution or config.model.resolution,
                  "chunk": args.chunk or config.model.chunk_frames,
                  "room_seeds": [EVAL_ROOM_SEED_OFFSET + i for i in range(8)]}
    print(f"generator: {what}; memory {args.memory}; {env_kwargs['resolution']}x{env_kwargs['resolution']}, "
          f"chunks of {env_kwargs['chunk']}; torch threads {torch.get_num_threads()}", flush=True)
    rows = []
    for physics in args.physics:
        rows += [{"physics": physics, **r} for r in bench_env(
            generator, args.num_envs, steps=args.steps, warmup=args.warmup, memory=args.memory,
            env_kwargs={**env_kwargs, "physics": physics}, seed=args.seed)]
    print(f"\n{'physics':>12} {'num_envs':>8} {'batched':>8} | {'ms/step':>9} {'env steps/s':>12} {'frames/s':>9} "
          f"{'x single':>9}")
    for r in rows:
        single = next(q for q in rows if q["physics"] == r["physics"])["env_steps_per_s"]
        print(f"{r['physics']:>12} {r['num_envs']:>8} {'yes' if r['batched'] else 'no':>8} | {r['ms_per_step']:>9.1f} "
              f"{r['env_steps_per_s']:>12.2f} {r['frames_per_s']:>9.1f} {r['env_steps_per_s'] / single:>9.2f}")
    print(f"(median of {args.steps} steps after {args.warmup} warm-up steps; random actions)")
    config_out = {"args": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "generator": what,
                  **env_kwargs}
    results: dict[str, Any] = {"throughput": rows}
    if args.episode_steps:
        print(f"\none episode of {args.episode_steps} random steps, single env:")
        results["episode"] = episode_memory(generator, args.episode_steps, memory=args.memory,
                                            env_kwargs=env_kwargs, seed=args.seed)
        for r in results["episode"]:
            print(f"  step {r['step']:4d}: RSS {r['rss_mib']:8.1f} MiB, memory {r['memory_mib']:7.3f} MiB, "
                  f"coverage {r['coverage']:.2f}, floor shown {r['explored_m2']:.1f} m^2")
    path = write_results(out, "bench_env", results, config=config_out)
    print(f"wrote {path}")
    return 0
