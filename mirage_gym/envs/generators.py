"""Which generator an environment runs: the shipped default, a local folder, an instance, or the oracle.

One function, :func:`load_generator`, turns the ``generator=`` keyword of every environment
into an object with the :class:`~mirage_gym.model.protocols.Generator` interface.
The default weights live in ``mirage_gym/weights/default/`` (a Mirage folder written by
:meth:`~mirage_gym.model.generator.MirageGenerator.save_pretrained`); :func:`default_weights_path`
is the only place that knows it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mirage_gym.envs.oracle import OracleGenerator
from mirage_gym.model.generator import MEMORY_MODES, MirageGenerator
from mirage_gym.model.pretrained import MIRAGE_CONFIG
from mirage_gym.model.protocols import Generator

__all__ = ["GeneratorSpec", "default_weights_path", "load_generator", "model_geometry", "recorded_geometry"]

GeneratorSpec = str | Path | Generator
DEFAULT_RESOLUTION = 128  # frame size when the model records none: the smallest size it takes from here up
MIN_DEFAULT_CHUNK = 4  # frames per step when the model records none: the smallest chunk it takes from here up


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



def _spec_folder(spec: GeneratorSpec) -> Path | None:
    if not isinstance(spec, (str, Path)) or spec == "oracle":
        return None
    return default_weights_path() if spec == "default" else Path(spec)


def recorded_geometry(folder: str | Path) -> dict[str, int]:
    """The frame size and chunk a model folder says it was trained for (``{"resolution": .., "chunk": ..}``,
    either may be missing).

    Read from ``mirage_config.json`` (keys ``resolution``, ``chunk_frames``) or else from the
    training run's ``config.json`` beside the folder (``mirage-gym train`` writes the model to
    ``<run>/model`` or ``<run>/lora`` and its typed config, ``model.resolution`` and
    ``model.chunk_frames``, to ``<run>/config.json``). Unreadable files record nothing.
    """
    folder = Path(folder)
    found: dict[str, int] = {}
    sources = [(folder / MIRAGE_CONFIG, lambda c: c), (folder.parent / "config.json", lambda c: c.get("model"))]
    for path, pick in sources:
        if not (path.is_file() and (folder / MIRAGE_CONFIG).is_file()):  # only beside a Mirage folder
            continue
        try:
            section = pick(json.loads(path.read_text()))
        except (OSError, ValueError, AttributeError):
            continue
        if not isinstance(section, dict):
            continue
        for key, name in (("resolution", "resolution"), ("chunk_frames", "chunk")):
            value = section.get(key)
            if name not in found and isinstance(value, int) and not isinstance(value, bool) and value >= 1:
                found[name] = value
    return found


def _fits(generator: Generator, resolution: int, chunk: int) -> bool:
    try:
        generator.check_geometry(resolution, chunk)
    except ValueError:
        return False
    return True


def model_geometry(
    generator: Generator, spec: GeneratorSpec, resolution: int | None, chunk: int | None
) -> tuple[int, int]:
    """The env's frame size and chunk: the given values (checked against the model), or what it generates.

    ``None`` is resolved from the model: the value recorded with its folder
    (:func:`recorded_geometry`) if it fits, else the smallest size from :data:`DEFAULT_RESOLUTION`
    up that its VAE and patch take (128 for the shipped model, for Wan2.2 5B (32-pixel multiple)
    and A14B (16)), and the smallest chunk from :data:`MIN_DEFAULT_CHUNK` up that its VAE takes
    (4 for a per-frame VAE, 5 for a temporal Wan VAE, which needs ``1 + 4k`` frames). Explicit
    values that do not fit are a ``ValueError`` from :meth:`Generator.check_geometry`.
    """
    from mirage_gym.envs.simulator import BOUNDS, check_setting

    folder = _spec_folder(spec)
    recorded = recorded_geometry(folder) if folder is not None and folder.is_dir() else {}
    if resolution is not None:
        generator.check_geometry(check_setting("resolution", resolution), 1)  # a bad size is named as such
    if resolution is None:
        low, high = int(BOUNDS["resolution"][0]), int(BOUNDS["resolution"][1])
        wanted = [recorded["resolution"]] if "resolution" in recorded else []
        # Chunk 1 fits every VAE (1 + 4 * 0 frames), so it tests the frame size alone.
        resolution = next((r for r in [*wanted, *range(max(DEFAULT_RESOLUTION, low), high + 1)]
                           if low <= r <= high and _fits(generator, r, 1)), None)
        if resolution is None:
            raise ValueError(f"no square frame size from {DEFAULT_RESOLUTION} to {high} fits this generator: pass "
                             "resolution= explicitly")
    resolution = check_setting("resolution", resolution)
    if chunk is None:
        low, high = int(BOUNDS["chunk"][0]), int(BOUNDS["chunk"][1])
        wanted = [recorded["chunk"]] if "chunk" in recorded else []
        chunk = next((c for c in [*wanted, *range(MIN_DEFAULT_CHUNK, high + 1)]
                      if low <= c <= high and _fits(generator, resolution, c)), None)
        if chunk is None:
            raise ValueError(f"no chunk from {MIN_DEFAULT_CHUNK} to {high} frames fits this generator: pass chunk= "
                             "explicitly")
    chunk = check_setting("chunk", chunk)
    generator.check_geometry(resolution, chunk)  # explicit values: the model's own error, naming the problem
    return resolution, chunk
