"""A tiny random Mirage generator folder for the env tests: 32x32 frames, chunks of 2, fast on one thread.

Random weights, a real ``MirageGenerator`` (widened Wan transformer, ``AutoencoderTiny`` VAE,
depth head, flow-matching scheduler) saved with ``save_pretrained``: never the ground truth.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderTiny, FlowMatchEulerDiscreteScheduler

from mirage_gym.model.depth_head import DepthHead
from mirage_gym.model.generator import MirageGenerator
from mirage_gym.model.transformer import build_transformer
from mirage_gym.model.vae import VideoVAE

RESOLUTION = 32
CHUNK = 2
CHANNELS = 4


def build_tiny_generator(seed: int = 0) -> MirageGenerator:
    torch.manual_seed(seed)
    transformer = build_transformer(CHANNELS, num_layers=1, num_attention_heads=2, attention_head_dim=8,
                                    text_dim=8, freq_dim=16, rope_max_seq_len=64)
    with torch.no_grad():  # give the zero-initialised conditioning channels weights, as training would
        emb = transformer.patch_embedding
        emb.weight[:, emb.base_channels:].normal_(0.0, 0.3)
    vae = VideoVAE(AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=CHANNELS,
    ))
    head = DepthHead(latent_channels=CHANNELS, spatial_factor=8, hidden_channels=8, num_blocks=1)
    return MirageGenerator(transformer, vae, head, FlowMatchEulerDiscreteScheduler(shift=3.0),
                           num_inference_steps=2, context_frames=1, voxel_size=0.1, cache_capacity=4000).eval()


def save_tiny_generator(folder: Path) -> Path:
    build_tiny_generator().save_pretrained(folder)
    return folder


def tiny_env_kwargs(folder: Path, **overrides) -> dict:
    """Keyword arguments of a fast env over the tiny generator folder (two fixed rooms)."""
    return {"generator": str(folder), "resolution": RESOLUTION, "chunk": CHUNK, "room_seeds": [0, 1], **overrides}
