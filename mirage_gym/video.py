"""Turning frames and depth into pictures and video files (depth colour maps, side-by-side grids, mp4/gif)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import imageio.v3 as iio
import numpy as np

__all__ = ["colorize_depth", "side_by_side", "write_video"]


def colorize_depth(depth: np.ndarray, max_depth: float = 8.0) -> np.ndarray:
    """Metric depth ``[..., H, W]`` (or ``[..., H, W, 1]``) -> uint8 RGB ``[..., H, W, 3]`` (near bright, far dark)."""
    depth = np.asarray(depth, dtype=np.float32)
    if depth.shape[-1] == 1:
        depth = depth[..., 0]
    lead = depth.shape[:-2]
    scaled = np.clip(1.0 - np.nan_to_num(depth, nan=max_depth) / max_depth, 0.0, 1.0)
    flat = (scaled.reshape(-1, *depth.shape[-2:]) * 255).astype(np.uint8)
    colored = np.stack([cv2.applyColorMap(img, cv2.COLORMAP_INFERNO)[..., ::-1] for img in flat])
    return colored.reshape(*lead, *depth.shape[-2:], 3)


def side_by_side(panels: Sequence[np.ndarray], gap: int = 2) -> np.ndarray:
    """Concatenate uint8 images ``[..., H, W, 3]`` of equal height along the width, with a thin black gap."""
    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    height = panels[0].shape[-3]
    pieces = []
    for i, panel in enumerate(panels):
        if panel.shape[-3] != height or panel.dtype != np.uint8:
            raise ValueError(f"panel {i} is {panel.dtype} {panel.shape}, expected uint8 with height {height}")
        if i:
            pieces.append(np.zeros((*panel.shape[:-2], gap, 3), dtype=np.uint8))
        pieces.append(panel)
    return np.concatenate(pieces, axis=-2)


def write_video(path: str | Path, frames: np.ndarray, fps: int = 12) -> Path:
    """Write uint8 frames ``[T, H, W, 3]`` to ``.mp4`` (H.264 via ffmpeg) or ``.gif``."""
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".mp4":
        # H.264 wants even sizes; pad by one black row/column where needed.
        pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
        if pad_h or pad_w:
            frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        iio.imwrite(path, frames, plugin="FFMPEG", fps=fps, codec="libx264", macro_block_size=1)
    elif suffix == ".gif":
        iio.imwrite(path, frames, duration=1000 / fps, loop=0)
    else:
        raise ValueError(f"unsupported video format {suffix!r} for {path}: use .mp4 or .gif")
    return path
