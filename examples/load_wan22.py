"""Run the environment on a Wan2.2 model from a local folder (diffusers layout), optionally with a Mirage LoRA.

    .venv/bin/python examples/load_wan22.py --folder /models/Wan2.2-TI2V-5B-Diffusers \
        --lora runs/mirage_lora --prompt "a quiet living room" --device cuda --resolution 256 --chunk 5

The Wan2.2 VAE compresses time 4x, so a chunk has 1 + 4k frames (5, 9, ...); the resolution must
be a multiple of the VAE factor times the patch size (32 for TI2V-5B, 16 for A14B). Without a
Mirage LoRA the widened input layer is zero-initialised: the cache conditioning is not used yet.
"""

from __future__ import annotations

import argparse

import numpy as np

from mirage_gym.envs import MirageRoomEnv
from mirage_gym.model.generator import MirageGenerator
from mirage_gym.video import write_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", required=True, help="a Wan2.2 folder (TI2V-5B or A14B, diffusers layout)")
    parser.add_argument("--lora", help="a Mirage LoRA folder trained on this base")
    parser.add_argument("--prompt", help="encoded once with the folder's text encoder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=5)
    parser.add_argument("--num-inference-steps", type=int, default=20)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default="wan22_rollout.mp4")
    args = parser.parse_args()

    generator = MirageGenerator.from_pretrained(args.folder, lora=args.lora, device=args.device, prompt=args.prompt,
                                                num_inference_steps=args.num_inference_steps)
    env = MirageRoomEnv(generator=generator, resolution=args.resolution, chunk=args.chunk, device=args.device,
                        report_step_time=True)
    obs, _ = env.reset(seed=0)
    frames = [obs["rgb"][0]]
    for _ in range(args.steps):
        obs, _, _, _, info = env.step(np.array([0.5, 0.0, 0.3, 0.0], np.float32))
        frames.extend(obs["rgb"])
        print(f"step: {info['step_time']:.2f} s for {args.chunk} frames, memory {info['memory_bytes'] / 2**20:.2f} MiB")
    print(f"-> {write_video(args.out, np.stack(frames), fps=8)}")


if __name__ == "__main__":
    main()
