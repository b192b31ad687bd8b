"""Evaluate a PPO model on held-out rooms, with a random agent beside it on the same episodes.

    .venv/bin/python agents/evaluate.py --env MirageRoom-v0 --generator oracle \
        --model runs/ppo/MirageRoom-v0_oracle_seed0/best/best_model.zip --episodes 20

Prints mean +- std of the episode return, the final coverage (fraction of the house's navigable
floor seen; n/a under generated physics, which has no house total), the floor area shown (m^2,
under either physics), the success rate (Nav), the episode length and the collisions per episode, for each
policy. Without --model only the random agent is evaluated. Episode k of every policy uses seed --seed + k (same room, start and goal).

A PPO .zip holds pickles: loading it runs the code inside, so pass --model files from a trusted
source only (ones you trained yourself).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import ENV_IDS, EVAL_ROOM_SEEDS, HEADER, load_hyperparams, make_sb3_env, run_episodes
from stable_baselines3 import PPO


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="MirageRoom-v0", choices=ENV_IDS)
    parser.add_argument("--generator", default="default", help="'default', 'oracle' or a model folder")
    parser.add_argument("--memory", default="latent", choices=["latent", "pixel", "none"])
    parser.add_argument("--model", type=Path, help="a PPO .zip (from train_ppo.py); it is a pickle, "
                        "loading it runs code: trusted files only")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--num-envs", type=int, default=4, help="episodes run side by side (batched)")
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--chunk", type=int)
    parser.add_argument("--max-episode-steps", type=int)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--hyperparams", type=Path, default=Path(__file__).with_name("hyperparams.yml"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    params = load_hyperparams(args.env, args.hyperparams)
    env_kwargs = dict(params.get("env_kwargs", {}), room_seeds=EVAL_ROOM_SEEDS, memory=args.memory,
                      device=args.device)
    for flag in ("resolution", "chunk", "max_episode_steps"):
        if getattr(args, flag) is not None:
            env_kwargs[flag] = getattr(args, flag)
    num_envs = min(args.num_envs, args.episodes)
    venv = make_sb3_env(args.env, num_envs, args.generator, env_kwargs, params.get("wrapper_kwargs", {}))

    rows = []
    if args.model is not None:
        model = PPO.load(args.model, device=args.device)
        rows.append(("ppo", run_episodes(venv, lambda obs: model.predict(obs, deterministic=True)[0],
                                         args.episodes, args.seed)))
    rng = np.random.default_rng(args.seed)
    space = venv.action_space

    def random_actions(obs):
        if hasattr(space, "n"):
            return rng.integers(space.n, size=num_envs)
        return rng.uniform(space.low, space.high, (num_envs, *space.shape)).astype(np.float32)

    rows.append(("random", run_episodes(venv, random_actions, args.episodes, args.seed)))
    print(f"{args.env}, generator={args.generator}, {args.episodes} episodes on held-out rooms")
    print(HEADER)
    for name, stats in rows:
        print(stats.row(name))
    venv.close()


if __name__ == "__main__":
    main()
