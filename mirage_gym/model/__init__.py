"""The generator: a Wan-architecture latent video model that reads and writes the latent cache.

* :mod:`~mirage_gym.model.vae` -- :class:`VideoVAE`, one video interface over diffusers autoencoders;
* :mod:`~mirage_gym.model.depth_head` -- :class:`DepthHead`, metric depth from latent tokens;
* :mod:`~mirage_gym.model.transformer` -- the widened ``WanTransformer3DModel``;
* :mod:`~mirage_gym.model.generator` -- :class:`MirageGenerator`, the chunked sampler.
"""

from mirage_gym.model.depth_head import DepthHead, DepthHeadOutput
from mirage_gym.model.vae import VideoVAE

__all__ = ["DepthHead", "DepthHeadOutput", "VideoVAE"]
