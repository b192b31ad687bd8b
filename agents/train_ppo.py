"""Train PPO (stable-baselines3, MultiInputPolicy) on MirageRoom-v0 or MirageRoomNav-v0.

A plain, CleanRL-style script: every knob is a flag, the defaults come from
agents/hyperparams.yml (zoo style), and everything lands in --logdir:
tensorboard logs (including GIF videos of evaluation episodes under ``eval/video``),
checkpoints, the best model (EvalCallback on held-out rooms) and the final model.

    .venv/bin/python agents/train_ppo.py --env MirageRoom-v0 --generator oracle --total-timesteps 100000
    .venv/bin/python agents/train_ppo.py --env MirageRoomNav-v0 --generator path/to/model
    .venv/bin/python agents/train_ppo.py --env MirageRoom-v0 --env-option physics=generated
    tensorboard --logdir runs/ppo

The saved models are stable-baselines3 .zip files, which hold pickles: loading one runs the
code inside it, so load (evaluate.py, mirage-gym collect --policy) only files from a trusted
source, such as ones you trained yourself.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from common import ENV_IDS, EVAL_ROOM_SEEDS, TRAIN_ROOM_SEEDS, load_hyperparams, make_sb3_env
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback
from stable_baselines3.common.logger import TensorBoardOutputFormat
from stable_baselines3.common.vec_env import VecMonitor
from tensorboard.compat.proto.summary_pb2 import Summary

from mirage_gym.eval.rl import parse_options, train_run_name


class VideoCallback(BaseCallback):
    """Every ``every`` steps, runs one deterministic episode and logs it to tensorboard as an animated GIF."""

    def __init__(self, env, every: int, max_steps: int) -> None:
        super().__init__()
        self.env = env
        self.every = every
        self.max_steps = max_steps
        self._next = every

    def _on_step(self) -> bool:
        if self.num_timesteps < self._next:
            return True
        self._next += self.every
        obs = self.env.reset()
        frames = [self.env.get_images()[0]]
        for _ in range(self.max_steps):
            action, _ = self.model.predict(obs, deterministic=True)
            obs, _, dones, _ = self.env.step(action)
            frames.append(self.env.get_images()[0])
            if dones[0]:
                break
        self._log_gif(np.stack(frames))
        return True

    def _log_gif(self, frames: np.ndarray) -> None:
        # Tensorboard shows animated GIFs in its image tab (what SummaryWriter.add_video writes, without moviepy).
        buffer = io.BytesIO()
        iio.imwrite(buffer, frames, extension=".gif", duration=250, loop=0)
        image = Summary.Image(height=frames.shape[1], width=frames.shape[2], colorspace=3,
                              encoded_image_string=buffer.getvalue())
        summary = Summary(value=[Summary.Value(tag="eval/video", image=image)])
        for output in self.model.logger.output_formats:
            if isinstance(output, TensorBoardOutputFormat):
                output.writer.file_writer.add_summary(summary, self.num_timesteps)
                output.writer.flush()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="MirageRoom-v0", choices=ENV_IDS)
    parser.add_argument("--generator", default="default", help="'default', 'oracle' or a model folder")
    parser.add_argument("--memory", default="latent", choices=["latent", "pixel", "none"])
    parser.add_argument("--total-timesteps", type=int, help="default: n_timesteps of the yaml")
    parser.add_argument("--num-envs", type=int, help="batched sub-envs (default: n_envs of the yaml)")
    parser.add_argument("--resolution", type=int, help="default: env_kwargs of the yaml")
    parser.add_argument("--image-size", type=int,
                        help="frame size the policy sees, the env's frames resized (default: the env's; e.g. "
                             "--resolution 128 --image-size 64 trains a 64x64 policy in the default model at its own size)")
    parser.add_argument("--chunk", type=int)
    parser.add_argument("--max-episode-steps", type=int, help="default: the registration's (200 Room, 100 Nav)")
    parser.add_argument("--env-option", action="append", metavar="KEY=VALUE",
                        help="extra gym.make option of the training and evaluation envs (repeatable, e.g. "
                             "physics=generated); each one is part of the run's folder name")
    parser.add_argument("--n-steps", type=int, help="PPO rollout length per sub-env")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hyperparams", type=Path, default=Path(__file__).with_name("hyperparams.yml"))
    parser.add_argument("--logdir", type=Path, default=Path("runs/ppo"))
    parser.add_argument("--eval-freq", type=int, default=10_000, help="timesteps between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=4)
    parser.add_argument("--checkpoint-freq", type=int, default=25_000, help="timesteps between checkpoints")
    parser.add_argument("--video-freq", type=int, default=25_000, help="timesteps between eval videos (0: none)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="device of the policy and the generator")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the run's newest checkpoint (checkpoints/ppo_N_steps.zip) up to "
                             "--total-timesteps; a finished run (final_model.zip) is left as it is")
    return parser.parse_args()


def latest_checkpoint(run: Path) -> Path | None:
    """The newest ``checkpoints/ppo_N_steps.zip`` of a run (largest N), or None."""
    found = []
    for path in (run / "checkpoints").glob("ppo_*_steps.zip"):
        try:
            found.append((int(path.stem.split("_")[1]), path))
        except (IndexError, ValueError):
            continue
    return max(found)[1] if found else None


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    params = load_hyperparams(args.env, args.hyperparams)
    env_kwargs = dict(params.pop("env_kwargs", {}))
    wrapper_kwargs = dict(params.pop("wrapper_kwargs", {}))
    for flag in ("resolution", "chunk", "max_episode_steps"):
        if getattr(args, flag) is not None:
            env_kwargs[flag] = getattr(args, flag)
    if args.image_size is not None:
        wrapper_kwargs["size"] = args.image_size
    options = parse_options(args.env_option)
    env_kwargs.update(options, memory=args.memory, device=args.device)
    eval_kwargs = dict(env_kwargs, room_seeds=EVAL_ROOM_SEEDS)
    env_kwargs["room_seeds"] = TRAIN_ROOM_SEEDS
    num_envs = args.num_envs or params.pop("n_envs", 8)
    params.pop("n_envs", None)
    total = args.total_timesteps or int(params.pop("n_timesteps"))
    params.pop("n_timesteps", None)
    policy = params.pop("policy")
    if args.n_steps:
        params["n_steps"] = args.n_steps
    if args.batch_size:
        params["batch_size"] = args.batch_size

    run = args.logdir / train_run_name(args.env, args.generator, args.seed, options)
    if args.resume and (run / "final_model.zip").is_file():
        print(f"{run / 'final_model.zip'} exists: the run is finished (--resume does nothing)")
        return
    run.mkdir(parents=True, exist_ok=True)
    settings = {"env": args.env, "generator": str(args.generator), "seed": args.seed, "total_timesteps": total,
                "num_envs": num_envs, "env_kwargs": env_kwargs, "wrapper_kwargs": wrapper_kwargs, "ppo": params}
    (run / "settings.json").write_text(json.dumps(settings, indent=1, default=str) + "\n")  # what this run trains with
    train_env = VecMonitor(make_sb3_env(args.env, num_envs, args.generator, env_kwargs, wrapper_kwargs))
    train_env.seed(args.seed)
    eval_env = VecMonitor(make_sb3_env(args.env, 1, args.generator, eval_kwargs, wrapper_kwargs))
    video_env = make_sb3_env(args.env, 1, args.generator, eval_kwargs, wrapper_kwargs, render_mode="rgb_array",
                             render_layout="grid")
    video_env.seed(args.seed + 1)

    checkpoint = latest_checkpoint(run) if args.resume else None
    if checkpoint is not None:
        # Weights, optimiser and step count come back; the rollout buffer and RNG states do not, so a
        # resumed run is not bit-identical to an uninterrupted one.
        model = PPO.load(checkpoint, env=train_env, device=args.device, tensorboard_log=str(run))
        print(f"resuming from {checkpoint} at {model.num_timesteps} steps")
    else:
        model = PPO(policy, train_env, seed=args.seed, device=args.device, tensorboard_log=str(run), verbose=1,
                    **params)
    per_env = lambda steps: max(1, steps // num_envs)  # noqa: E731  callbacks count vector steps
    callbacks = [
        CheckpointCallback(per_env(args.checkpoint_freq), str(run / "checkpoints"), name_prefix="ppo"),
        EvalCallback(eval_env, n_eval_episodes=args.eval_episodes, eval_freq=per_env(args.eval_freq),
                     best_model_save_path=str(run / "best"), log_path=str(run / "eval"), deterministic=True),
    ]
    if args.video_freq:
        max_steps = env_kwargs.get("max_episode_steps") or video_env.get_attr("max_episode_steps")[0]
        callbacks.append(VideoCallback(video_env, args.video_freq, max_steps))
    started = time.perf_counter()
    remaining = total - model.num_timesteps
    if remaining > 0:
        model.learn(total_timesteps=remaining, callback=callbacks, tb_log_name="ppo",
                    reset_num_timesteps=checkpoint is None)
    model.save(run / "final_model")
    print(f"trained {model.num_timesteps} steps in {time.perf_counter() - started:.0f} s; saved {run / 'final_model.zip'}")
    train_env.close()
    eval_env.close()


if __name__ == "__main__":
    main()
