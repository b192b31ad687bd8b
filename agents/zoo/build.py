"""Rebuild the PPO policies of the zoo (agents/zoo/ENV.json) with agents/train_ppo.py.

One ground-truth (oracle) training run gives three checkpoints along the way (early, middle, late);
one run of the same budget on generated frames (the shipped model, `default`) gives the fourth.
Both runs are resumable (train_ppo.py --resume): rerun the same command after a kill. A run whose zips
are all in the destination already is skipped (the zoo is versioned, its runs are not): --rebuild retrains it.

    python agents/zoo/build.py --env MirageRoom-v0                  # the zoo's budget: 100k steps each
    python agents/zoo/build.py --env MirageRoomNav-v0
    python agents/zoo/build.py --env MirageRoom-v0 --dry-run        # print the commands only

The zips land in agents/zoo/ppo/ENV/ as oracle_<steps>.zip and <generator>_<steps>.zip, the names
the manifests use. They are stable-baselines3 zips, i.e. pickles: loading one runs code from it, so
load only zips you built or trust. The runs themselves (tensorboard logs, every checkpoint) stay in
--logdir (default agents/zoo/runs, not versioned).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from mirage_gym.eval.rl import train_run_name

ZOO = Path(__file__).resolve().parent
TRAIN = ZOO.parent / "train_ppo.py"


def checkpoint_near(run: Path, steps: int) -> Path:
    """The checkpoint of ``run`` whose step count is closest to ``steps`` (the final model for the last)."""
    found = {}
    for path in (run / "checkpoints").glob("ppo_*_steps.zip"):
        try:
            found[int(path.stem.split("_")[1])] = path
        except (IndexError, ValueError):
            continue
    if not found:
        raise FileNotFoundError(f"no checkpoints in {run / 'checkpoints'}")
    best = min(found, key=lambda n: abs(n - steps))
    return found[best]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="MirageRoom-v0", choices=["MirageRoom-v0", "MirageRoomNav-v0"])
    parser.add_argument("--timesteps", type=int, default=100_000, help="budget of each run (the late checkpoint)")
    parser.add_argument("--early", type=int, default=10_000, help="steps of the early checkpoint")
    parser.add_argument("--middle", type=int, default=40_000, help="steps of the middle checkpoint")
    parser.add_argument("--checkpoint-freq", type=int, default=10_000)
    parser.add_argument("--generated", default="default", help="the generator of the generated-frame run ('' skips)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--logdir", type=Path, default=ZOO / "runs")
    parser.add_argument("--dest", type=Path, default=None, help="default: agents/zoo/ppo/ENV")
    parser.add_argument("--train-arg", action="append", default=[], metavar="ARG",
                        help="extra train_ppo.py argument for both runs (repeatable, e.g. --train-arg=--num-envs "
                             "--train-arg=4)")
    parser.add_argument("--rebuild", action="store_true", help="retrain runs whose zips are in --dest already")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    dest = args.dest or ZOO / "ppo" / args.env
    runs = [("oracle", [args.early, args.middle, args.timesteps])]
    if args.generated:
        runs.append((args.generated, [args.timesteps]))
    for generator, keep in runs:
        targets = {steps: dest / f"{Path(generator).name}_{steps}.zip" for steps in keep}
        if not args.rebuild and all(target.exists() for target in targets.values()):
            print(f"skipped {generator}: {', '.join(t.name for t in targets.values())} in {dest} (--rebuild retrains)",
                  flush=True)
            continue
        cmd = [sys.executable, str(TRAIN), "--env", args.env, "--generator", generator, "--total-timesteps",
               str(args.timesteps), "--checkpoint-freq", str(args.checkpoint_freq), "--seed", str(args.seed),
               "--logdir", str(args.logdir), "--video-freq", "0", "--threads", str(args.threads), "--resume",
               *args.train_arg]
        print(" ".join(cmd), flush=True)
        if args.dry_run:
            continue
        subprocess.run(cmd, check=True, cwd=TRAIN.parent)
        run = args.logdir / train_run_name(args.env, generator, args.seed)
        dest.mkdir(parents=True, exist_ok=True)
        for steps, target in targets.items():
            source = run / "final_model.zip" if steps == args.timesteps else checkpoint_near(run, steps)
            shutil.copyfile(source, target)
            print(f"{source} -> {target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
