"""The ``mirage-gym`` command line: one entry point, one subcommand per job.

Each subcommand lives in the module that owns the job; that module provides
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when
their subcommand runs, so ``mirage-gym --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# (command path, module, one-line help). Nested paths ("bench", "memory") become sub-subcommands; a command
# can be both (``eval`` runs itself, ``eval rl`` its sub-subcommand).
COMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (("demo",), "mirage_gym.demo", "roll out a scene and write a video (the README's first command)"),
    (("train", "all"), "mirage_gym.training.pipeline", "every stage of a model in one resumable command (vae, generator, self-forcing, depth) -> OUT/model"),
    (("train", "vae"), "mirage_gym.training.vae_stage", "stage 1: train the autoencoder and depth head on ground-truth renders"),
    (("train", "depth"), "mirage_gym.training.depth_stage", "stage 1b: train the depth head alone on the frozen stage-1 latents"),
    (("train", "generator"), "mirage_gym.training.generator_stage", "stage 2: train the widened Wan transformer (flow matching over the cache)"),
    (("train", "self-forcing"), "mirage_gym.training.rollout_stage", "fine-tune a stage-2 model on its own multi-chunk rollouts (self-forcing)"),
    (("train", "ablate-vae"), "mirage_gym.training.ablation", "autoencoder ablation: candidate designs trained for equal CPU time, scored on held-out frames"),
    (("train", "curves"), "mirage_gym.training.curves", "plot a run's tensorboard curves (every stage of a `train all` run) into one PNG"),
    (("train", "lora"), "mirage_gym.training.lora_stage", "LoRA-tune a real Wan2.2 folder (with the widening and a depth head) on the rooms"),
    (("bench", "memory"), "mirage_gym.bench.memory", "LatentCache vs PointCloudMemory: time per chunk and bytes held"),
    (("bench", "render"), "mirage_gym.bench.render", "ground-truth renderer throughput (frames/s)"),
    (("bench", "filter"), "mirage_gym.bench.filter", "dynamic-token filter precision/recall against ground-truth moving objects"),
    (("eval",), "mirage_gym.eval.cli", "consistency metrics of a generator on held-out trajectories, per memory mode"),
    (("eval", "rl"), "mirage_gym.eval.rl", "rank a policy zoo in the world model and in the ground truth: Spearman, Pearson, MMRV"),
    (("eval", "collisions"), "mirage_gym.eval.collision", "collision agreement: would generated physics block the moves the house blocks"),
    (("eval", "compare"), "mirage_gym.eval.compare", "two eval runs on the same trajectories, paired: which figures differ beyond noise"),
    (("eval", "transfer"), "mirage_gym.eval.transfer", "dream-to-real: PPO trained in the world model, scored in the ground truth"),
    (("bench", "generator"), "mirage_gym.bench.generator", "end-to-end time per chunk and memory vs frames: latent, pixel, none"),
    (("bench", "env"), "mirage_gym.bench.env", "environment steps per second, single and batched"),
    (("collect",), "mirage_gym.data.collect", "roll out vectorised envs into a resumable Minari dataset (local or Ray)"),
    (("play",), "mirage_gym.play.server", "drive the camera through a generated scene in the browser"),
]

GROUP_HELP = {
    "train": "train the default model's parts (resumable; tensorboard logs in the run folder)",
    "bench": "benchmarks that print figures and can write them to a file or results folder",
}


def build_parser(commands: Sequence[tuple[tuple[str, ...], str, str]] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mirage-gym",
        description=(
            "mirage_gym: a Gymnasium world made of generated video, kept consistent by a 3D latent cache. "
            "Run `mirage-gym COMMAND --help` for the options of a command."
        ),
    )
    from mirage_gym import __version__

    parser.add_argument("--version", action="version", version=f"mirage-gym {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    leaves: dict[str, argparse.ArgumentParser] = {}
    for path, module, help_text in commands:
        if len(path) == 1:
            sub = top.add_parser(path[0], help=help_text, description=help_text)
            leaves[path[0]] = sub
        else:
            group = path[0]
            if group not in groups and group in leaves:  # a command with sub-subcommands of its own
                groups[group] = leaves[group].add_subparsers(dest=f"{group}_command", metavar="SUBCOMMAND",
                                                             required=False)
            if group not in groups:
                gp = top.add_parser(group, help=GROUP_HELP.get(group, group), description=GROUP_HELP.get(group))
                groups[group] = gp.add_subparsers(dest=f"{group}_command", metavar="SUBCOMMAND", required=True)
            sub = groups[group].add_parser(path[1], help=help_text, description=help_text)
        sub.set_defaults(_module=module)
        _lazy_arguments(sub, module)
    return parser


def _lazy_arguments(sub: argparse.ArgumentParser, module: str) -> None:
    """Register a subcommand's own options; they are imported only when it is parsed."""
    original = sub.parse_known_args

    def parse_known_args(args=None, namespace=None):  # type: ignore[no-untyped-def]
        if not getattr(sub, "_mirage_loaded", False):
            importlib.import_module(module).add_arguments(sub)
            sub._mirage_loaded = True  # type: ignore[attr-defined]
        return original(args, namespace)

    sub.parse_known_args = parse_known_args  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_module", None) is None:
        parser.print_help()
        return 0
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (ValueError, FileNotFoundError) as err:  # bad input or missing files: the message says what to do
        command = " ".join(filter(None, (args.command, getattr(args, f"{args.command}_command", None))))
        print(f"mirage-gym {command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
