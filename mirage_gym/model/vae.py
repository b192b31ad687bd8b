"""One video interface over diffusers autoencoders.

The generator works on latent *videos* ``[B, C, t, h, w]``. Real Wan2.2 uses
``AutoencoderKLWan`` (causal 3D: 4x in time, 8x or 16x in space); the default CPU
model uses a per-frame 2D autoencoder (``AutoencoderTiny``, TAESD-style, or
``AutoencoderKL``) because the Wan VAE is too slow on a CPU at 128x128; its frames
and latents are passed channels-last, which makes its convolutions ~1.3-1.5x faster on a CPU.
:class:`VideoVAE` hides the difference: frames in ``[-1, 1]`` go in, latents with
roughly unit variance come out, and back.

Normalisation: Wan latents use the checkpoint's per-channel ``latents_mean`` and
``latents_std`` (as ``WanPipeline`` does); 2D autoencoders use their config's
``shift_factor`` and ``scaling_factor`` (``(z - shift) * scale``, as Stable
Diffusion pipelines do).
"""

from __future__ import annotations

import hashlib

import torch
from diffusers import AutoencoderKL, AutoencoderKLWan, AutoencoderTiny
from diffusers.configuration_utils import FrozenDict
from torch import Tensor, nn

__all__ = ["VideoVAE", "build_autoencoder"]

SUPPORTED = (AutoencoderTiny, AutoencoderKL, AutoencoderKLWan)


def _drop_unaccepted_config(vae: nn.Module) -> None:
    """Forget ``block_out_channels`` in an ``AutoencoderTiny``'s config.

    diffusers' ``AutoencoderTiny.__init__`` registers it (a copy of ``decoder_block_out_channels``)
    but does not accept it back, so every folder it saved made each later load warn. Nothing
    reads it; without it a saved folder loads silently.
    """
    if isinstance(vae, AutoencoderTiny) and "block_out_channels" in vae.config:
        vae._internal_dict = FrozenDict({k: v for k, v in vae.config.items() if k != "block_out_channels"})


def build_autoencoder(**config) -> AutoencoderTiny:
    """A fresh ``AutoencoderTiny`` (``config`` are its arguments) whose saved folders load without warnings."""
    vae = AutoencoderTiny(**config)
    _drop_unaccepted_config(vae)
    return vae


class VideoVAE(nn.Module):
    """A diffusers autoencoder seen as a video codec.

    Args:
        vae: an ``AutoencoderTiny`` or ``AutoencoderKL`` (encoded frame by frame) or an
            ``AutoencoderKLWan`` (2.1 layout, ``z_dim=16``, 8x; or 2.2 layout,
            ``z_dim=48`` with ``patch_size=2``, 16x).
        sample: for KL autoencoders, sample the posterior instead of taking its mode.

    Attributes:
        latent_channels: ``C`` of the latents.
        spatial_factor: pixels per latent cell along each side.
        temporal_factor: 1 for per-frame autoencoders, 4 for Wan (latent frame ``k``
            covers pixel frames ``4k-3 .. 4k``; latent frame 0 is pixel frame 0 alone).
    """

    def __init__(self, vae: AutoencoderTiny | AutoencoderKL | AutoencoderKLWan, *, sample: bool = False) -> None:
        super().__init__()
        if not isinstance(vae, SUPPORTED):
            names = ", ".join(cls.__name__ for cls in SUPPORTED)
            raise TypeError(f"vae must be one of {names}, got {type(vae).__name__}")
        _drop_unaccepted_config(vae)
        self.vae = vae
        self.sample = sample
        config = vae.config
        if isinstance(vae, AutoencoderKLWan):
            self.latent_channels = int(config.z_dim)
            self.temporal_factor = int(config.scale_factor_temporal or 4)
            self.spatial_factor = int(config.scale_factor_spatial or 8)
            mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
            std = torch.tensor(config.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
            if mean.shape[1] != self.latent_channels or std.shape[1] != self.latent_channels:
                raise ValueError(
                    f"AutoencoderKLWan config has z_dim={self.latent_channels} but latents_mean/latents_std have "
                    f"{mean.shape[1]}/{std.shape[1]} entries"
                )
            self.register_buffer("latents_mean", mean, persistent=False)
            self.register_buffer("latents_std", std, persistent=False)
        else:
            self.latent_channels = int(config.latent_channels)
            self.temporal_factor = 1
            if isinstance(vae, AutoencoderTiny):
                self.spatial_factor = int(config.upsampling_scaling_factor) ** (len(config.decoder_block_out_channels) - 1)
            else:
                self.spatial_factor = 2 ** (len(config.block_out_channels) - 1)
            shift = float(config.shift_factor or 0.0) if "shift_factor" in config else 0.0
            self.register_buffer("latents_mean", torch.full((1, 1, 1, 1, 1), shift), persistent=False)
            self.register_buffer(
                "latents_std", torch.full((1, 1, 1, 1, 1), 1.0 / float(config.scaling_factor)), persistent=False
            )

    def encoder_digest(self) -> str:
        """sha256 of everything that maps frames to latents (the encoder's tensors and the normalisation).

        Equal digests encode every frame to the same latents: what a cache of encoded data records
        of its source, so a later run can tell whether the cache still fits its autoencoder.
        """
        digest = hashlib.sha256()
        parts = [*sorted(self.vae.encoder.state_dict().items()), ("latents_mean", self.latents_mean),
                 ("latents_std", self.latents_std)]
        quant = getattr(self.vae, "quant_conv", None)  # KL autoencoders: the posterior's projection
        if quant is not None:
            parts += [(f"quant_conv.{k}", v) for k, v in sorted(quant.state_dict().items())]
        for name, tensor in parts:
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    @property
    def is_temporal(self) -> bool:
        return self.temporal_factor > 1

    def num_latent_frames(self, num_frames: int) -> int:
        """Latent frames for ``num_frames`` pixel frames (Wan needs ``1 + 4k`` frames)."""
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if self.temporal_factor == 1:
            return num_frames
        if (num_frames - 1) % self.temporal_factor != 0:
            raise ValueError(
                f"a temporal VAE with factor {self.temporal_factor} needs 1 + {self.temporal_factor}k frames, "
                f"got {num_frames}"
            )
        return 1 + (num_frames - 1) // self.temporal_factor

    def _check_frames(self, frames: Tensor) -> None:
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be [B, T, 3, H, W], got {tuple(frames.shape)}")
        h, w = frames.shape[-2:]
        if h % self.spatial_factor or w % self.spatial_factor:
            raise ValueError(f"frame size {h}x{w} is not a multiple of the VAE's spatial factor {self.spatial_factor}")

    def encode(self, frames: Tensor) -> Tensor:
        """``[B, T, 3, H, W]`` in ``[-1, 1]`` -> normalised latents ``[B, C, t, h, w]``."""
        self._check_frames(frames)
        b, t = frames.shape[:2]
        self.num_latent_frames(t)
        dtype = next(self.vae.parameters()).dtype
        if isinstance(self.vae, AutoencoderKLWan):
            posterior = self.vae.encode(frames.transpose(1, 2).to(dtype)).latent_dist
            z = posterior.sample() if self.sample else posterior.mode()
        else:
            flat = frames.flatten(0, 1).to(dtype).contiguous(memory_format=torch.channels_last)
            if isinstance(self.vae, AutoencoderTiny):
                z = self.vae.encode(flat).latents
            else:
                posterior = self.vae.encode(flat).latent_dist
                z = posterior.sample() if self.sample else posterior.mode()
            z = z.unflatten(0, (b, t)).transpose(1, 2)
        return (z.float() - self.latents_mean) / self.latents_std

    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents ``[B, C, t, h, w]`` -> frames ``[B, T, 3, H, W]`` in ``[-1, 1]``."""
        if latents.dim() != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents must be [B, {self.latent_channels}, t, h, w], got {tuple(latents.shape)}"
            )
        dtype = next(self.vae.parameters()).dtype
        z = (latents.float() * self.latents_std + self.latents_mean).to(dtype)
        if isinstance(self.vae, AutoencoderKLWan):
            frames = self.vae.decode(z).sample.transpose(1, 2)
        else:
            b, _, t = z.shape[:3]
            flat = z.transpose(1, 2).flatten(0, 1).contiguous(memory_format=torch.channels_last)
            frames = self.vae.decode(flat).sample.unflatten(0, (b, t))
        return frames.float().clamp(-1.0, 1.0)
