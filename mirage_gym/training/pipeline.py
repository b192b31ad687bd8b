"""Every stage of a model in one command: ``mirage-gym train all --config default --out runs/default``.

Runs, each in its own sub-folder of ``OUT`` and each resumable:

1. ``OUT/vae`` -- stage 1, the autoencoder and its depth head (:func:`train_vae`);
2. ``OUT/generator`` -- stage 2, the transformer over the cache (:func:`train_generator`);
3. ``OUT/self_forcing`` -- stage 2 fine-tuned on its own rollouts (:func:`train_self_forcing`;
   skipped when the config has no ``training.self_forcing`` section);
4. ``OUT/depth`` -- the depth head alone, on encoded and on the final transformer's generated
   latents (:func:`train_depth`; skipped when the config has no ``training.depth`` section);

then writes ``OUT/model``: the final transformer's model folder with the depth stage's head, the folder that
``generator=OUT/model`` (or a copy into ``mirage_gym/weights/default``) loads. Kill it at any
point and run the same command again: finished stages are not trained again (their exports are
re-written from their final checkpoints), an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from mirage_gym.config import Config, load_config
from mirage_gym.training.depth_stage import train_depth
from mirage_gym.training.generator_stage import train_generator
from mirage_gym.training.loop import RunOptions, resolve_device
from mirage_gym.training.rollout_stage import train_self_forcing
from mirage_gym.training.vae_stage import train_vae

__all__ = ["train_all"]


def train_all(config: Config, out: Path, *, device: torch.device = torch.device("cpu"), progress: bool = True) -> Path:
    """Train every stage of ``config`` under ``out``; returns the finished model folder ``out/model``.

    Every stage runs with its config section's steps, batch size and seed, and resumes.
    """
    run = RunOptions(device=device, progress=progress)
    train_vae(config, out / "vae", run=run)
    train_generator(config, out / "generator", out / "vae", run=run)
    stage2 = out / "generator" / "model"
    if config.training.self_forcing is not None:
        train_self_forcing(config, out / "self_forcing", stage2, run=run)
        stage2 = out / "self_forcing" / "model"
    model = out / "model"
    tmp = out / "model.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(stage2, tmp)
    if config.training.depth is not None:
        train_depth(config, out / "vae", out / "depth", generator=stage2, run=run)
        shutil.rmtree(tmp / "depth_head")
        shutil.copytree(out / "depth" / "depth_head", tmp / "depth_head")
    if model.exists():  # replaced only once the new folder is complete
        shutil.rmtree(model)
    tmp.rename(model)
    return model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Steps, batch sizes and seeds come from the config's stage sections (`train vae|generator|self-forcing|depth`
    # override them for one stage); it always resumes.
    parser.add_argument("--config", default="default", help="shipped config name or path to a JSON config")
    parser.add_argument("--out", default="runs/default", help="run folder: one sub-folder per stage, and model/")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    model = train_all(load_config(args.config), Path(args.out), device=resolve_device(args.device))
    print(f"model: {model} (load it with generator={str(model)!r})")
    return 0
