"""Procedural surface textures, evaluated in world-space surface coordinates.

A texture is a row of a small table: a pattern id, two colours, a scale in
metres, an orientation bit and an offset. Patterns are sampled at the hit
point's two in-plane world coordinates, so they stay fixed in the world and
a surface looks the same from every view. Features are a few centimetres to
tens of centimetres wide: detailed enough to tell places apart, smooth enough
for a small 8x-downsampling autoencoder to learn (no per-pixel noise).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["Pattern", "TextureTable", "random_texture", "texture_params", "albedo", "value_noise"]


class Pattern:
    """Pattern ids of :class:`TextureTable` rows."""

    PLAIN = 0  # base colour with a soft low-frequency mottle
    CHECKER = 1  # square tiles with dark grout
    STRIPES = 2  # soft parallel stripes
    BRICKS = 3  # running-bond bricks with mortar
    WOOD = 4  # planks with per-plank tint and grain
    BLOTCHES = 5  # two-colour blobs (carpet, marble)
    DOTS = 6  # polka dots

    COUNT = 7


@dataclass
class TextureTable:
    """Per-texture parameters, one row per texture id (numpy, float32 / int64)."""

    pattern: np.ndarray  # [K] int64
    color_a: np.ndarray  # [K, 3] float32 in [0, 1]
    color_b: np.ndarray  # [K, 3] float32 in [0, 1]
    scale: np.ndarray  # [K] float32, metres
    rotate: np.ndarray  # [K] bool: swap the two surface coordinates
    offset: np.ndarray  # [K, 2] float32, metres: decorrelates noise between textures


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)), np.float32)


def random_texture(
    rng: np.random.Generator,
    hue: float,
    patterns: tuple[int, ...],
    saturation: tuple[float, float],
    value: tuple[float, float],
    scale: tuple[float, float],
) -> tuple[int, np.ndarray, np.ndarray, float, bool, np.ndarray]:
    """One texture row: a pattern from ``patterns`` around ``hue`` with a contrasting second colour."""
    pattern = int(rng.choice(patterns))
    s = rng.uniform(*saturation)
    v = rng.uniform(*value)
    a = _hsv(hue, s, v)
    # The second colour is either a shade of the first or a nearby hue, so each texture keeps one identity.
    if rng.random() < 0.5:
        b = _hsv(hue, s * rng.uniform(0.5, 1.0), v * rng.uniform(0.45, 0.7))
    else:
        b = _hsv(hue + rng.uniform(0.08, 0.2), s, min(1.0, v * rng.uniform(0.9, 1.25)))
    return pattern, a, b, float(rng.uniform(*scale)), bool(rng.random() < 0.5), rng.uniform(0, 64, 2).astype(np.float32)


def value_noise(table: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Smooth value noise in ``[0, 1]`` at continuous lattice coordinates (table ``[S, S]``, wraps)."""
    size = table.shape[0]
    x0 = torch.floor(x)
    y0 = torch.floor(y)
    fx = x - x0
    fy = y - y0
    fx = fx * fx * (3.0 - 2.0 * fx)
    fy = fy * fy * (3.0 - 2.0 * fy)
    ix = x0.long() % size
    iy = y0.long() % size
    ix1 = (ix + 1) % size
    iy1 = (iy + 1) % size
    flat = table.reshape(-1)
    v00 = flat[iy * size + ix]
    v01 = flat[iy * size + ix1]
    v10 = flat[iy1 * size + ix]
    v11 = flat[iy1 * size + ix1]
    top = v00 + (v01 - v00) * fx
    bottom = v10 + (v11 - v10) * fx
    return top + (bottom - top) * fy


def _frac(x: Tensor) -> Tensor:
    return x - torch.floor(x)


def _hash(x: Tensor) -> Tensor:
    """A cheap deterministic pseudo-random value in ``[0, 1)`` per (integer-valued) input."""
    return _frac(torch.sin(x * 12.9898) * 43758.5453)


def _mix(a: Tensor, b: Tensor, k: Tensor) -> Tensor:
    return a + (b - a) * k[:, None]


TEXTURE_PARAMS = 11  # columns of the per-point parameter rows of :func:`albedo`


def texture_params(table: TextureTable) -> np.ndarray:
    """``[K, 11]`` float32 rows ``(color_a rgb, color_b rgb, scale, rotate, offset uv, pattern)``."""
    return np.concatenate(
        [
            table.color_a,
            table.color_b,
            table.scale[:, None],
            table.rotate[:, None].astype(np.float32),
            table.offset,
            table.pattern[:, None].astype(np.float32),
        ],
        axis=1,
    ).astype(np.float32)


def albedo(pattern: Tensor, row: Tensor, table: Tensor, u: Tensor, v: Tensor, noise: Tensor) -> Tensor:
    """Surface colours ``[P, 3]`` of points at surface coordinates ``u``, ``v`` ``[P]`` (metres).

    Args:
        pattern: ``[P]`` pattern id of each point (any integer dtype).
        row: ``[P]`` int64 column of ``table`` holding each point's texture parameters.
        table: ``[11, K]`` float32 texture parameters, one column per texture (the transpose
            of :func:`texture_params`, possibly repeated per surface).
        noise: the scene's ``[S, S]`` value-noise lattice.
    """
    out = torch.empty(u.shape[0], 3, dtype=torch.float32, device=u.device)
    # Evaluate each pattern only on its own points (index_select / index_copy): masks over all would cost 7x.
    for pid in range(Pattern.COUNT):
        sel = (pattern == pid).nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        prm = table.index_select(1, row.index_select(0, sel))  # [11, P_sel], contiguous rows
        pu, pv = u.index_select(0, sel), v.index_select(0, sel)
        rot = prm[7] > 0.5
        inv_scale = 1.0 / prm[6]
        uu = torch.where(rot, pv, pu) * inv_scale
        vv = torch.where(rot, pu, pv) * inv_scale
        col = _pattern(pid, uu, vv, prm[0:3].T, prm[3:6].T, prm[8], prm[9], noise)
        out.index_copy_(0, sel, col)
    return out


def _pattern(pid: int, u: Tensor, v: Tensor, a: Tensor, b: Tensor, ou: Tensor, ov: Tensor, noise: Tensor) -> Tensor:
    """Colours of one pattern at pattern coordinates ``u``, ``v`` (in units of its scale)."""
    if pid == Pattern.PLAIN:
        n = value_noise(noise, u * 0.5 + ou, v * 0.5 + ov)
        return a * (0.85 + 0.3 * n)[:, None]
    if pid == Pattern.CHECKER:
        k = torch.remainder(torch.floor(u) + torch.floor(v), 2.0)
        fu, fv = _frac(u), _frac(v)
        edge = torch.minimum(torch.minimum(fu, 1 - fu), torch.minimum(fv, 1 - fv))
        return _mix(a, b, k) * torch.where(edge < 0.04, 0.55, 1.0)[:, None]
    if pid == Pattern.STRIPES:
        k = (torch.sin(2 * torch.pi * u) * 2.5).clamp(-1, 1) * 0.5 + 0.5
        return _mix(a, b, k)
    if pid == Pattern.BRICKS:
        row = torch.floor(v * 2.0)
        bu = u + 0.5 * torch.remainder(row, 2.0)
        col = _mix(a, b, _hash(torch.floor(bu) * 7.3 + row * 3.1 + ou) * 0.6)
        mortar = (_frac(bu) < 0.06) | (_frac(v * 2.0) < 0.12)
        return torch.where(mortar[:, None], torch.full_like(col, 0.78), col)
    if pid == Pattern.WOOD:
        plank = torch.floor(v)
        shift = _hash(plank + ou) * 3.0
        grain = torch.sin(v * 40.0 + 6.0 * value_noise(noise, u * 1.5 + ou, v * 6.0 + ov))
        col = _mix(a, b, 0.25 * _hash(plank + ov) + 0.2 * (grain * 0.5 + 0.5))
        seam = (_frac(v) < 0.05) | (_frac(u * 0.35 + shift) < 0.015)
        return col * torch.where(seam, 0.5, 1.0)[:, None]
    if pid == Pattern.BLOTCHES:
        n = 0.65 * value_noise(noise, u + ou, v + ov) + 0.35 * value_noise(noise, u * 2.3 + ov, v * 2.3 + ou)
        return _mix(a, b, ((n - 0.45) * 8.0).clamp(0, 1))
    # DOTS
    du, dv = _frac(u) - 0.5, _frac(v) - 0.5
    return _mix(a, b, ((0.3 - torch.sqrt(du * du + dv * dv)) * 25.0).clamp(0, 1))
