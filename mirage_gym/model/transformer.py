"""The backbone: diffusers' ``WanTransformer3DModel`` with a widened patch embedding.

Nothing of Wan is re-implemented here. A pretrained (or freshly configured)
``WanTransformer3DModel`` gets extra input channels for the conditioning, and this
module builds its inputs and per-token timesteps so that the sampler
(:mod:`mirage_gym.model.generator`) and the training code feed it identically.

Input channel layout (the one place it is written down), for latents with ``C``
channels::

    [ noisy latents C | cache-projected latents C | cache validity mask 1 | Plücker rays 6 ]
      base channels     ------------------ widening: C + 7 ---------------------------------

* *noisy latents*: the checkpoint's own input (``in_channels == C`` for Wan2.2
  TI2V-5B, z=48, and the A14B text-to-video experts, z=16);
* *cache-projected latents*: :meth:`LatentCache.read` for the frame's camera,
  zeros where the cache is empty;
* *validity mask*: 1 where the cache gave a token, 0 elsewhere, so the model can
  tell "empty" from "a latent that happens to be near zero";
* *Plücker rays* ``(d, o x d)`` of the target camera at every latent cell
  (:func:`mirage_gym.geometry.plucker_rays`): camera control where the cache is empty,
  as in CameraCtrl and Gen3C.

The widening is zero-initialised and computed as a separate convolution added to
the original one, so a pretrained transformer gives the same output *bit for bit*
until fine-tuning moves the new weights (a single wider convolution would be equal
only up to float rounding, as the reduction order changes).

Temporal context: clean latent frames of the previous chunk are placed in front of
the chunk along time. Wan takes a timestep per token (the 2-D ``timestep`` that
Wan2.2 TI2V uses for its clean first frame): context tokens get timestep 0, the
chunk's tokens the current noise level. Their cache channels are zero (mask 0);
their Plücker rays are those of their own cameras.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from torch import Tensor, nn

from mirage_gym.geometry import plucker_rays

__all__ = [
    "CAMERA_CHANNELS",
    "InputLayout",
    "WidenedPatchEmbedding",
    "widen_patch_embedding",
    "restore_widened_patch_embedding",
    "build_transformer",
    "input_layout",
    "conditioning_channels",
    "camera_channels",
    "chunk_inputs",
    "token_timesteps",
    "empty_prompt_embeds",
    "predict_flow",
]

CAMERA_CHANNELS = 6  # Plücker (d, o x d)
MASK_CHANNELS = 1


@dataclass(frozen=True)
class InputLayout:
    """Channel layout of the widened input for latents with ``latent_channels`` channels."""

    latent_channels: int

    @property
    def extra_channels(self) -> int:
        """Channels added to the checkpoint's patch embedding: cache ``C`` + mask 1 + Plücker 6."""
        return self.latent_channels + MASK_CHANNELS + CAMERA_CHANNELS

    @property
    def in_channels(self) -> int:
        return self.latent_channels + self.extra_channels

    @property
    def noisy(self) -> slice:
        return slice(0, self.latent_channels)

    @property
    def cache(self) -> slice:
        return slice(self.latent_channels, 2 * self.latent_channels)

    @property
    def mask(self) -> slice:
        return slice(2 * self.latent_channels, 2 * self.latent_channels + MASK_CHANNELS)

    @property
    def camera(self) -> slice:
        return slice(2 * self.latent_channels + MASK_CHANNELS, self.in_channels)


class WidenedPatchEmbedding(nn.Conv3d):
    """A ``Conv3d`` patch embedding whose first ``base_channels`` inputs are the checkpoint's.

    The weight is one ``[out, in, kt, kh, kw]`` tensor (same parameter names and shape as
    diffusers' ``patch_embedding``, so a saved widened transformer loads as a plain
    ``WanTransformer3DModel``), but the forward sums two convolutions, base and extra:
    with zero extra weights the output equals the base convolution exactly.
    """

    def __init__(self, base_channels: int, in_channels: int, out_channels: int, patch_size: tuple[int, ...]) -> None:
        super().__init__(in_channels, out_channels, kernel_size=patch_size, stride=patch_size)
        if not 0 < base_channels < in_channels:
            raise ValueError(f"base_channels must be in (0, {in_channels}), got {base_channels}")
        self.base_channels = base_channels

    def forward(self, x: Tensor) -> Tensor:
        c = self.base_channels
        base = F.conv3d(x[:, :c], self.weight[:, :c], self.bias, self.stride)
        extra = F.conv3d(x[:, c:], self.weight[:, c:], None, self.stride)
        return base + extra


def _check_base(transformer: WanTransformer3DModel) -> int:
    base = int(transformer.config.in_channels)
    out = int(transformer.config.out_channels or base)
    if base != out:
        raise ValueError(
            f"the transformer takes {base} input channels but predicts {out}: only text-to-video / TI2V "
            "checkpoints (in_channels == out_channels == VAE z) can be widened"
        )
    return base


def widen_patch_embedding(transformer: WanTransformer3DModel) -> WanTransformer3DModel:
    """Add the ``C + 7`` conditioning channels to a checkpoint's patch embedding, in place.

    The new weights are zero, so the widened model ignores the conditioning and its
    output on the noisy latents is bit-for-bit the checkpoint's. The config's
    ``in_channels`` becomes ``2C + 7`` (``out_channels`` stays ``C``), so
    ``save_pretrained`` writes a folder that loads back as a ``WanTransformer3DModel``.
    """
    if isinstance(transformer.patch_embedding, WidenedPatchEmbedding):
        raise ValueError("the transformer's patch embedding is already widened")
    base = _check_base(transformer)
    layout = InputLayout(base)
    old = transformer.patch_embedding
    new = WidenedPatchEmbedding(base, layout.in_channels, old.out_channels, tuple(old.kernel_size))
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :base].copy_(old.weight)
        new.bias.copy_(old.bias)
    new.requires_grad_(old.weight.requires_grad)
    transformer.patch_embedding = new
    transformer.register_to_config(in_channels=layout.in_channels, out_channels=base)
    return transformer


def restore_widened_patch_embedding(transformer: WanTransformer3DModel) -> WanTransformer3DModel:
    """Turn the plain ``Conv3d`` of a *loaded* widened transformer back into a :class:`WidenedPatchEmbedding`.

    ``WanTransformer3DModel.from_pretrained`` on a folder we saved builds a plain wide
    ``Conv3d``; this swaps in the split form (sharing the parameters) and checks that
    the channel counts follow :class:`InputLayout`.
    """
    old = transformer.patch_embedding
    if isinstance(old, WidenedPatchEmbedding):
        return transformer
    latent = int(transformer.config.out_channels)
    layout = InputLayout(latent)
    if old.in_channels != layout.in_channels:
        raise ValueError(
            f"a widened transformer predicting {latent} channels must take {layout.in_channels} input channels "
            f"({latent} noisy + {layout.extra_channels} conditioning), got in_channels={old.in_channels}"
        )
    new = WidenedPatchEmbedding(latent, old.in_channels, old.out_channels, tuple(old.kernel_size))
    new.weight, new.bias = old.weight, old.bias
    transformer.patch_embedding = new
    return transformer


def build_transformer(
    latent_channels: int,
    *,
    num_layers: int = 6,
    num_attention_heads: int = 3,
    attention_head_dim: int = 64,
    ffn_dim: int | None = None,
    text_dim: int = 64,
    freq_dim: int = 64,
    patch_size: tuple[int, int, int] = (1, 2, 2),
    rope_max_seq_len: int = 1024,
) -> WanTransformer3DModel:
    """A fresh (randomly initialised) widened ``WanTransformer3DModel`` for the CPU default model.

    Defaults give width 192 (3 heads of 64), 6 layers, ffn 4x width, ~4 M parameters.
    """
    if latent_channels < 1:
        raise ValueError(f"latent_channels must be positive, got {latent_channels}")
    width = num_attention_heads * attention_head_dim
    transformer = WanTransformer3DModel(
        patch_size=tuple(patch_size),
        num_attention_heads=num_attention_heads,
        attention_head_dim=attention_head_dim,
        in_channels=latent_channels,
        out_channels=latent_channels,
        text_dim=text_dim,
        freq_dim=freq_dim,
        ffn_dim=ffn_dim or 4 * width,
        num_layers=num_layers,
        rope_max_seq_len=rope_max_seq_len,
    )
    return widen_patch_embedding(transformer)


def input_layout(transformer: WanTransformer3DModel) -> InputLayout:
    """The :class:`InputLayout` of a widened transformer (``ValueError`` if it is not widened)."""
    if not isinstance(transformer.patch_embedding, WidenedPatchEmbedding):
        raise ValueError("the transformer's patch embedding is not widened: call widen_patch_embedding first")
    return InputLayout(int(transformer.config.out_channels))


def conditioning_channels(cache_latents: Tensor, cache_mask: Tensor, plucker: Tensor) -> Tensor:
    """The widening's input ``[B, C + 7, t, h, w]`` from its three parts.

    Args:
        cache_latents: ``[B, C, t, h, w]`` cache-projected latents (zeros where empty).
        cache_mask: ``[B, t, h, w]`` bool validity mask.
        plucker: ``[B, 6, t, h, w]`` Plücker rays of each latent frame's camera.
    """
    b, _, t, h, w = cache_latents.shape
    if cache_mask.shape != (b, t, h, w):
        raise ValueError(f"cache_mask must be [B, t, h, w] = {(b, t, h, w)}, got {tuple(cache_mask.shape)}")
    if plucker.shape != (b, CAMERA_CHANNELS, t, h, w):
        raise ValueError(f"plucker must be {(b, CAMERA_CHANNELS, t, h, w)}, got {tuple(plucker.shape)}")
    mask = cache_mask[:, None].to(cache_latents.dtype)
    cache = cache_latents * mask  # holes are exactly zero whatever the reader left there
    return torch.cat([cache, mask, plucker.to(cache_latents.dtype)], dim=1)


def camera_channels(cam_to_world: Tensor, intrinsics: Tensor, height: int, width: int) -> Tensor:
    """Plücker rays ``[B, 6, t, h, w]`` of poses ``[B, t, 4, 4]`` on the latent grid.

    ``intrinsics`` ``[3, 3]`` is the camera of the ``height x width`` *latent* grid
    (:func:`~mirage_gym.geometry.scale_intrinsics` of the pixel camera).
    """
    b, t = cam_to_world.shape[:2]
    rays = plucker_rays(intrinsics, cam_to_world.flatten(0, 1), height, width)
    return rays.unflatten(0, (b, t)).transpose(1, 2)


def chunk_inputs(
    context: Tensor,
    chunk: Tensor,
    cache_latents: Tensor,
    cache_mask: Tensor,
    cam_to_world: Tensor,
    intrinsics: Tensor,
) -> tuple[Tensor, Tensor]:
    """The transformer's latents and conditioning for a chunk behind its clean context.

    Args:
        context: ``[B, C, k, h, w]`` clean latents of the previous frames.
        chunk: ``[B, C, t, h, w]`` the (noisy) chunk.
        cache_latents, cache_mask: ``[B, C, t, h, w]`` and ``[B, t, h, w]``, the memory read
            for the chunk's cameras.
        cam_to_world: ``[B, k + t, 4, 4]`` cameras of the context and chunk latent frames.
        intrinsics: ``[3, 3]`` camera of the latent grid.

    Returns:
        ``latents`` ``[B, C, k + t, h, w]`` and ``conditioning`` ``[B, C + 7, k + t, h, w]``;
        context frames carry no cache (zeros, mask 0), only their own cameras' rays.
    """
    b, _, k, h, w = context.shape
    t = chunk.shape[2]
    if cam_to_world.shape[:2] != (b, k + t):
        raise ValueError(f"cam_to_world must be [{b}, {k + t}, 4, 4], got {tuple(cam_to_world.shape)}")
    conditioning = conditioning_channels(
        torch.cat([torch.zeros_like(context), cache_latents], dim=2),
        torch.cat([cache_mask.new_zeros(b, k, h, w), cache_mask], dim=1),
        camera_channels(cam_to_world, intrinsics, h, w),
    )
    return torch.cat([context, chunk], dim=2), conditioning


def token_timesteps(transformer: WanTransformer3DModel, frame_timesteps: Tensor, height: int, width: int) -> Tensor:
    """Per-token timesteps ``[B, seq_len]`` from per-latent-frame timesteps ``[B, t]``.

    Tokens are ordered frame-major as ``WanTransformer3DModel`` flattens its patches,
    so every token of latent frame ``k`` gets ``frame_timesteps[:, k]``.
    """
    p_t, p_h, p_w = transformer.config.patch_size
    if p_t != 1:
        raise ValueError(f"per-frame timesteps need a temporal patch size of 1, got {p_t}")
    if height % p_h or width % p_w:
        raise ValueError(f"latent size {height}x{width} is not a multiple of the patch size {(p_h, p_w)}")
    tokens_per_frame = (height // p_h) * (width // p_w)
    return frame_timesteps.repeat_interleave(tokens_per_frame, dim=1)


def empty_prompt_embeds(
    transformer: WanTransformer3DModel, batch_size: int, *, length: int = 1, device=None, dtype=None
) -> Tensor:
    """The fixed "no text" conditioning: zeros ``[B, length, text_dim]``.

    Cross-attention over ``length`` identical tokens equals attention over one, so
    ``length=1`` is the cheap form of Wan's zero-padded prompt.
    """
    return torch.zeros(batch_size, length, int(transformer.config.text_dim), device=device, dtype=dtype)


def predict_flow(
    transformer: WanTransformer3DModel,
    latents: Tensor,
    conditioning: Tensor,
    frame_timesteps: Tensor,
    prompt_embeds: Tensor,
    *,
    attention_kwargs: dict | None = None,
) -> Tensor:
    """One forward of the widened transformer: the flow ``noise - x0`` for every latent frame.

    Args:
        latents: ``[B, C, t, h, w]``: clean context frames followed by the noisy chunk.
        conditioning: ``[B, C + 7, t, h, w]`` from :func:`conditioning_channels`.
        frame_timesteps: ``[B, t]`` in the scheduler's timestep units (0 = clean).
        prompt_embeds: ``[B, L, text_dim]``.

    Returns:
        ``[B, C, t, h, w]`` float32 prediction (callers keep the chunk's frames).
    """
    layout = input_layout(transformer)
    b, c, t, h, w = latents.shape
    if c != layout.latent_channels:
        raise ValueError(f"latents must have {layout.latent_channels} channels, got {c}")
    if conditioning.shape != (b, layout.extra_channels, t, h, w):
        raise ValueError(f"conditioning must be {(b, layout.extra_channels, t, h, w)}, got {tuple(conditioning.shape)}")
    if frame_timesteps.shape != (b, t):
        raise ValueError(f"frame_timesteps must be [B, t] = {(b, t)}, got {tuple(frame_timesteps.shape)}")
    dtype = transformer.dtype
    hidden = torch.cat([latents, conditioning], dim=1).to(dtype)
    timestep = token_timesteps(transformer, frame_timesteps.float(), h, w)
    out = transformer(
        hidden_states=hidden,
        timestep=timestep,
        encoder_hidden_states=prompt_embeds.to(dtype),
        attention_kwargs=attention_kwargs,
        return_dict=False,
    )[0]
    return out.float()
