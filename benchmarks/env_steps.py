"""Environment step times (single vs batched, per env) and memory over a long episode.

    .venv/bin/python benchmarks/env_steps.py            # default-sized model, 128x128, chunk 4
    .venv/bin/python benchmarks/env_steps.py --quick    # fewer steps

Generated mode uses the *default-sized* generator (the transformer, AutoencoderTiny and depth
head of ``mirage_gym/configs/default.json``) with random weights: the default weights are not
shipped yet, and speed and memory do not depend on the weights' values. Oracle mode renders the
ground truth. Figures printed:

* single env: median seconds per ``step`` (one chunk) of ``MirageRoomEnv``;
* batched: median seconds per ``step`` of ``MirageRoomVectorEnv`` divided by ``num_envs``;
* memory: process RSS and ``info["memory_bytes"]`` at steps 10..250 of one episode (latent cache;
  with one denoising step, since the number of steps does not change what the cache holds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderTiny, FlowMatchEulerDiscreteScheduler

from mirage_gym.envs import MirageRoomEnv, MirageRoomVectorEnv
from mirage_gym.model.depth_head import DepthHead
from mirage_gym.model.generator import MirageGenerator
from mirage_gym.model.transformer import build_transformer
from mirage_gym.model.vae import VideoVAE

CONFIG = Path(__file__).resolve().parent.parent / "mirage_gym" / "configs" / "default.json"


def default_sized_generator(seed: int = 0) -> MirageGenerator:
    """The default configuration's architecture with random weights."""
    config = json.loads(CONFIG.read_text())
    torch.manual_seed(seed)
    vae_kwargs = config["vae"]
    vae = VideoVAE(AutoencoderTiny(
        encoder_block_out_channels=tuple(vae_kwargs["encoder_block_out_channels"]),
        decoder_block_out_channels=tuple(vae_kwargs["decoder_block_out_channels"]),
        latent_channels=vae_kwargs["latent_channels"],
    ))
    transformer = build_transformer(vae_kwargs["latent_channels"], **config["transformer"])
    head = DepthHead(latent_channels=vae_kwargs["latent_channels"], spatial_factor=vae.spatial_factor,
                     **config["depth_head"])
    return MirageGenerator(
        transformer, vae, head, FlowMatchEulerDiscreteScheduler(shift=config["sampling"]["shift"]),
        num_inference_steps=config["sampling"]["num_inference_steps"], context_frames=config["context_frames"],
        voxel_size=config["memory"]["voxel_size"], cache_capacity=config["memory"]["capacity"],
    ).eval()


def env_kwargs(mode: str) -> dict:
    generator = "oracle" if mode == "oracle" else default_sized_generator()
    return {"generator": generator, "resolution": 128, "chunk": 4, "room_seeds": [0, 1, 2, 3, 4, 5, 6, 7]}


def median_step(env, actions, steps: int, warmup: int = 2) -> float:
    times = []
    for k in range(warmup + steps):
        start = time.perf_counter()
        env.step(actions(k))
        if k >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--modes", nargs="*", default=["generated", "oracle"], choices=["generated", "oracle"],
                        help="timing runs (none: only the memory run)")
    parser.add_argument("--memory-steps", type=int, default=250)
    parser.add_argument("--quick", action="store_true", help="3 timed steps, 50 memory steps")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.memory_steps = 3, 50
    rng = np.random.default_rng(0)
    print(f"torch threads: {torch.get_num_threads()}, resolution 128, chunk 4", flush=True)
    for mode in args.modes:
        single = MirageRoomEnv(**env_kwargs(mode))
        single.reset(seed=0)
        t1 = median_step(single, lambda k: rng.uniform(-1, 1, 4).astype(np.float32), args.steps)
        print(f"[{mode}] single env: {t1 * 1000:.1f} ms/step (median of {args.steps})", flush=True)
        del single
        for n in args.num_envs:
            vec = MirageRoomVectorEnv(n, max_episode_steps=None, **env_kwargs(mode))
            vec.reset(seed=0)
            tn = median_step(vec, lambda k: rng.uniform(-1, 1, (n, 4)).astype(np.float32), args.steps)
            print(f"[{mode}] batched num_envs={n}: {tn * 1000:.1f} ms/step, {tn / n * 1000:.1f} ms per env-step, "
                  f"{t1 / (tn / n):.2f}x the single env's throughput", flush=True)
            del vec

    if args.memory_steps < 1:
        return
    # What the cache holds does not depend on how many denoising steps made the tokens: one step keeps this run short.
    env = MirageRoomEnv(**env_kwargs("generated"), num_inference_steps=1)
    env.reset(seed=0)
    print(f"[generated, latent memory, 1 denoising step] one episode of {args.memory_steps} random steps:",
          flush=True)
    marks = sorted({10, *range(50, args.memory_steps + 1, 50), args.memory_steps})
    for k in range(1, args.memory_steps + 1):
        _, _, _, _, info = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
        if k in marks:
            print(f"  step {k:4d}: RSS {rss_mib():8.1f} MiB, memory_bytes {info['memory_bytes'] / 2**20:7.3f} MiB, "
                  f"coverage {info['coverage']:.2f}", flush=True)


if __name__ == "__main__":
    main()
