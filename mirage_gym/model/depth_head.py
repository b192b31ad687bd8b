"""The co-trained depth head: metric depth from latent tokens.

Mirage's published code runs an external depth model on decoded frames. Here a
small convolutional head reads the latents directly, so a token's depth (needed to
lift it into the 3D cache) costs one cheap forward and no pixel round trip. It
gives two outputs that share one trunk:

* ``token_depth`` ``[N, h, w]``: depth at each latent cell centre, used for
  backprojection into the :class:`~mirage_gym.memory.LatentCache`;
* ``pixel_depth`` ``[N, H, W]``: the same field refined at pixel resolution, used
  for the observations. It is the upsampled token depth plus a learned residual,
  so both agree where the surface is smooth.

Monocular depth needs the whole view (where the floor meets the far wall), more than a
stack of 3x3 convolutions at latent resolution sees. ``context_levels`` adds a small
U-Net path: the trunk's features are halved ``context_levels`` times, each level refined
by ``context_blocks`` residual blocks, and the coarse context is upsampled back and added level by
level. Blocks there are cheap (a quarter of a trunk block's work at the first level), and that is
where a view is seen whole: a wall that fills the frame is told from one across the room there.

The head reads latents in the space the generator works in, i.e. normalised by
:class:`~mirage_gym.model.VideoVAE`. A head trained on the autoencoder's raw latents
records that normalisation in ``latent_shift`` and ``latent_scale`` and undoes it first
(``raw = latents / latent_scale + latent_shift``), so training and inference see the same input.

Depth is parameterised log-uniformly between ``min_depth`` and ``max_depth``
(``min * (max / min) ** sigmoid(x)``): bounded, positive and equally precise in
relative terms near and far.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import Tensor, nn

__all__ = ["DepthHead", "DepthHeadOutput"]


@dataclass
class DepthHeadOutput(BaseOutput):
    token_depth: Tensor
    pixel_depth: Tensor


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.act(self.conv1(self.act(x))))


class DepthHead(ModelMixin, ConfigMixin):
    """Metric depth per latent token and per pixel.

    Args:
        latent_channels: ``C`` of the (normalised) latents it reads.
        spatial_factor: pixels per latent cell (a power of two).
        hidden_channels: width of the trunk at latent resolution.
        num_blocks: residual blocks in the trunk.
        context_levels: stride-2 levels of the U-Net context path (0: none, the first
            default model's head).
        context_blocks: residual blocks at each context level.
        min_depth, max_depth: the depth range in metres.
        latent_shift, latent_scale: the normalisation of the latents it is given, undone
            before the first layer (0 and 1: it reads them as they come).
    """

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        spatial_factor: int = 8,
        hidden_channels: int = 64,
        num_blocks: int = 3,
        context_levels: int = 0,
        context_blocks: int = 1,
        min_depth: float = 0.05,
        max_depth: float = 20.0,
        latent_shift: float = 0.0,
        latent_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if spatial_factor < 1 or spatial_factor & (spatial_factor - 1):
            raise ValueError(f"spatial_factor must be a power of two, got {spatial_factor}")
        if not 0 < min_depth < max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got {min_depth} and {max_depth}")
        if context_levels < 0:
            raise ValueError(f"context_levels must be >= 0, got {context_levels}")
        if context_blocks < 1:
            raise ValueError(f"context_blocks must be >= 1, got {context_blocks}")
        if not latent_scale > 0:
            raise ValueError(f"latent_scale must be positive, got {latent_scale}")
        self.conv_in = nn.Conv2d(latent_channels, hidden_channels, 3, padding=1)
        self.trunk = nn.Sequential(*[_ResBlock(hidden_channels) for _ in range(num_blocks)])
        self.down = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(hidden_channels, hidden_channels, 3, stride=2, padding=1),
                *[_ResBlock(hidden_channels) for _ in range(context_blocks)],
            )
            for _ in range(context_levels)
        )
        self.up = nn.ModuleList(nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1) for _ in range(context_levels))
        self.token_out = nn.Conv2d(hidden_channels, 1, 1)
        # Pixel refinement: x2 upsampling stages, halving the width each time (min 16).
        stages = []
        channels = hidden_channels
        for _ in range(int(math.log2(spatial_factor))):
            out = max(16, channels // 2)
            stages += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, out, 3, padding=1), nn.SiLU()]
            channels = out
        self.upsample = nn.Sequential(*stages)
        self.pixel_out = nn.Conv2d(channels, 1, 3, padding=1)
        nn.init.zeros_(self.pixel_out.weight)  # start as the upsampled token depth
        nn.init.zeros_(self.pixel_out.bias)

    def _to_depth(self, logits: Tensor) -> Tensor:
        lo, hi = math.log(self.config.min_depth), math.log(self.config.max_depth)
        return torch.exp(lo + (hi - lo) * torch.sigmoid(logits))

    def _add_context(self, features: Tensor) -> Tensor:
        levels = [features]
        for down in self.down:
            levels.append(down(levels[-1]))
        context = levels.pop()
        for up in reversed(self.up):
            skip = levels.pop()
            context = skip + up(F.silu(F.interpolate(context, size=skip.shape[-2:], mode="nearest")))
        return context

    def forward(self, latents: Tensor, return_dict: bool = True) -> DepthHeadOutput | tuple[Tensor, Tensor]:
        """``latents`` ``[N, C, h, w]`` -> token depth ``[N, h, w]`` and pixel depth ``[N, H, W]`` (metres)."""
        if latents.dim() != 4 or latents.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"latents must be [N, {self.config.latent_channels}, h, w], got {tuple(latents.shape)}"
            )
        raw = latents.to(self.dtype) / self.config.latent_scale + self.config.latent_shift
        raw = raw.contiguous(memory_format=torch.channels_last)  # ~1.4x faster convolutions on CPU
        features = self.trunk(self.conv_in(raw))
        if self.config.context_levels:
            features = self._add_context(features)
        token_logits = self.token_out(features)
        up = F.interpolate(token_logits, scale_factor=self.config.spatial_factor, mode="bilinear", align_corners=False)
        pixel_logits = up + self.pixel_out(self.upsample(features))
        token_depth = self._to_depth(token_logits[:, 0].float())
        pixel_depth = self._to_depth(pixel_logits[:, 0].float())
        if not return_dict:
            return token_depth, pixel_depth
        return DepthHeadOutput(token_depth=token_depth, pixel_depth=pixel_depth)
