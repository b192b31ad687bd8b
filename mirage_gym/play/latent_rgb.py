"""Colours for latent tokens: a linear probe from latent channels to the mean colour of a token's pixels.

The latent cache stores latent vectors, not colours. To draw its tokens on the top-down map,
:class:`LatentColorProbe` fits an affine map ``latent -> RGB`` by ridge regression on the
generator's own VAE: calibration images are encoded, and each latent cell is paired with the
mean colour of the ``spatial_factor x spatial_factor`` pixels it covers. Colouring a token is
then one small matrix product, and the colours are stable across steps (unlike a per-frame
PCA, whose basis and signs change as tokens arrive). The same trick gives the "latent
preview" colours of image diffusion models.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mirage_gym.model.vae import VideoVAE

__all__ = ["LatentColorProbe", "calibration_colors"]


def calibration_colors(levels: int = 3) -> np.ndarray:
    """``levels**3`` solid colours ``[N, 3]`` uint8 spanning the RGB cube (they anchor the probe's extremes)."""
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    axis = np.linspace(0, 255, levels).round().astype(np.uint8)
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)


class LatentColorProbe:
    """An affine map from ``C`` latent channels to RGB in ``[0, 255]``.

    Args:
        weight: ``[C, 3]``; bias: ``[3]`` (colours in ``0..255`` units).
    """

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        if weight.dim() != 2 or weight.shape[1] != 3 or tuple(bias.shape) != (3,):
            raise ValueError(f"weight must be [C, 3] and bias [3], got {tuple(weight.shape)} and {tuple(bias.shape)}")
        self.weight = weight.detach().float().cpu()
        self.bias = bias.detach().float().cpu()

    @property
    def channels(self) -> int:
        return int(self.weight.shape[0])

    @classmethod
    def fit(cls, latents: Tensor, colors: Tensor, ridge: float = 1e-3) -> LatentColorProbe:
        """Least squares (with a small ridge) of ``colors`` ``[N, 3]`` on ``latents`` ``[N, C]`` plus a bias."""
        if latents.dim() != 2 or colors.dim() != 2 or colors.shape[1] != 3 or latents.shape[0] != colors.shape[0]:
            raise ValueError(
                f"need latents [N, C] and colors [N, 3], got {tuple(latents.shape)} and {tuple(colors.shape)}"
            )
        if ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        x = torch.cat([latents.double(), torch.ones(len(latents), 1, dtype=torch.float64)], dim=1)
        reg = ridge * len(x) * torch.eye(x.shape[1], dtype=torch.float64)
        reg[-1, -1] = 0.0  # the bias is not shrunk
        solution = torch.linalg.solve(x.T @ x + reg, x.T @ colors.double())
        return cls(solution[:-1].float(), solution[-1].float())

    @classmethod
    @torch.no_grad()
    def from_vae(cls, vae: VideoVAE, images: np.ndarray | Tensor, ridge: float = 1e-3) -> LatentColorProbe:
        """Fit on ``images`` ``[N, H, W, 3]`` uint8 encoded one frame at a time by ``vae``."""
        images = torch.as_tensor(images)
        if images.dim() != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {tuple(images.shape)}")
        device = next(vae.parameters()).device
        frames = images.permute(0, 3, 1, 2).float().to(device)  # [N, 3, H, W] in 0..255
        latents = vae.encode(frames[:, None] / 127.5 - 1.0)[:, :, 0]  # [N, C, h, w]
        sf = vae.spatial_factor
        colors = F.avg_pool2d(frames, sf)  # [N, 3, h, w]: the mean colour of each cell's pixels
        return cls.fit(
            latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).cpu(),
            colors.permute(0, 2, 3, 1).reshape(-1, 3).cpu(),
            ridge,
        )

    def __call__(self, latents: Tensor) -> np.ndarray:
        """Colours ``[N, 3]`` uint8 of latent vectors ``[N, C]``."""
        if latents.dim() != 2 or latents.shape[1] != self.channels:
            raise ValueError(f"latents must be [N, {self.channels}], got {tuple(latents.shape)}")
        rgb = latents.detach().float().cpu() @ self.weight + self.bias
        return rgb.round().clamp(0, 255).to(torch.uint8).numpy()
