"""Image and depth metrics shared by training, evaluation and tests.

Images are float tensors in ``[0, 1]`` with shape ``[..., 3, H, W]`` (or uint8
``[..., H, W, 3]`` through :func:`to_unit_chw`). Every metric accepts an optional
boolean ``mask`` ``[..., H, W]`` restricting it to valid pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["to_unit_chw", "psnr", "ssim", "abs_rel"]


def to_unit_chw(images: Tensor) -> Tensor:
    """uint8 ``[..., H, W, 3]`` -> float ``[..., 3, H, W]`` in ``[0, 1]``."""
    if images.dtype != torch.uint8 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 [..., H, W, 3], got {images.dtype} {tuple(images.shape)}")
    return images.movedim(-1, -3).float() / 255.0


def psnr(pred: Tensor, target: Tensor, mask: Tensor | None = None, eps: float = 1e-10) -> Tensor:
    """Peak signal-to-noise ratio (dB) per image, images in ``[0, 1]`` ``[..., 3, H, W]``."""
    err = (pred.float() - target.float()).pow(2).mean(dim=-3)  # [..., H, W]
    if mask is None:
        mse = err.flatten(-2).mean(-1)
    else:
        m = mask.float()
        mse = (err * m).flatten(-2).sum(-1) / m.flatten(-2).sum(-1).clamp(min=1.0)
    return 10.0 * torch.log10(1.0 / (mse + eps))


def _gaussian_window(size: int, sigma: float, device: torch.device) -> Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim_map(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-pixel SSIM ``[..., H, W]`` (Wang et al. 2004, Gaussian window, averaged over channels)."""
    shape = pred.shape
    x = pred.float().reshape(-1, 1, *shape[-2:])
    y = target.float().reshape(-1, 1, *shape[-2:])
    w = _gaussian_window(window, sigma, x.device)
    pad = window // 2
    mu_x = F.conv2d(F.pad(x, [pad] * 4, mode="reflect"), w)
    mu_y = F.conv2d(F.pad(y, [pad] * 4, mode="reflect"), w)
    sxx = F.conv2d(F.pad(x * x, [pad] * 4, mode="reflect"), w) - mu_x**2
    syy = F.conv2d(F.pad(y * y, [pad] * 4, mode="reflect"), w) - mu_y**2
    sxy = F.conv2d(F.pad(x * y, [pad] * 4, mode="reflect"), w) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.reshape(shape).mean(dim=-3)


def ssim(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean SSIM per image, images in ``[0, 1]`` ``[..., 3, H, W]``."""
    s = ssim_map(pred, target)
    if mask is None:
        return s.flatten(-2).mean(-1)
    m = mask.float()
    return (s * m).flatten(-2).sum(-1) / m.flatten(-2).sum(-1).clamp(min=1.0)


def abs_rel(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean absolute relative depth error ``|pred - gt| / gt`` per image ``[..., H, W]``."""
    valid = torch.isfinite(target) & (target > 0)
    if mask is not None:
        valid &= mask
    err = torch.where(valid, (pred.float() - target.float()).abs() / target.float().clamp(min=1e-6), 0.0)
    return err.flatten(-2).sum(-1) / valid.flatten(-2).sum(-1).clamp(min=1)
