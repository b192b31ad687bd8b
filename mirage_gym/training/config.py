"""Training/model configurations: JSON files, by name (shipped in ``mirage_gym/configs``) or by path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_DIR", "load_config", "read_config_file", "EVAL_ROOM_SEED_OFFSET"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# Room seeds at or above this offset are never used in training (held out for evaluation).
EVAL_ROOM_SEED_OFFSET = 1_000_000
REQUIRED = ("resolution", "fov_deg", "chunk", "context_frames", "vae", "depth_head", "transformer", "sampling", "memory")


def read_config_file(name_or_path: str | Path, shipped: str = "*.json", kind: str = "") -> tuple[dict[str, Any], Path]:
    """The JSON of a config given by shipped name (``"default"``) or path, and its path.

    A missing file names the shipped configs matching ``shipped`` (``kind`` words the list).
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.json"
    if not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob(shipped))
        raise ValueError(f"config {str(name_or_path)!r} not found (no file {path}); shipped {kind}configs: {names}")
    try:
        return json.loads(path.read_text()), path
    except json.JSONDecodeError as err:
        raise ValueError(f"config file {path} is not valid JSON: {err}") from err


def load_config(name_or_path: str | Path) -> dict[str, Any]:
    """Load a config by shipped name (``"default"``) or JSON path, and check its required keys."""
    config, path = read_config_file(name_or_path)
    missing = [key for key in REQUIRED if key not in config]
    if missing:
        raise ValueError(f"config file {path} lacks required keys {missing}")
    lo, hi = config.get("data", {}).get("train_room_seeds", [0, EVAL_ROOM_SEED_OFFSET])
    if hi > EVAL_ROOM_SEED_OFFSET:
        raise ValueError(f"config file {path}: train_room_seeds must stay below {EVAL_ROOM_SEED_OFFSET} (held out)")
    if config["resolution"] % 8:
        raise ValueError(f"config file {path}: resolution must be a multiple of 8, got {config['resolution']}")
    return config
