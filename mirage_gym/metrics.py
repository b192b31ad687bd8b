"""Image and depth metrics shared by training, evaluation and tests.

Images are float tensors in ``[0, 1]`` with shape ``[..., 3, H, W]`` (or uint8
``[..., H, W, 3]`` through :func:`to_unit_chw`). Every image metric accepts an optional
boolean ``mask`` ``[..., H, W]`` restricting it to valid pixels. Flow fields are
``[..., H, W, 2]`` in pixels; rotations ``[..., 3, 3]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "to_unit_chw",
    "psnr",
    "ssim",
    "abs_rel",
    "l1",
    "image_gradients",
    "detail_ratio",
    "reconstruction_figures",
    "end_point_error",
    "rotation_error_deg",
    "direction_error_deg",
]


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


def image_gradients(images: Tensor) -> tuple[Tensor, Tensor]:
    """Forward differences of ``[..., H, W]`` along x (``[..., H, W - 1]``) and y (``[..., H - 1, W]``)."""
    return images[..., :, 1:] - images[..., :, :-1], images[..., 1:, :] - images[..., :-1, :]


def _gradient_sums(images: Tensor, mask: Tensor | None, dims: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sums of ``|d/dx|`` and ``|d/dy|`` of the grey level over ``dims``, and how many differences each sums."""
    gx, gy = image_gradients(images.float().mean(dim=-3))
    if mask is None:
        mx, my = torch.ones_like(gx), torch.ones_like(gy)
    else:  # a difference counts when both of its pixels are in the mask
        mx = (mask[..., :, 1:] & mask[..., :, :-1]).float()
        my = (mask[..., 1:, :] & mask[..., :-1, :]).float()
    return (gx.abs() * mx).sum(dims), mx.sum(dims), (gy.abs() * my).sum(dims), my.sum(dims)


def detail_ratio(pred: Tensor, target: Tensor, mask: Tensor | None = None, *, pooled: bool = False) -> Tensor:
    """How much of the target's fine detail an image keeps: mean image-gradient magnitude of ``pred`` over ``target``'s.

    The magnitude is ``mean |dI/dx| + mean |dI/dy|`` of the grey level (mean of R, G, B) by forward
    differences, over the pixels of ``mask`` ``[..., H, W]`` (a difference counts when both its pixels
    are in it). ``pred`` and ``target`` show the same view (a reconstruction and its frame; a generated
    frame and the ground truth at its pose), images in ``[0, 1]`` ``[..., 3, H, W]``. 1: as much
    detail as the ground truth; a blur scores below 1 (a 2x2 box blur of pixel noise: 0.25), noise or
    ringing above. Detail in the wrong place still counts: pair it with PSNR/SSIM. Per image (NaN where the mask leaves nothing, or the target is flat), or with
    ``pooled`` one ratio over all images: the sums of all of them, so each pixel weighs the same.
    """
    dims = tuple(range(-2, 0)) if not pooled else tuple(range(-(pred.dim() - 1), 0))
    sums_p = _gradient_sums(pred, mask, dims)
    sums_t = _gradient_sums(target, mask, dims)

    def magnitude(sx: Tensor, nx: Tensor, sy: Tensor, ny: Tensor) -> Tensor:
        return sx / nx.clamp(min=1) + sy / ny.clamp(min=1)

    if pooled:
        sums_p, sums_t = [v.sum() for v in sums_p], [v.sum() for v in sums_t]
    num, den = magnitude(*sums_p), magnitude(*sums_t)
    empty = (sums_t[1] + sums_t[3]) == 0
    ratio = num / den.clamp(min=1e-12)
    return torch.where(empty | (den <= 1e-12), torch.full_like(ratio, float("nan")), ratio)


def reconstruction_figures(pred: Tensor, target: Tensor) -> dict[str, float]:
    """The autoencoder figures of issue 16 on ``N`` frames ``[N, 3, H, W]`` in ``[0, 1]``.

    ``psnr`` (mean over frames), ``psnr_worst_decile`` (mean of the worst tenth, at least one frame),
    ``ssim`` (mean) and ``detail_ratio`` (mean of the per-frame :func:`detail_ratio`).
    """
    p = psnr(pred, target).sort().values
    return {
        "psnr": float(p.mean()),
        "psnr_worst_decile": float(p[: max(1, len(p) // 10)].mean()),
        "ssim": float(ssim(pred, target).mean()),
        "detail_ratio": float(detail_ratio(pred, target).nanmean()),
    }


def _masked_mean(err: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``err`` ``[..., H, W]`` over the last two dims (over ``mask``; NaN where the mask is empty)."""
    if mask is None:
        return err.flatten(-2).mean(-1)
    m = mask.float()
    count = m.flatten(-2).sum(-1)
    total = (err * m).flatten(-2).sum(-1)
    return torch.where(count > 0, total / count.clamp(min=1.0), torch.full_like(total, float("nan")))


def l1(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean absolute error per image (averaged over channels), images in ``[0, 1]`` ``[..., 3, H, W]``.

    NaN for an image whose ``mask`` is empty: no pixel to compare is not a perfect score.
    """
    return _masked_mean((pred.float() - target.float()).abs().mean(dim=-3), mask)


def end_point_error(flow: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean end-point error (pixels) per flow field ``[..., H, W, 2]``; NaN where ``mask`` is empty."""
    return _masked_mean((flow.float() - target.float()).norm(dim=-1), mask)


def rotation_error_deg(rot: Tensor, target: Tensor) -> Tensor:
    """Angle (degrees) of the rotation ``rot @ target^T`` between two rotations ``[..., 3, 3]``."""
    rel = rot.double() @ target.double().transpose(-1, -2)
    cos = ((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos)).float()


def direction_error_deg(vec: Tensor, target: Tensor) -> Tensor:
    """Angle (degrees) between two directions ``[..., 3]`` (their lengths do not matter)."""
    a = vec.double() / vec.double().norm(dim=-1, keepdim=True).clamp(min=1e-12)
    b = target.double() / target.double().norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return torch.rad2deg(torch.acos((a * b).sum(-1).clamp(-1.0, 1.0))).float()
