"""Which generator an environment runs: the shipped default, a local folder, an instance, or the oracle.

One function, :func:`load_generator`, turns the ``generator=`` keyword of every environment
into an object with the :class:`~mirage_gym.model.protocols.Generator` interface.
The default weights live in ``mirage_gym/weights/default/`` (a Mirage folder written by
:meth:`~mirage_gym.model.generator.MirageGenerator.save_pretrained`); :func:`default_weights_path`
is the only place that knows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mirage_gym.envs.oracle import OracleGenerator
from mirage_gym.model.generator import MEMORY_MODES, MirageGenerator
from mirage_gym.model.pretrained import MIRAGE_CONFIG
from mirage_gym.model.protocols import Generator

__all__ = ["GeneratorSpec", "default_weights_path", "load_generator"]

GeneratorSpec = str | Path | Generator


def default_weights_path() -> Path:
    """Where the shipped default weights are (or will be): ``mirage_gym/weights/default``."""
    return Path(__file__).resolve().parent.parent / "weights" / "default"


def load_generator(
    spec: GeneratorSpec,
    *,
    memory: str = "latent",
    num_inference_steps: int | None = None,
    device: torch.device | str = "cpu",
    frame_time: float = 0.25,
    max_depth: float = 20.0,
) -> Generator:
    """Resolve the ``generator=`` keyword of an environment.

    Args:
        spec: ``"default"`` (the shipped weights), ``"oracle"`` (the ground-truth renderer, named
            as such: for debugging and upper bounds), a local folder (a Mirage folder or a Wan2.2
            folder, see :meth:`MirageGenerator.from_pretrained`), or a ready generator (a
            ``MirageGenerator``, an ``OracleGenerator`` or any other implementation of the
            ``Generator`` protocol; the environment takes it over: its memory is reset on every
            ``reset``).
        memory: ``"latent"``, ``"pixel"`` or ``"none"`` (ignored by a generator without memory
            modes, such as the oracle, which renders the ground truth and so never forgets).
        num_inference_steps: denoising steps per chunk (default: the folder's setting).
        device: where the generator runs.
        frame_time, max_depth: of the oracle (seconds per frame; depth clip in metres).
    """
    if memory not in MEMORY_MODES:
        raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")
    if num_inference_steps is not None and int(num_inference_steps) < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    if not isinstance(spec, (str, Path)):
        if not isinstance(spec, Generator):
            raise TypeError(f"generator must be 'default', 'oracle', a folder or a generator (a MirageGenerator or "
                            f"another implementation of mirage_gym.model.protocols.Generator), got "
                            f"{type(spec).__name__}")
        if spec.memory_modes and spec.memory != memory:
            raise ValueError(f"the given generator uses memory={spec.memory!r} but memory={memory!r} was asked for")
        if isinstance(spec, MirageGenerator):  # settings of this implementation
            if num_inference_steps is not None:
                spec.num_inference_steps = int(num_inference_steps)
            return spec.to(device).eval()
        return spec
    if spec == "oracle":
        return OracleGenerator(frame_time=frame_time, max_depth=max_depth)
    if spec == "default":
        folder = default_weights_path()
        if not (folder / MIRAGE_CONFIG).is_file():
            raise FileNotFoundError(
                f"the default weights are not in this build of mirage_gym (expected a Mirage folder at {folder}). "
                "Pass generator=<folder> with a model folder (e.g. one written by MirageGenerator.save_pretrained "
                "or 'mirage-gym train'), or generator='oracle' for the ground-truth renderer"
            )
    else:
        folder = Path(spec)
        if not folder.is_dir():
            raise FileNotFoundError(f"generator folder {folder} does not exist (or use 'default' or 'oracle')")
    kwargs: dict[str, Any] = {"memory": memory}
    if num_inference_steps is not None:
        kwargs["num_inference_steps"] = int(num_inference_steps)
    return MirageGenerator.from_pretrained(folder, device=device, **kwargs).eval()

