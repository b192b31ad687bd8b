"""The generator: a Wan-architecture latent video model that reads and writes the latent cache.

* :mod:`~mirage_gym.model.vae` -- :class:`VideoVAE`, one video interface over diffusers autoencoders;
* :mod:`~mirage_gym.model.depth_head` -- :class:`DepthHead`, metric depth from latent tokens;
* :mod:`~mirage_gym.model.transformer` -- the widened ``WanTransformer3DModel``;
* :mod:`~mirage_gym.model.generator` -- :class:`MirageGenerator`, the chunked sampler;
* :mod:`~mirage_gym.model.pretrained` -- Wan2.2 folders, LoRA, and our own saved folders.
"""

from mirage_gym.model.depth_head import DepthHead, DepthHeadOutput
from mirage_gym.model.generator import MEMORY_MODES, ChunkOutput, MirageGenerator
from mirage_gym.model.pretrained import add_lora
from mirage_gym.model.transformer import build_transformer, widen_patch_embedding
from mirage_gym.model.vae import VideoVAE

__all__ = [
    "DepthHead",
    "DepthHeadOutput",
    "VideoVAE",
    "MirageGenerator",
    "ChunkOutput",
    "MEMORY_MODES",
    "build_transformer",
    "widen_patch_embedding",
    "add_lora",
]
