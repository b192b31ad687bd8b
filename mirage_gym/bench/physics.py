"""What generated physics adds to a step: ``GeneratedPhysics.move`` + ``observe`` vs the generator's chunk.

``python -m mirage_gym.bench.physics [--generator default] [--steps 40] [--out FILE]`` drives a random
walk in a held-out house at the model's resolution and chunk, and times, per step: the generator's
``step``, the ground-truth ``Scene.move`` and generated physics' ``move`` + ``observe`` (reading the
generator's ``LatentCache`` when it has one). The issue's budget: physics adds at most 10 % to a step.
Run it on a quiet machine; it prints one JSON object (and writes it with ``--out``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mirage_gym import geometry
from mirage_gym.envs.physics import GeneratedPhysics
from mirage_gym.config import EVAL_ROOM_SEED_OFFSET


def bench(generator_spec: str = "default", steps: int = 40, resolution: int = 128, chunk: int = 4,
          room: int = EVAL_ROOM_SEED_OFFSET, seed: int = 0) -> dict:
    from mirage_gym.envs import OracleGenerator, load_generator
    from mirage_gym.envs.worlds import get_world

    gen = load_generator(generator_spec)
    oracle = isinstance(gen, OracleGenerator)
    k = geometry.intrinsics_from_fov(90.0, resolution, resolution)
    world = get_world(room)
    rng = np.random.default_rng(seed)
    pose = world.scene.sample_pose(rng)
    image = world.renderer.render(pose[None], k, resolution, resolution).rgb
    out = gen.start(image, pose[None], k, **({"renderers": [world.renderer]} if oracle else {}))
    physics = GeneratedPhysics(0.2, max_depth=gen.max_depth if oracle else float(gen.depth_head.config.max_depth))
    physics.reset(pose)
    cache = None if oracle else getattr(gen, "memory_store", None)
    physics.observe(out.depth[0].float(), pose[None], k, cache)
    times = {"generator_step": [], "house_move": [], "physics_move": [], "physics_observe": []}
    noise = torch.Generator().manual_seed(seed)
    frac = torch.arange(1, chunk + 1, dtype=torch.float32)[:, None] / chunk
    for _ in range(steps):
        action = torch.from_numpy(rng.uniform(-1, 1, (1, 4))).float()
        poses = geometry.integrate_action(pose[None], action, chunk, max_translation=0.25, max_rotation_deg=15.0)
        origin, target = pose[:3, 3].double().numpy(), poses[0, -1, :3, 3].double().numpy()
        t0 = time.perf_counter()
        house_end, _ = world.scene.move(origin[None], target[None], 0.2)
        t1 = time.perf_counter()
        physics.move(origin, target)
        t2 = time.perf_counter()
        end = torch.from_numpy(house_end[0]).float()
        poses[0, :, :3, 3] = pose[:3, 3] + frac * (end - pose[:3, 3])
        out = gen.step(poses, [noise])
        t3 = time.perf_counter()
        physics.observe(out.depth[0].float(), poses[0], k, cache)
        t4 = time.perf_counter()
        for name, dt in zip(times, (t3 - t2, t1 - t0, t2 - t1, t4 - t3)):
            times[name].append(dt)
        pose = poses[0, -1].clone()
    med = {name: float(np.median(v)) for name, v in times.items()}
    added = med["physics_move"] + med["physics_observe"] - med["house_move"]
    return {
        "generator": generator_spec, "steps": steps, "resolution": resolution, "chunk": chunk,
        "median_s": med,
        "physics_over_generator_step": (med["physics_move"] + med["physics_observe"]) / med["generator_step"],
        "added_vs_ground_truth_physics": added / (med["generator_step"] + med["house_move"]),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default="default")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    result = bench(args.generator, args.steps, args.resolution, args.chunk)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
