"""Where a figure came from: the metadata written next to every evaluation and benchmark result.

Every command that writes results (``mirage-gym eval``, ``mirage-gym bench generator``,
``mirage-gym bench env``) writes them to a folder through :func:`write_results`, which adds
the exact command line, the package version, the git commit (and whether the tree had
uncommitted changes), the machine (CPU model, cores, GPU) and the library versions, so a
number in a README can always be traced back to the code and hardware that produced it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

__all__ = ["collect", "results_folder", "write_results", "file_sha256", "folder_hashes", "generator_identity"]

MODEL_FILES = (".safetensors", ".json")  # what the loaders read from a model folder
SKIPPED_FOLDERS = ("text_encoder", "tokenizer")  # read only to encode a prompt, which no step of a rollout does

_LIBRARIES = ("torch", "diffusers", "numpy", "gymnasium", "opencv-python-headless", "peft")


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_hashes(folder: Path, prefix: str = "") -> dict[str, str]:
    """``{relative path: sha256}`` of the weight and config files under a model folder: its identity."""
    hashes = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and path.suffix in MODEL_FILES and relative.parts[0] not in SKIPPED_FOLDERS:
            hashes[prefix + relative.as_posix()] = file_sha256(path)
    return hashes


def generator_identity(generator: str | Path, *, physics: Any = None) -> dict[str, Any]:
    """What decides a generator's output, as a dataset records it: the SHA-256 of each weight and config file.

    ``"default"``: the shipped weights' files and the package version; a folder: its files (a
    Mirage LoRA folder also its base's, under ``base_model/``); ``"oracle"``: the renderer, no
    files. ``physics`` (the env's ``physics=`` setting) is recorded when given.
    """
    from mirage_gym import __version__
    from mirage_gym.envs.generators import default_weights_path
    from mirage_gym.model.pretrained import MIRAGE_CONFIG

    spec = str(generator)
    identity: dict[str, Any] = {"generator": spec}
    if spec == "oracle":
        identity["files"] = {}
    else:
        folder = default_weights_path() if spec == "default" else Path(spec)
        if not folder.is_dir():
            raise FileNotFoundError(f"generator folder {folder} does not exist (or use 'default' or 'oracle')")
        files = folder_hashes(folder)
        if not files:
            raise FileNotFoundError(f"generator folder {folder} holds no weight or config files")
        try:
            base = json.loads((folder / MIRAGE_CONFIG).read_text()).get("base_model")
        except (OSError, ValueError, AttributeError):
            base = None
        if isinstance(base, str) and base and Path(base).is_dir():
            files.update(folder_hashes(Path(base), prefix="base_model/"))
        identity["files"] = files
        if spec == "default":
            identity["package_version"] = __version__
    if physics is not None:
        identity["physics"] = physics
    return identity


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    """Output of a git command run in the package's source tree (``None`` outside a checkout)."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def collect(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Provenance of a run: command, versions, git state, machine. ``argv`` defaults to ``sys.argv``."""
    from mirage_gym import __version__

    argv = list(sys.argv if argv is None else argv)
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return {
        "command": shlex.join(argv),
        "cwd": os.getcwd(),
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mirage_gym_version": __version__,
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpus": gpus,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "libraries": {name: _package_version(name) for name in _LIBRARIES},
    }


def results_folder(path: str | os.PathLike) -> Path:
    """Create (or reuse) a results folder; ``ValueError`` if the path is an existing file."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"results folder {folder} exists and is not a directory")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_results(
    folder: str | os.PathLike,
    name: str,
    results: Any,
    *,
    config: dict[str, Any] | None = None,
    argv: Sequence[str] | None = None,
) -> Path:
    """Write ``{folder}/{name}.json`` = ``{"provenance", "config", "results"}`` and ``provenance.json``.

    ``results`` and ``config`` must be JSON-serialisable (non-finite floats are written as
    ``null``). Returns the path of the results file.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"name must be a plain file stem, got {name!r}")
    folder = results_folder(folder)
    meta = collect(argv)
    payload = {"provenance": meta, "config": config or {}, "results": results}
    path = folder / f"{name}.json"
    # Serialise before touching the files, so a bad payload leaves earlier results intact.
    text = json.dumps(_finite(payload), indent=2)
    path.write_text(text + "\n")
    (folder / "provenance.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: write them as ``null``."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
