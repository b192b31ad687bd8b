"""Which generator an environment runs: the shipped default, a local folder, an instance, or the oracle.

One function, :func:`load_generator`, turns the ``generator=`` keyword of every environment
into an object with the generator interface (``start``/``step``/``memory_bytes``/``batch_size``).
The default weights live in ``mirage_gym/weights/default/`` (a Mirage folder written by
:meth:`~mirage_gym.model.generator.MirageGenerator.save_pretrained`); :func:`default_weights_path`
is the only place that knows it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from mirage_gym.envs.oracle import OracleGenerator
from mirage_gym.model.generator import MEMORY_MODES, MirageGenerator
from mirage_gym.model.pretrained import MIRAGE_CONFIG

__all__ = ["default_weights_path", "load_generator", "check_generator_geometry"]

GeneratorSpec = str | Path | MirageGenerator | OracleGenerator


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
) -> MirageGenerator | OracleGenerator:
    """Resolve the ``generator=`` keyword of an environment.

    Args:
        spec: ``"default"`` (the shipped weights), ``"oracle"`` (the ground-truth renderer, named
            as such: for debugging and upper bounds), a local folder (a Mirage folder or a Wan2.2
            folder, see :meth:`MirageGenerator.from_pretrained`), or a ready ``MirageGenerator``
            (the environment takes it over: its memory is reset on every ``reset``).
        memory: ``"latent"``, ``"pixel"`` or ``"none"`` (ignored by the oracle, which renders the
            ground truth and so never forgets).
        num_inference_steps: denoising steps per chunk (default: the folder's setting).
        device: where the generator runs.
        frame_time, max_depth: of the oracle (seconds per frame; depth clip in metres).
    """
    if memory not in MEMORY_MODES:
        raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")
    if num_inference_steps is not None and int(num_inference_steps) < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    if isinstance(spec, OracleGenerator):
        return spec
    if isinstance(spec, MirageGenerator):
        if spec.memory != memory:
            raise ValueError(f"the given generator uses memory={spec.memory!r} but memory={memory!r} was asked for")
        if num_inference_steps is not None:
            spec.num_inference_steps = int(num_inference_steps)
        return spec.to(device).eval()
    if not isinstance(spec, (str, Path)):
        raise TypeError(f"generator must be 'default', 'oracle', a folder or a MirageGenerator, got {type(spec).__name__}")
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


def check_generator_geometry(generator: MirageGenerator | OracleGenerator, resolution: int, chunk: int) -> None:
    """``ValueError`` unless the generator can make ``chunk``-frame chunks of ``resolution`` pixels."""
    if isinstance(generator, OracleGenerator):
        return
    sf = generator.vae.spatial_factor
    _, p_h, p_w = generator.transformer.config.patch_size
    multiple = math.lcm(sf * p_h, sf * p_w)  # frames are square
    if resolution % multiple:
        raise ValueError(
            f"resolution {resolution} must be a multiple of {multiple} for this generator "
            f"(VAE factor {sf} x patch {p_h}x{p_w})"
        )
    try:
        generator.vae.num_latent_frames(chunk)
    except ValueError as err:
        raise ValueError(f"chunk={chunk} does not fit this generator's VAE: {err}") from err
