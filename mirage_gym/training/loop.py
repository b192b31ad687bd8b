"""What every training stage shares: checkpoints with resume, the optimiser and schedule, logging.

A checkpoint is one ``checkpoint.pt`` in the run folder, written atomically (a temporary
file renamed over the old one), so killing a run at any moment leaves either the previous
or the new checkpoint, never half of one. ``--resume`` continues from it; the data stream
is reseeded from ``(seed, step)`` so a resumed run stays reproducible.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch import nn

__all__ = [
    "TrainState",
    "add_common_arguments",
    "stage_settings",
    "resolve_device",
    "make_optimizer",
    "save_checkpoint",
    "load_checkpoint",
]

CHECKPOINT = "checkpoint.pt"


def add_common_arguments(parser: argparse.ArgumentParser, default_out: str) -> None:
    parser.add_argument("--config", default="default", help="shipped config name or path to a JSON config")
    parser.add_argument("--out", default=default_out, help="run folder: checkpoint, tensorboard logs, exported weights")
    parser.add_argument("--steps", type=int, default=None, help="total optimisation steps (default: the config's)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default: the config's)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: the config's)")
    parser.add_argument(
        "--resume", action=argparse.BooleanOptionalAction, default=True,
        help="continue from OUT/checkpoint.pt when it exists (default: on)",
    )


def stage_settings(
    config: dict, stage: str, steps: int | None, batch_size: int | None, seed: int | None
) -> tuple[dict, int, int, int]:
    """A stage's hyperparameters with the command-line overrides applied; seeds torch."""
    if stage not in config:
        raise ValueError(f"config {config.get('name', '?')!r} has no {stage!r} section: it does not train this stage")
    hp = config[stage]
    seed = hp["seed"] if seed is None else seed
    torch.manual_seed(seed)
    return hp, steps or hp["steps"], batch_size or hp["batch_size"], seed


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def make_optimizer(params, lr: float, warmup: int, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=1e-4)
    scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    return optimizer, scheduler


class TrainState:
    """Step counter, wall time and a stage's own small records (``extra``), carried across resumes."""

    def __init__(self) -> None:
        self.step = 0
        self.wall_time = 0.0
        self.extra: dict[str, Any] = {}
        self._started = time.perf_counter()

    def elapsed(self) -> float:
        return self.wall_time + time.perf_counter() - self._started

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "wall_time": self.elapsed(), "extra": self.extra}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.wall_time = float(state["wall_time"])
        self.extra = dict(state.get("extra", {}))
        self._started = time.perf_counter()


def save_checkpoint(out: Path, state: TrainState, modules: dict[str, nn.Module], optimizer, scheduler, config: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "train_state": state.state_dict(),
        "modules": {name: module.state_dict() for name, module in modules.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "config": config,
    }
    tmp = out / (CHECKPOINT + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, out / CHECKPOINT)
    (out / "config.json").write_text(json.dumps(config, indent=2))


def load_checkpoint(out: Path, state: TrainState, modules: dict[str, nn.Module], optimizer, scheduler) -> bool:
    """Restore from ``out/checkpoint.pt``; returns False when there is none."""
    path = out / CHECKPOINT
    if not path.exists():
        return False
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file: say which file, do not guess
        raise ValueError(f"checkpoint {path} could not be read ({err}); move it away to start afresh") from err
    missing = [name for name in modules if name not in payload.get("modules", {})]
    if missing:
        raise ValueError(f"checkpoint {path} lacks modules {missing}: it belongs to another stage or config")
    for name, module in modules.items():
        module.load_state_dict(payload["modules"][name])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    state.load_state_dict(payload["train_state"])
    return True
