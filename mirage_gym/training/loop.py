"""The one training loop: :func:`fit` runs every stage.

A stage is a :class:`Stage`: its modules, a batch source and a loss. :func:`fit` owns the
rest, the same for all of them, in the plain order of a CleanRL or diffusers script:

* **randomness** -- step ``s`` of a run seeded ``seed`` draws everything (data, crops,
  noise, cache dropout) from ``step_rng(seed, s)``, and the global torch generator is
  re-seeded from ``(seed, s)`` too, for the draws modules make on their own (dropout). A run
  resumed at step ``s`` is therefore the same run: it ends with the same weights, bit for bit;
* AdamW with a linear warm-up and a cosine decay, gradients clipped at norm 1;
* tqdm, and tensorboard in ``OUT/tb`` under one key scheme: ``train/<name>`` for the loss's
  statistics and the learning rate, ``val/<name>`` for the stage's validation (run every
  ``log_every`` steps, modules in eval mode, no gradients), ``images/<name>``;
* **checkpoints** -- one ``OUT/checkpoint.pt`` every ``checkpoint_every`` steps and at the end,
  written atomically (a temporary file renamed over the old one: a run killed at any moment
  leaves the previous or the new checkpoint, never half of one) and holding only tensors and
  plain data, so it is read back with ``torch.load(weights_only=True)``: a planted file that
  would run code when unpickled is refused with a ``ValueError`` naming it.

Stage-specific events (stage 1 freezing its encoder at a step) are hooks of the stage, not
loops of their own. A stage may also bring an :class:`Adversary` (a GAN discriminator): a module
with its own loss and its own optimiser, stepped by the same loop right after the stage's step
(while the stage's loss runs, the adversary's parameters take no gradient), saved in the same
checkpoint and resumed with it.

A run can also be bounded by CPU time (``fit(..., cpu_budget_s=...)``: the process CPU time of
its steps, summed over resumes, as ``time.process_time`` counts it), on top of ``settings.steps``.
The learning-rate schedule stays a function of the step; a run stopped by the budget ends with a
checkpoint like any other, and is not bit for bit reproducible in its length (CPU time is not).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from mirage_gym.config import Config, StageTraining

__all__ = [
    "CHECKPOINT",
    "Stage",
    "Adversary",
    "Fitted",
    "RunOptions",
    "TrainState",
    "fit",
    "derived_seed",
    "step_rng",
    "stage_settings",
    "add_common_arguments",
    "print_final",
    "resolve_device",
    "make_optimizer",
    "save_checkpoint",
    "load_checkpoint",
    "load_tensors",
    "save_tensors",
]

CHECKPOINT = "checkpoint.pt"
# Offsets the global generator's seed from the step generator's, so the two streams differ.
_GLOBAL_SALT = 2**40

def derived_seed(seed: int, index: int) -> int:
    """The seed of item ``index`` (a step, a shard of clips) of a run seeded ``seed``."""
    return seed * 1_000_003 + index


def step_rng(seed: int, step: int) -> torch.Generator:
    """The generator every random draw of step ``step`` comes from."""
    return torch.Generator().manual_seed(derived_seed(seed, step))


@dataclass
class Adversary:
    """A network trained against a stage's modules (a GAN discriminator), in the same loop.

    Attributes:
        name: its name in the checkpoint (beside the stage's modules) and in the statistics.
        module: the adversary; the stage's loss may call it (its parameters are frozen meanwhile).
        loss: ``loss(batch, rng) -> (loss, stats)``, called after the stage's optimiser step with the
            same batch and generator (what the stage's loss produced, e.g. reconstructions, the stage
            keeps for it); ``stats`` are logged as ``train/<stat>`` beside the stage's, under names of
            their own (a name the stage's loss reports too is a ``ValueError``).
        lr: its AdamW learning rate (constant: no warm-up, no decay).
        betas: its AdamW betas.
        start: the first step at which it trains (the stage decides when its loss uses it).
    """

    name: str
    module: nn.Module
    loss: Callable[[Any, torch.Generator], tuple[Tensor, dict[str, float]]]
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.99)
    start: int = 0

    def optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.module.parameters(), lr=self.lr, betas=self.betas, weight_decay=0.0)


@dataclass
class Stage:
    """What a stage gives :func:`fit`.

    Attributes:
        name: the stage's name (the progress bar says ``train <name>``).
        modules: the trained modules, saved in the checkpoint under these names.
        batch: ``batch(step, rng)``: the batch of ``step``, drawn from ``rng``.
        loss: ``loss(batch, rng) -> (loss, stats)``; ``stats`` are floats logged as ``train/<name>``.
        param_groups: the optimiser's parameter groups (default: every parameter of ``modules``
            that requires a gradient when the stage starts).
        validate: statistics on held-out data, logged as ``val/<name>``.
        before_step: a hook called with the step number before each step (and after a resume).
        images: images ``[N, 3, H, W]`` in ``[0, 1]`` to log every ``10 * log_every`` steps.
        base_modules: modules not saved that switch between train and eval mode with ``modules``
            (a frozen base whose adapters are trained).
        adversary: an :class:`Adversary` trained against ``modules`` (None: none).
    """

    name: str
    modules: dict[str, nn.Module]
    batch: Callable[[int, torch.Generator], Any]
    loss: Callable[[Any, torch.Generator], tuple[Tensor, dict[str, float]]]
    param_groups: list[dict[str, Any]] | None = None
    validate: Callable[[], dict[str, float]] | None = None
    before_step: Callable[[int], None] | None = None
    images: Callable[[], dict[str, Tensor]] | None = None
    base_modules: tuple[nn.Module, ...] = ()
    adversary: Adversary | None = None

    def train(self, mode: bool = True) -> None:
        extra = (self.adversary.module,) if self.adversary is not None else ()
        for module in (*self.modules.values(), *self.base_modules, *extra):
            module.train(mode)

    def saved_modules(self) -> dict[str, nn.Module]:
        """What the checkpoint holds: ``modules`` and the adversary."""
        if self.adversary is None:
            return dict(self.modules)
        if self.adversary.name in self.modules:
            raise ValueError(f"stage {self.name}: the adversary's name {self.adversary.name!r} is one of its modules'")
        return {**self.modules, self.adversary.name: self.adversary.module}


@dataclass
class Fitted:
    """What :func:`fit` leaves: the steps done, the run's wall and CPU time (over resumes) and the last logged
    statistics (``train/<name>``, ``val/<name>``; empty when the run had no step left)."""

    first_step: int  # where this call started: 0, or the step it resumed at
    step: int
    wall_time_s: float
    stats: dict[str, float]
    cpu_time_s: float = 0.0  # process CPU seconds of the steps, over resumes


class TrainState:
    """Step counter, wall time, CPU time of the steps and a stage's own small records (``extra``, plain data),
    carried across resumes."""

    def __init__(self) -> None:
        self.step = 0
        self.wall_time = 0.0
        self.cpu_time = 0.0  # process CPU seconds spent in steps (time.process_time), over resumes
        self.extra: dict[str, Any] = {}
        self._started = time.perf_counter()

    def elapsed(self) -> float:
        return self.wall_time + time.perf_counter() - self._started

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "wall_time": self.elapsed(), "cpu_time": self.cpu_time, "extra": self.extra}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.wall_time = float(state["wall_time"])
        self.cpu_time = float(state.get("cpu_time", 0.0))
        self.extra = dict(state.get("extra", {}))
        self._started = time.perf_counter()


@dataclass(frozen=True)
class RunOptions:
    """How one run of a stage goes, apart from what it trains: the options every stage takes alike.

    Every stage function takes them as one keyword, ``run=RunOptions(...)``; on the command line they are the
    common arguments of :func:`add_common_arguments` (:meth:`from_args`).
    """

    steps: int | None = None
    """Total optimisation steps; None: the stage's config section's (``--steps``)."""
    batch_size: int | None = None
    """Batch size; None: the stage's config section's (``--batch-size``)."""
    device: torch.device = torch.device("cpu")
    """Where the modules train (``--device``, resolved by :func:`resolve_device`)."""
    seed: int | None = None
    """The run's seed; None: the stage's config section's (``--seed``)."""
    resume: bool = True
    """Continue from ``OUT/checkpoint.pt`` when it exists (``--resume/--no-resume``)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", torch.device(self.device))  # "cuda" as well as torch.device("cuda")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunOptions:
        """The options of a command line parsed with :func:`add_common_arguments`."""
        return cls(steps=args.steps, batch_size=args.batch_size, device=resolve_device(args.device), seed=args.seed,
                   resume=args.resume)


def fit(
    stage: Stage,
    settings: StageTraining,
    out: Path,
    *,
    config: Config,
    run: RunOptions = RunOptions(),
    state: TrainState | None = None,
    cpu_budget_s: float | None = None,
) -> Fitted:
    """Train ``stage`` for ``settings.steps`` steps in the run folder ``out`` (resuming from its checkpoint
    when ``run.resume``; ``run.steps`` etc. are already in ``settings``: see :func:`stage_settings`).

    ``state`` lets a stage read and write ``state.extra`` from its hooks (kept in the checkpoint).
    ``cpu_budget_s`` also ends the run (with a checkpoint) once its steps have used that many
    process CPU seconds, counted over resumes.
    """
    params = stage.param_groups or [
        {"params": [p for m in stage.modules.values() for p in m.parameters() if p.requires_grad]}
    ]
    trained = [p for group in params for p in group["params"]]
    optimizer, scheduler = make_optimizer(params, settings.lr, settings.warmup, settings.steps)
    adversary = stage.adversary
    adv_optimizer = adversary.optimizer() if adversary is not None else None
    saved = stage.saved_modules()
    state = state if state is not None else TrainState()
    if run.resume and load_checkpoint(out, state, saved, optimizer, scheduler, adv_optimizer, settings=settings):
        print(f"resumed {out} at step {state.step}")
    first_step = state.step
    # A resumed run drops the events logged after its checkpoint, so no step is drawn twice.
    writer = SummaryWriter(str(out / "tb"), purge_step=state.step or None)
    bar = tqdm(total=settings.steps, initial=state.step, desc=f"train {stage.name}", disable=not run.progress,
               dynamic_ncols=True)
    stats: dict[str, float] = {}
    stage.train()

    def out_of_budget() -> bool:
        return cpu_budget_s is not None and state.cpu_time >= cpu_budget_s

    while state.step < settings.steps and not out_of_budget():
        cpu_start = time.process_time()
        if stage.before_step is not None:
            stage.before_step(state.step)
        rng = step_rng(settings.seed, state.step)
        torch.manual_seed(derived_seed(settings.seed, state.step) + _GLOBAL_SALT)  # modules' own draws (dropout)
        batch = stage.batch(state.step, rng)
        if adversary is not None:
            adversary.module.requires_grad_(False)  # the stage's loss may read it; only the stage learns here
        loss, step_stats = stage.loss(batch, rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        scheduler.step()
        if adversary is not None and state.step >= adversary.start:
            adversary.module.requires_grad_(True)
            adv_loss, adv_stats = adversary.loss(batch, rng)
            adv_optimizer.zero_grad(set_to_none=True)
            adv_loss.backward()
            adv_optimizer.step()
            if step_stats.keys() & adv_stats.keys():
                raise ValueError(f"adversary {adversary.name!r} reports statistics the stage reports too: "
                                 f"{sorted(step_stats.keys() & adv_stats.keys())}")
            step_stats = {**step_stats, **adv_stats}
        state.step += 1
        state.cpu_time += time.process_time() - cpu_start
        bar.update(1)
        last = state.step == settings.steps or out_of_budget()
        if state.step % settings.log_every == 0 or last:
            logged = {f"train/{k}": v for k, v in step_stats.items()} | {"train/lr": scheduler.get_last_lr()[0]}
            if stage.validate is not None:
                stage.train(False)
                with torch.no_grad():
                    logged |= {f"val/{k}": v for k, v in stage.validate().items()}
                stage.train()
            for key, value in logged.items():
                writer.add_scalar(key, value, state.step)
            bar.set_postfix({k: f"{v:.3g}" for k, v in logged.items() if k.endswith("/loss")})
            stats = logged
        if stage.images is not None and state.step % (10 * settings.log_every) == 0:
            for key, images in stage.images().items():
                writer.add_images(f"images/{key}", images, state.step)
        if state.step % settings.checkpoint_every == 0 or last:
            save_checkpoint(out, state, saved, optimizer, scheduler, config, adv_optimizer, settings=settings)
    bar.close()
    writer.close()
    stage.train(False)
    if adversary is not None:
        adversary.module.requires_grad_(True)
    return Fitted(first_step=first_step, step=state.step, wall_time_s=state.elapsed(), stats=stats,
                  cpu_time_s=state.cpu_time)


# ---------------------------------------------------------------------- settings and the command line


def stage_settings(config: Config, stage: str, run: RunOptions = RunOptions()) -> Any:
    """Stage ``stage``'s training section with the overrides of ``run`` (steps, batch size, seed) applied; seeds
    torch's global generator with the run's seed, so freshly built modules start from the same weights."""
    section = config.stage(stage)
    overrides = {k: getattr(run, k) for k in ("steps", "batch_size", "seed") if getattr(run, k) is not None}
    section = dataclasses.replace(section, **overrides)
    torch.manual_seed(section.seed)
    return section


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


def print_final(stats: dict[str, float]) -> None:
    """The command line's last word on a run: its final statistics."""
    print("final:", ", ".join(f"{k}={v:.4g}" for k, v in stats.items()))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def make_optimizer(params: Iterable, lr: float, warmup: int, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=1e-4)
    scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    return optimizer, scheduler


# ---------------------------------------------------------------------- checkpoints


def save_tensors(path: Path, payload: dict[str, Any]) -> None:
    """Write tensors and plain data atomically (a temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_tensors(path: Path) -> dict[str, Any]:
    """Read a file of :func:`save_tensors` with ``weights_only=True``; anything else is a ``ValueError`` naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} is not a plain checkpoint (tensors and plain data only): it was refused unread, since loading "
            f"it could run code. Move it away to start afresh ({str(err).splitlines()[0]})"
        ) from err
    except Exception as err:  # a truncated or foreign file: say which file, do not guess
        raise ValueError(f"{path} could not be read ({err}); move it away to start afresh") from err


_MAY_CHANGE_ON_RESUME = frozenset({"steps", "log_every", "checkpoint_every"})


def save_checkpoint(
    out: Path, state: TrainState, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer, scheduler: Any,
    config: Config, adversary_optimizer: torch.optim.Optimizer | None = None, *,
    settings: StageTraining | None = None,
) -> None:
    payload = {
        "train_state": state.state_dict(),
        "modules": {name: module.state_dict() for name, module in modules.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "config": config.to_dict(),
    }
    if adversary_optimizer is not None:
        payload["adversary_optimizer"] = adversary_optimizer.state_dict()
    if settings is not None:  # what the run trains with, command-line overrides included: a resume must match
        payload["settings"] = dataclasses.asdict(settings)
    save_tensors(out / CHECKPOINT, payload)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))


def load_checkpoint(
    out: Path, state: TrainState, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer, scheduler: Any,
    adversary_optimizer: torch.optim.Optimizer | None = None, *, settings: StageTraining | None = None,
) -> bool:
    """Restore from ``out/checkpoint.pt``; returns False when there is none.

    With ``settings``, a checkpoint that recorded other stage settings (batch size, seed, lr, a loss weight:
    from the config or the command line) is refused: resumed with them it would be another run. ``steps``
    may grow (the schedule follows the new length) and the logging periods may change.
    """
    path = out / CHECKPOINT
    if not path.exists():
        return False
    payload = load_tensors(path)
    if settings is not None and "settings" in payload:
        now = dataclasses.asdict(settings)
        changed = {k: (payload["settings"].get(k), v) for k, v in now.items()
                   if payload["settings"].get(k) != v and k not in _MAY_CHANGE_ON_RESUME}
        if changed:
            said = ", ".join(f"{k}: {old!r} in the checkpoint, {new!r} now" for k, (old, new) in changed.items())
            raise ValueError(f"checkpoint {path} was trained with other settings ({said}); resume with the same "
                             "settings, or start afresh in another folder (--out) or with --no-resume")
    missing = [name for name in modules if name not in payload.get("modules", {})]
    if missing:
        raise ValueError(f"checkpoint {path} lacks modules {missing}: it belongs to another stage or config")
    for name, module in modules.items():
        module.load_state_dict(payload["modules"][name])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    if adversary_optimizer is not None:
        if "adversary_optimizer" not in payload:
            raise ValueError(f"checkpoint {path} has no adversary optimiser: it was written without the adversary")
        adversary_optimizer.load_state_dict(payload["adversary_optimizer"])
    state.load_state_dict(payload["train_state"])
    return True
