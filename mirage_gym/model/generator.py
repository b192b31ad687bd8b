"""The chunked sampler: :class:`MirageGenerator`.

One :meth:`MirageGenerator.step` advances ``B`` independent scenes by one chunk of
frames, in one transformer forward per denoising step::

    memory read for the chunk's poses -> flow-matching denoising (diffusers scheduler)
    -> VAE decode + depth head -> TokenFilter -> memory write

Memory modes (the same trajectories can be run with each, for comparison):

* ``"latent"`` -- the :class:`~mirage_gym.memory.LatentCache`: cached tokens are
  projected straight onto each latent frame's grid. Its size is bounded by the
  scene and nothing per frame is kept beyond the context, so the per-chunk cost does
  not grow with the trajectory.
* ``"pixel"`` -- the pixel-space baseline (Gen3C, VMem, Spatia): a
  :class:`~mirage_gym.memory.PointCloudMemory` is rendered at pixel resolution for
  every frame of the chunk and re-encoded with the VAE; a latent cell is valid when at
  least half of its pixels were rendered.
* ``"none"`` -- no memory: empty cache channels; only the previous chunk's context.

Time: with a temporal VAE (Wan, ``temporal_factor`` 4) a chunk has ``T = 1 + 4(t-1)``
pixel frames for ``t`` latent frames, latent frame ``k`` takes the pose of pixel frame
``4k`` (the convention of the published Mirage code), and pixel frames ``4k-3 .. 4k``
share latent frame ``k``'s depth map. A per-frame VAE has one latent frame per pixel
frame and any ``T``.

Context: the last ``context_frames`` latent frames (clean, timestep 0) precede the
chunk in the transformer's sequence. After :meth:`start` the start image's latent is
repeated to fill the context, so every scene of the batch always has the same
sequence length (sub-scenes can be reset individually).

Noise levels: ``FlowMatchEulerDiscreteScheduler``'s own spacing ends its last step at
``s ~ 0.003``, one forward that barely changes the latents; the sampler instead spaces
the ``N`` steps evenly over ``(0, 1]`` before the shift (``1, 1 - 1/N, ..., 1/N``, then
0), so every forward counts: 3 steps give the levels of the scheduler's 4.

Cache guidance (``cache_guidance`` ``w``, off by default): after every denoising step the
latents of cached cells are pulled towards the cached latents noised to the next level,
``x <- x + w * mask * ((1 - s') c + s' eps - x)``, with ``eps`` the chunk's initial noise
(RePaint-style replacement; at ``w = 1`` cached cells end exactly on the cache). The model
still sees the cache as conditioning and fills the holes; guidance only stops it drifting
from what it was shown.

Observed space (``observed_margin``, off by default; the default model sets 0.2): the start
frames are a scene's only real observations. A generated token is not written to the latent cache
where it lands in the space a start frame observed -- in front of the surface it saw there, or
within ``observed_margin`` (relative depth) behind it (:func:`~mirage_gym.memory.observed_space`):
the observation has settled that space, and a generated token there can only repeat it with worse
depth, taking the cell whenever its depth errs short. Generated tokens elsewhere (outside the
start view, or behind what it saw) are written as before, so generated areas are remembered.

Depth from the memory (``anchor_depth``, off by default): the depth head estimates every chunk's
depth afresh from its latents, so a remembered wall comes back at a different depth each time. With
``anchor_depth``, where the latent cache covered a cell the chunk's depth is the cached surface's
depth in the new camera: the geometry the memory holds, the same on every return (the frame-to-frame
reprojection and flow figures and the collisions of generated physics read this depth).

Randomness: the initial noise of each scene is drawn from its own generator when a
list of ``B`` generators is given, so a batch equals ``B`` single runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanTransformer3DModel
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from mirage_gym.geometry import backproject, scale_intrinsics
from mirage_gym.memory import (
    FilterResult,
    LatentCache,
    PointCloudMemory,
    TokenFilter,
    observed_space,
    pool_fraction,
)
from mirage_gym.memory.latent_cache import INTERPOLATIONS
from mirage_gym.model.depth_head import DepthHead
from mirage_gym.model.pretrained import GENERATOR_SETTINGS, encode_prompt, load_components, save_components
from mirage_gym.model.transformer import chunk_inputs, input_layout, predict_flow
from mirage_gym.model.vae import VideoVAE

__all__ = ["ChunkOutput", "MirageGenerator", "MEMORY_MODES"]

MEMORY_MODES = ("latent", "pixel", "none")
Scheduler = FlowMatchEulerDiscreteScheduler | UniPCMultistepScheduler


@dataclass
class ChunkOutput:
    """One chunk (or the start frame) of ``B`` scenes.

    Attributes:
        rgb: ``[B, T, H, W, 3]`` uint8 frames.
        depth: ``[B, T, H, W]`` float32 metric depth.
        latents: ``[B, C, t, h, w]`` the chunk's clean latents.
        cache_mask: ``[B, t, h, w]`` bool, where the memory conditioned each latent frame.
        timings: seconds per stage (``cache_read``, ``denoise``, ``decode``, ``filter``,
            ``write``; ``render`` and ``encode`` for the pixel memory).
        written: ``[B, T, h, w]`` bool on the latent grid of every frame, the tokens handed to the
            memory: what the token filter kept, less (with ``rewrite_cached`` off) the cells the
            memory already held; a temporal VAE's latent memory takes frames ``0, f, 2f, ...`` of it.
            ``None`` when nothing is written (``memory="none"``, a ground-truth renderer).
    """

    rgb: Tensor
    depth: Tensor
    latents: Tensor
    cache_mask: Tensor
    timings: dict[str, float] = field(default_factory=dict)
    written: Tensor | None = None


class _Timer:
    """Wall-clock stage timings; synchronises CUDA so a stage is charged its own kernels."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.timings: dict[str, float] = {}
        self._last = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self, name: str) -> None:
        now = self._now()
        self.timings[name] = self.timings.get(name, 0.0) + now - self._last
        self._last = now


def _scheduler_with_shift(scheduler: Scheduler, shift: float | None) -> Scheduler:
    if shift is None:
        return scheduler
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    key = "flow_shift" if "flow_shift" in scheduler.config else "shift"
    return type(scheduler).from_config(scheduler.config, **{key: float(shift)})


class MirageGenerator(nn.Module):
    """Chunked video generation over a persistent scene memory, for ``B`` scenes at once.

    Args:
        transformer: a widened ``WanTransformer3DModel`` (see :mod:`~mirage_gym.model.transformer`);
            for Wan2.2 A14B the high-noise expert.
        vae: the :class:`VideoVAE`.
        depth_head: the :class:`DepthHead` for the VAE's latents.
        scheduler: ``FlowMatchEulerDiscreteScheduler`` or ``UniPCMultistepScheduler`` with flow sigmas.
        transformer_2: the low-noise expert of Wan2.2 A14B, used for timesteps below
            ``boundary_ratio * num_train_timesteps``.
        boundary_ratio: the MoE switch point (required with ``transformer_2``).
        memory: ``"latent"``, ``"pixel"`` or ``"none"``.
        num_inference_steps: denoising steps per chunk.
        shift: overrides the scheduler's (flow) shift.
        voxel_size, cache_capacity: of the :class:`LatentCache` (``capacity`` per scene).
        cache_interpolation: the cache's read, ``"nearest"`` or ``"bilinear"`` (:class:`LatentCache`).
        cache_footprint: the most cells a side a cached token covers when seen from nearer than it was
            written (:class:`LatentCache` ``max_footprint``; 1: one cell).
        context_frames: clean latent frames of the past that precede each chunk.
        cache_guidance: in ``[0, 1]``, how hard cached cells are held to the cache during
            denoising (see the module docstring); 0 leaves it to the model.
        rewrite_cached: also write back the cells a chunk read from the latent cache. Off by
            default: they are stored already, and rewriting them re-places the copied latents at
            depths predicted in the new view, so depth errors would move remembered surfaces
            around. (The pixel baseline always appends every frame, as the published methods do.)
        observed_margin: keep generated tokens out of the latent cache where they land in the space a
            start frame observed (in front of its surface, or up to this relative depth behind it; see
            the module docstring); ``None`` writes them there too.
        anchor_depth: with the latent cache, the depth a chunk returns in the cells the cache covered is the
            remembered surface's (its cached tokens' depth in the new camera) rather than the depth head's
            fresh estimate from the generated latents (see the module docstring).
        filter_history: frames before each chunk (the start frame, then the latest generated ones) into
            which the token filter also projects the chunk (:meth:`TokenFilter.analyze`'s ``history``):
            an object that moved in since shows as free space there. 0: the chunk alone.
        token_filter: decides which generated tokens are written back (default
            ``TokenFilter(stride=2)``: 10x cheaper than every pixel, at some recall on moving objects;
            see ``mirage-gym bench filter --stride``). With ``cross_chunk=True`` it also drops, before
            each write to the latent cache, the cached tokens the new chunk sees through
            (:meth:`TokenFilter.carve`); cells freed that way are written even without ``rewrite_cached``.
        prompt_embeds: ``[L, text_dim]`` or ``[1 or B, L, text_dim]`` precomputed text
            embeddings; ``None`` gives the fixed empty (zero) prompt.
    """

    def __init__(
        self,
        transformer: WanTransformer3DModel,
        vae: VideoVAE,
        depth_head: DepthHead,
        scheduler: Scheduler,
        *,
        transformer_2: WanTransformer3DModel | None = None,
        boundary_ratio: float | None = None,
        memory: str = "latent",
        num_inference_steps: int = 4,
        shift: float | None = None,
        voxel_size: float = 0.05,
        cache_capacity: int = 200_000,
        cache_interpolation: str = "nearest",
        cache_footprint: int = 1,
        context_frames: int = 2,
        cache_guidance: float = 0.0,
        rewrite_cached: bool = False,
        observed_margin: float | None = None,
        anchor_depth: bool = False,
        filter_history: int = 0,
        token_filter: TokenFilter | None = None,
        prompt_embeds: Tensor | None = None,
    ) -> None:
        super().__init__()
        layout = input_layout(transformer)
        if layout.latent_channels != vae.latent_channels:
            raise ValueError(
                f"the transformer works on {layout.latent_channels}-channel latents but the VAE has "
                f"{vae.latent_channels} channels"
            )
        if transformer_2 is not None:
            layout_2 = input_layout(transformer_2)
            if layout_2 != layout or tuple(transformer_2.config.patch_size) != tuple(transformer.config.patch_size):
                raise ValueError("transformer_2 must have the same channel layout and patch size as transformer")
            if boundary_ratio is None or not 0.0 < boundary_ratio < 1.0:
                raise ValueError(f"transformer_2 needs a boundary_ratio in (0, 1), got {boundary_ratio}")
        elif boundary_ratio is not None:
            raise ValueError("boundary_ratio is only meaningful with transformer_2")
        if depth_head.config.latent_channels != vae.latent_channels:
            raise ValueError(
                f"depth_head reads {depth_head.config.latent_channels}-channel latents, the VAE gives "
                f"{vae.latent_channels}"
            )
        if depth_head.config.spatial_factor != vae.spatial_factor:
            raise ValueError(
                f"depth_head upsamples by {depth_head.config.spatial_factor}, the VAE's spatial factor is "
                f"{vae.spatial_factor}"
            )
        if not isinstance(scheduler, (FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler)):
            raise TypeError(
                f"scheduler must be FlowMatchEulerDiscreteScheduler or UniPCMultistepScheduler, got "
                f"{type(scheduler).__name__}"
            )
        if isinstance(scheduler, UniPCMultistepScheduler) and not scheduler.config.use_flow_sigmas:
            raise ValueError("a UniPCMultistepScheduler must use flow sigmas (use_flow_sigmas=True)")
        if memory not in MEMORY_MODES:
            raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if context_frames < 1:
            raise ValueError(f"context_frames must be >= 1, got {context_frames}")
        if not 0.0 <= cache_guidance <= 1.0:
            raise ValueError(f"cache_guidance must be in [0, 1], got {cache_guidance}")
        if voxel_size <= 0 or cache_capacity < 1:
            raise ValueError(f"need voxel_size > 0 and cache_capacity >= 1, got {voxel_size} and {cache_capacity}")
        if observed_margin is not None and not observed_margin >= 0.0:
            raise ValueError(f"observed_margin must be >= 0 or None, got {observed_margin}")
        if not isinstance(anchor_depth, bool):
            raise ValueError(f"anchor_depth must be a bool, got {anchor_depth!r}")
        if isinstance(filter_history, bool) or not isinstance(filter_history, int) or filter_history < 0:
            raise ValueError(f"filter_history must be an int >= 0, got {filter_history!r}")
        if cache_interpolation not in INTERPOLATIONS:
            raise ValueError(f"cache_interpolation must be one of {INTERPOLATIONS}, got {cache_interpolation!r}")
        if isinstance(cache_footprint, bool) or not isinstance(cache_footprint, int) or cache_footprint < 1:
            raise ValueError(f"cache_footprint must be an int >= 1, got {cache_footprint!r}")
        text_dim = int(transformer.config.text_dim)
        if prompt_embeds is not None:
            if prompt_embeds.dim() == 2:
                prompt_embeds = prompt_embeds[None]
            if prompt_embeds.dim() != 3 or prompt_embeds.shape[-1] != text_dim:
                raise ValueError(
                    f"prompt_embeds must be [L, {text_dim}] or [B, L, {text_dim}], got {tuple(prompt_embeds.shape)}"
                )
        else:
            prompt_embeds = torch.zeros(1, 1, text_dim)  # the fixed empty prompt

        self.transformer = transformer
        self.transformer_2 = transformer_2
        self.vae = vae
        self.depth_head = depth_head
        self.scheduler = _scheduler_with_shift(scheduler, shift)
        self.boundary_ratio = boundary_ratio
        self._memory = memory
        self.num_inference_steps = num_inference_steps
        self.voxel_size = voxel_size
        self.cache_capacity = cache_capacity
        self.cache_interpolation = cache_interpolation
        self.cache_footprint = cache_footprint
        self.context_frames = context_frames
        self.cache_guidance = float(cache_guidance)
        self.rewrite_cached = bool(rewrite_cached)
        self.observed_margin = None if observed_margin is None else float(observed_margin)
        self.anchor_depth = bool(anchor_depth)
        self.filter_history = filter_history
        self.token_filter = token_filter if token_filter is not None else TokenFilter(stride=2)
        self.register_buffer("prompt_embeds", prompt_embeds.float(), persistent=False)
        # Where the checkpoint came from, for save_pretrained (set by from_pretrained).
        self.base_model_path: Path | None = None
        self._reset_state()

    # ------------------------------------------------------------------ folders

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        lora: str | Path | None = None,
        *,
        torch_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        prompt: str | None = None,
        **kwargs: Any,
    ) -> MirageGenerator:
        """Load a generator from a Wan2.2 folder (5B or A14B), a Mirage folder, or a base plus a Mirage LoRA.

        ``prompt`` is encoded once with the Wan2.2 folder's text encoder (it must have one);
        without it, ``prompt_embeds`` or the empty prompt are used. ``kwargs`` are generator
        arguments (``memory``, ``num_inference_steps``, ``prompt_embeds``, ...); they override
        the settings stored in the folder. See :mod:`~mirage_gym.model.pretrained`.
        """
        if prompt is not None and "prompt_embeds" in kwargs:
            raise ValueError("give either prompt or prompt_embeds, not both")
        parts = load_components(folder, lora=lora, torch_dtype=torch_dtype, device=device)
        if prompt is not None:
            if parts.base_model_path is None:
                raise ValueError(f"{folder} is not a Wan2.2 folder with a text encoder: pass prompt_embeds")
            kwargs["prompt_embeds"] = encode_prompt(
                parts.base_model_path, prompt, torch_dtype=parts.transformer.dtype, device=device
            )
        settings = {**parts.settings, **kwargs}
        generator = cls(
            parts.transformer,
            parts.vae,
            parts.depth_head,
            parts.scheduler,
            transformer_2=parts.transformer_2,
            boundary_ratio=parts.boundary_ratio,
            **settings,
        )
        generator.base_model_path = parts.base_model_path
        return generator.to(parts.transformer.device)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Save as a Mirage folder: the whole model, or for a Wan2.2 base the LoRA, input layer and depth head."""
        return save_components(
            folder,
            transformer=self.transformer,
            transformer_2=self.transformer_2,
            boundary_ratio=self.boundary_ratio,
            vae=self.vae,
            depth_head=self.depth_head,
            scheduler=self.scheduler,
            settings={key: getattr(self, key) for key in GENERATOR_SETTINGS},
            base_model_path=self.base_model_path,
        )

    # ------------------------------------------------------------------ state

    renders_ground_truth = False  # the Generator protocol (mirage_gym.model.protocols): frames are generated
    memory_modes = MEMORY_MODES

    @property
    def memory(self) -> str:
        """The scene memory: ``"latent"``, ``"pixel"`` or ``"none"`` (switch it with :meth:`set_memory`)."""
        return self._memory

    def set_memory(self, mode: str) -> None:
        """Switch the scene memory; correct at any time, also mid-episode.

        Running scenes keep their context frames and continue with an empty store of the new kind
        (latent tokens cannot become pixels or the reverse), so every later :meth:`step` reads and
        writes the store it was made with. Switching to the current mode changes nothing.
        """
        if mode not in MEMORY_MODES:
            raise ValueError(f"memory must be one of {MEMORY_MODES}, got {mode!r}")
        if mode == self._memory:
            return
        self._memory = mode
        if self._context is not None:
            self._store = self._new_store(self.batch_size)

    @property
    def max_depth(self) -> float:
        """Metres: the largest depth the depth head predicts."""
        return float(self.depth_head.config.max_depth)

    def check_geometry(self, resolution: int, chunk: int) -> None:
        """``ValueError`` unless chunks of ``chunk`` square frames of ``resolution`` pixels fit the model."""
        sf = self.vae.spatial_factor
        _, p_h, p_w = self.transformer.config.patch_size
        multiple = math.lcm(sf * p_h, sf * p_w)
        if resolution % multiple:
            raise ValueError(
                f"resolution {resolution} must be a multiple of {multiple} for this generator "
                f"(VAE factor {sf} x patch {p_h}x{p_w})"
            )
        try:
            self.vae.num_latent_frames(chunk)
        except ValueError as err:
            raise ValueError(f"chunk={chunk} does not fit this generator's VAE: {err}") from err

    def _reset_state(self) -> None:
        self._store: LatentCache | PointCloudMemory | None = None
        self._context: Tensor | None = None  # [B, C, k, h, w]
        self._context_poses: Tensor | None = None  # [B, k, 4, 4]
        self._intrinsics: Tensor | None = None  # [3, 3] pixel camera
        self._image_size: tuple[int, int] | None = None
        self._observed_depth: Tensor | None = None  # [B, H, W] each scene's start frame: its observed space
        self._observed_poses: Tensor | None = None  # [B, 4, 4]
        self._history: tuple[Tensor, Tensor, Tensor] | None = None  # the token filter's frames: rgb, depth, poses

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def latent_channels(self) -> int:
        return self.vae.latent_channels

    @property
    def batch_size(self) -> int:
        """Number of scenes since the last full :meth:`start` (0 before it)."""
        return 0 if self._context is None else self._context.shape[0]

    @property
    def memory_store(self) -> LatentCache | PointCloudMemory | None:
        """The scene memory (``None`` for ``memory="none"`` or before :meth:`start`)."""
        return self._store

    def memory_bytes(self) -> list[int]:
        """Bytes held by the scene memory, per scene (zeros for ``memory="none"``)."""
        if self._context is None:
            return []
        b = self.batch_size
        if self._store is None:
            return [0] * b
        # Both stores hold a fixed number of bytes per token/point, so a scene's share is exact.
        store = self._store
        total, count = store.nbytes, len(store)
        counts = [store.num_tokens(s) if self.memory == "latent" else store.num_points(s) for s in range(b)]
        return [0 if count == 0 else total * c // count for c in counts]

    def chunk_frames(self, latent_frames: int) -> int:
        """Pixel frames of a chunk of ``latent_frames`` latent frames (``1 + 4(t-1)`` for Wan)."""
        if latent_frames < 1:
            raise ValueError(f"latent_frames must be >= 1, got {latent_frames}")
        f = self.vae.temporal_factor
        return latent_frames if f == 1 else 1 + f * (latent_frames - 1)

    def _latent_grid(self, height: int, width: int) -> tuple[int, int]:
        sf = self.vae.spatial_factor
        _, p_h, p_w = self.transformer.config.patch_size
        if height % (sf * p_h) or width % (sf * p_w):
            raise ValueError(
                f"image size {height}x{width} must be a multiple of {sf * p_h}x{sf * p_w} "
                f"(VAE factor {sf} x patch {p_h}x{p_w})"
            )
        return height // sf, width // sf

    def _new_store(self, num_scenes: int) -> LatentCache | PointCloudMemory | None:
        if self.memory == "latent":
            return LatentCache(
                self.latent_channels, self.voxel_size, self.cache_capacity, num_scenes=num_scenes, device=self.device,
                interpolation=self.cache_interpolation, max_footprint=self.cache_footprint,
            )
        if self.memory == "pixel":
            return PointCloudMemory(device=self.device)
        return None

    # ------------------------------------------------------------------ helpers

    def _encode_images(self, images: Tensor) -> Tensor:
        frames = images.to(self.device).permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
        return self.vae.encode(frames)

    @staticmethod
    def _to_uint8(frames: Tensor) -> Tensor:
        return ((frames + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 1, 3, 4, 2).contiguous()

    def _depth(self, latents: Tensor) -> tuple[Tensor, Tensor]:
        """Token depth ``[B, t, h, w]`` and pixel depth ``[B, t, H, W]`` of latents ``[B, C, t, h, w]``."""
        b, _, t = latents.shape[:3]
        out = self.depth_head(latents.transpose(1, 2).flatten(0, 1))
        return out.token_depth.unflatten(0, (b, t)), out.pixel_depth.unflatten(0, (b, t))

    def _set_timesteps(self) -> None:
        n = self.num_inference_steps
        if isinstance(self.scheduler, FlowMatchEulerDiscreteScheduler):  # evenly spaced, see the module docstring
            self.scheduler.set_timesteps(sigmas=[1.0 - i / n for i in range(n)], device=self.device)
        else:
            self.scheduler.set_timesteps(n, device=self.device)

    def _denoiser(self, timestep: Tensor) -> WanTransformer3DModel:
        if self.transformer_2 is None:
            return self.transformer
        boundary = self.boundary_ratio * self.scheduler.config.num_train_timesteps
        return self.transformer if timestep >= boundary else self.transformer_2

    def _keep_at_pixels(self, keep: Tensor) -> Tensor:
        sf = self.vae.spatial_factor
        return keep.repeat_interleave(sf, dim=-2).repeat_interleave(sf, dim=-1)

    @staticmethod
    def _check_pose(name: str, pose: Tensor, shape: tuple[int, ...]) -> None:
        if tuple(pose.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(pose.shape)}")
        if not torch.isfinite(pose).all():
            raise ValueError(f"{name} contains NaN or inf")

    # ------------------------------------------------------------------ start / step

    @torch.no_grad()
    def start(
        self,
        images: Tensor,
        cam_to_world: Tensor,
        intrinsics: Tensor,
        scenes: Sequence[int] | Tensor | None = None,
        *,
        renderers: Sequence[object] | None = None,
    ) -> ChunkOutput:
        """Image-to-video start: encode start images, predict their depth, write them to the memory.

        Args:
            images: ``[S, H, W, 3]`` uint8 start images.
            cam_to_world: ``[S, 4, 4]`` their poses.
            intrinsics: ``[3, 3]`` pixel camera, shared by all scenes.
            scenes: ``None`` starts ``B = S`` fresh scenes (all memory is dropped); otherwise the
                indices (into the current ``B``) of the scenes to reset, the others are untouched.
            renderers: ignored (the ground truth a renderer-backed generator needs; part of
                the :class:`~mirage_gym.model.protocols.Generator` interface).

        Returns:
            the start frame as a one-frame :class:`ChunkOutput` (the input images and their
            predicted depth).
        """
        if images.dim() != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 [S, H, W, 3], got {images.dtype} {tuple(images.shape)}")
        s, height, width = images.shape[:3]
        self._check_pose("cam_to_world", cam_to_world, (s, 4, 4))
        self._check_pose("intrinsics", intrinsics, (3, 3))
        h, w = self._latent_grid(height, width)
        intrinsics = intrinsics.to(self.device, torch.float32)
        if scenes is None:
            index = torch.arange(s, device=self.device)
        else:
            if self._context is None:
                raise ValueError("scenes can only be given after a first start() of all scenes")
            index = torch.as_tensor(scenes, dtype=torch.long, device=self.device).reshape(-1)
            if index.numel() != s or index.unique().numel() != s:
                raise ValueError(f"scenes must list {s} distinct indices (one per image), got {index.tolist()}")
            if (index < 0).any() or (index >= self.batch_size).any():
                raise ValueError(f"scenes must be in [0, {self.batch_size}), got {index.tolist()}")
            if (height, width) != self._image_size:
                raise ValueError(
                    f"images must be {self._image_size}, the size of the running scenes, got {(height, width)}"
                )
            if not torch.equal(intrinsics, self._intrinsics):
                raise ValueError("intrinsics must equal those of the running scenes")
        cam_to_world = cam_to_world.to(self.device, torch.float32)
        timer = _Timer(self.device)

        latents = self._encode_images(images[:, None])  # [S, C, 1, h, w]
        timer.lap("encode")
        token_depth, pixel_depth = self._depth(latents)
        timer.lap("depth")
        rgb = images[:, None].to(self.device)
        keep = self.token_filter(rgb, pixel_depth, cam_to_world[:, None], intrinsics, latent_size=(h, w))
        timer.lap("filter")

        # Everything is validated and computed: only now mutate the state.
        if scenes is None:
            self._reset_state()
            self._intrinsics = intrinsics
            self._image_size = (height, width)
            self._store = self._new_store(s)
            k = self.context_frames
            self._context = latents.repeat(1, 1, k, 1, 1)
            self._context_poses = cam_to_world[:, None].repeat(1, k, 1, 1)
            self._observed_depth = pixel_depth[:, 0].clone()
            self._observed_poses = cam_to_world.clone()
            if self.filter_history:
                self._history = (rgb.clone(), pixel_depth.clone(), cam_to_world[:, None].clone())
        else:
            if self._store is not None:
                for scene in index.tolist():
                    self._store.clear(scene=scene)
            self._context[index] = latents.expand(-1, -1, self.context_frames, -1, -1)
            self._context_poses[index] = cam_to_world[:, None].expand(-1, self.context_frames, -1, -1)
            self._observed_depth[index] = pixel_depth[:, 0]
            self._observed_poses[index] = cam_to_world
            if self._history is not None:  # the restarted scenes' history is their start frame (repeated)
                for past, now in zip(self._history, (rgb, pixel_depth, cam_to_world[:, None]), strict=True):
                    past[index] = now.expand_as(past[index])
        self._write(latents, token_depth, rgb, pixel_depth, cam_to_world[:, None], keep, index)
        timer.lap("write")
        return ChunkOutput(
            rgb=rgb,
            depth=pixel_depth,
            latents=latents,
            cache_mask=torch.zeros(s, 1, h, w, dtype=torch.bool, device=self.device),
            timings=timer.timings,
            written=None if self._store is None else keep,
        )

    def _write(
        self,
        latents: Tensor,
        token_depth: Tensor,
        rgb: Tensor,
        pixel_depth: Tensor,
        cam_to_world: Tensor,
        keep: Tensor,
        index: Tensor,
    ) -> None:
        """Write a chunk of scenes ``index`` to the memory (latent frames for the cache, pixel frames for points)."""
        if self._store is None:
            return
        f = self.vae.temporal_factor
        if self.memory == "latent":
            t = latents.shape[2]
            k_latent = scale_intrinsics(self._intrinsics, 1.0 / self.vae.spatial_factor)
            self._store.write(
                latents.transpose(1, 2).flatten(0, 1),
                token_depth.flatten(0, 1),
                cam_to_world[:, ::f].flatten(0, 1),
                k_latent,
                keep=keep[:, ::f].flatten(0, 1),
                scene=index.repeat_interleave(t),
            )
        else:
            n = rgb.shape[1]
            self._store.write(
                rgb.flatten(0, 1),
                pixel_depth.flatten(0, 1),
                cam_to_world.flatten(0, 1),
                self._intrinsics,
                keep=self._keep_at_pixels(keep).flatten(0, 1),
                scene=index.repeat_interleave(n),
            )

    def _in_observed_space(self, token_depth: Tensor, poses: Tensor) -> Tensor:
        """``[B, t, h, w]``: the tokens (depth ``[B, t, h, w]`` at latent poses ``[B, t, 4, 4]``) that land in the space
        their scene's start frame observed."""
        b, t, h, w = token_depth.shape
        k_latent = scale_intrinsics(self._intrinsics, 1.0 / self.vae.spatial_factor)
        points = backproject(token_depth.flatten(0, 1).float(), k_latent, poses.flatten(0, 1)).reshape(b, t * h * w, 3)
        inside = observed_space(points, self._observed_depth, self._observed_poses, self._intrinsics,
                                margin=self.observed_margin, max_depth=self.max_depth)
        return inside.reshape(b, t, h, w)

    def _read(self, cam_to_world: Tensor, h: int, w: int, timer: _Timer) -> tuple[Tensor, Tensor, Tensor | None]:
        """Cache latents ``[B, C, t, h, w]``, mask ``[B, t, h, w]`` and, for the latent cache, the depth of the
        cached surface in each cell ``[B, t, h, w]`` (None otherwise) for the chunk's pixel poses ``[B, T, 4, 4]``."""
        b, n = cam_to_world.shape[:2]
        f, sf = self.vae.temporal_factor, self.vae.spatial_factor
        poses = cam_to_world[:, ::f]
        t = poses.shape[1]
        if self.memory == "none":
            latents = torch.zeros(b, self.latent_channels, t, h, w, device=self.device)
            mask = torch.zeros(b, t, h, w, dtype=torch.bool, device=self.device)
            timer.lap("cache_read")
            return latents, mask, None
        if self.memory == "latent":
            k_latent = scale_intrinsics(self._intrinsics, 1.0 / sf)
            scene = torch.arange(b, device=self.device).repeat_interleave(t)
            latents, mask, depth = self._store.read(poses.flatten(0, 1), k_latent, height=h, width=w, scene=scene,
                                                    return_depth=True)
            timer.lap("cache_read")
            return latents.unflatten(0, (b, t)).transpose(1, 2), mask.unflatten(0, (b, t)), depth.unflatten(0, (b, t))
        # Pixel memory: render every frame at full resolution and re-encode it, as Gen3C/VMem/Spatia do.
        height, width = self._image_size
        scene = torch.arange(b, device=self.device).repeat_interleave(n)
        rgb, pixel_mask = self._store.read(
            cam_to_world.flatten(0, 1), self._intrinsics, height=height, width=width, scene=scene
        )
        timer.lap("render")
        latents = self._encode_images(rgb.unflatten(0, (b, n)))
        coverage = pool_fraction(pixel_mask.unflatten(0, (b, n))[:, ::f], (h, w))
        timer.lap("encode")
        return latents, coverage >= 0.5, None

    @torch.no_grad()
    def write_decision(
        self, images: Tensor, cam_to_world: Tensor, intrinsics: Tensor, depth: Tensor | None = None, *,
        history: int = 0,
    ) -> FilterResult:
        """What the memory would take from a chunk showing ``images``: the token filter's decision; changes nothing.

        The chunk is encoded and its depth predicted by the depth head, as for a generated chunk
        (or ``depth`` ``[B, T, H, W]`` metres is used instead, e.g. the ground truth, to tell the
        filter's rule from the depth it is given), then :meth:`TokenFilter.analyze` runs on it. This is
        how moving objects are kept out of the memory when frames do show them (a generated world
        only shows what its generator paints; ``mirage-gym eval`` scores the filter on rendered chunks).

        Args:
            images: ``[B, T, H, W, 3]`` uint8 frames of one chunk per scene.
            cam_to_world: ``[B, T, 4, 4]`` their poses.
            intrinsics: ``[3, 3]`` the pixel camera.
            depth: optional ``[B, T, H, W]`` depth replacing the predicted one.
            history: the first ``history`` frames precede the chunk (as ``filter_history`` keeps them): the
                filter projects into them and decides the others (a per-frame autoencoder only).
        """
        if images.dim() != 5 or images.shape[-1] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 [B, T, H, W, 3], got {images.dtype} {tuple(images.shape)}")
        b, n, height, width = images.shape[:4]
        if not 0 <= history < n or (history and self.vae.temporal_factor != 1):
            raise ValueError(f"history must be in [0, {n}) frames, and 0 with a temporal autoencoder, got {history}")
        self._check_pose("cam_to_world", cam_to_world, (b, n, 4, 4))
        self._check_pose("intrinsics", intrinsics, (3, 3))
        h, w = self._latent_grid(height, width)
        if depth is None:
            _, latent_depth = self._depth(self._encode_images(images))
            owner = (torch.arange(n, device=self.device) + self.vae.temporal_factor - 1) // self.vae.temporal_factor
            depth = latent_depth[:, owner]
        elif tuple(depth.shape) != (b, n, height, width):
            raise ValueError(f"depth must be [{b}, {n}, {height}, {width}], got {tuple(depth.shape)}")
        images, depth, cam_to_world = images.to(self.device), depth.to(self.device), cam_to_world.to(self.device)
        before = (images[:, :history], depth[:, :history], cam_to_world[:, :history]) if history else None
        return self.token_filter.analyze(images[:, history:], depth[:, history:], cam_to_world[:, history:],
                                         intrinsics.to(self.device), latent_size=(h, w), history=before)

    @torch.no_grad()
    def conditioning(self, cam_to_world: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """What the next :meth:`step` for poses ``cam_to_world`` ``[B, T, 4, 4]`` conditions on; changes nothing.

        Returns the context latents ``[B, C, k, h, w]``, the poses of context and chunk latent frames
        ``[B, k + t, 4, 4]``, and the memory read for the chunk: latents ``[B, C, t, h, w]`` and mask
        ``[B, t, h, w]`` (the self-forcing fine-tune scores the model on exactly this).
        """
        if self._context is None:
            raise RuntimeError("call start() before conditioning()")
        height, width = self._image_size
        h, w = height // self.vae.spatial_factor, width // self.vae.spatial_factor
        cam_to_world = cam_to_world.to(self.device, torch.float32)
        cache, mask, _ = self._read(cam_to_world, h, w, _Timer(self.device))
        poses = torch.cat([self._context_poses, cam_to_world[:, :: self.vae.temporal_factor]], dim=1)
        return self._context.clone(), poses, cache, mask

    def _anchor_depth(self, token_depth: Tensor, pixel_depth: Tensor, mask: Tensor,
                      cached: Tensor) -> tuple[Tensor, Tensor]:
        """Token and pixel depth (``[B, t, h, w]``, ``[B, t, H, W]``) of a chunk held to the cached surface
        ``cached`` in the cells ``mask`` (see ``anchor_depth``).

        Inside the cached region the pixel depth is the cached token depths interpolated bilinearly (in
        log depth); within half a cell of its border, where a neighbour is not cached, it is the head's
        pixel depth scaled by its cell's ratio cached / predicted, which keeps the head's edges.
        """
        sf = self.vae.spatial_factor
        ratio = torch.where(mask, cached / token_depth.clamp_min(1e-3), torch.ones_like(token_depth))
        scaled = pixel_depth * ratio.repeat_interleave(sf, -2).repeat_interleave(sf, -1)

        def upsample(x: Tensor) -> Tensor:  # [B, t, h, w] -> [B, t, H, W], bilinear
            up = F.interpolate(x.flatten(0, 1)[:, None], scale_factor=sf, mode="bilinear", align_corners=False)
            return up[:, 0].unflatten(0, x.shape[:2])

        weight = upsample(mask.float())  # 1 where every cell a pixel interpolates from is cached
        log_depth = upsample(torch.where(mask, cached.clamp_min(1e-3).log(), torch.zeros_like(cached)))
        smooth = (log_depth / weight.clamp_min(1e-6)).exp()
        return torch.where(mask, cached, token_depth), torch.where(weight > 1.0 - 1e-4, smooth, scaled)

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator | Sequence[torch.Generator] | None) -> Tensor:
        if isinstance(generator, Sequence):
            generator = list(generator)
            if len(generator) != shape[0]:
                raise ValueError(f"give one generator per scene ({shape[0]}), got {len(generator)}")
        return randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)

    def _prompt(self, batch: int) -> Tensor:
        if self.prompt_embeds.shape[0] not in (1, batch):
            raise ValueError(f"prompt_embeds has batch {self.prompt_embeds.shape[0]}, expected 1 or {batch}")
        return self.prompt_embeds.expand(batch, -1, -1)

    @torch.no_grad()
    def step(
        self,
        cam_to_world: Tensor,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> ChunkOutput:
        """Generate the next chunk of every scene.

        Args:
            cam_to_world: ``[B, T, 4, 4]`` the chunk's poses (``T = 1 + 4(t-1)`` with a Wan VAE).
            generator: one generator for the whole batch, or one per scene (then scene ``b``'s
                result does not depend on the other scenes).
        """
        if self._context is None:
            raise RuntimeError("call start() before step()")
        b = self.batch_size
        if cam_to_world.dim() != 4 or cam_to_world.shape[0] != b or cam_to_world.shape[2:] != (4, 4):
            raise ValueError(f"cam_to_world must be [{b}, T, 4, 4], got {tuple(cam_to_world.shape)}")
        self._check_pose("cam_to_world", cam_to_world, tuple(cam_to_world.shape))
        n = cam_to_world.shape[1]
        t = self.vae.num_latent_frames(n)
        height, width = self._image_size
        h, w = height // self.vae.spatial_factor, width // self.vae.spatial_factor
        cam_to_world = cam_to_world.to(self.device, torch.float32)
        f, k = self.vae.temporal_factor, self.context_frames
        noise = self._noise((b, self.latent_channels, t, h, w), generator)
        prompt = self._prompt(b)
        timer = _Timer(self.device)

        cache, mask, cached_depth = self._read(cam_to_world, h, w, timer)
        poses = cam_to_world[:, ::f]
        all_poses = torch.cat([self._context_poses, poses], dim=1)
        k_latent = scale_intrinsics(self._intrinsics, 1.0 / self.vae.spatial_factor)
        _, conditioning = chunk_inputs(self._context, noise, cache, mask, all_poses, k_latent)

        self._set_timesteps()
        latents = noise
        guide = self.cache_guidance * mask[:, None].to(latents.dtype)  # [B, 1, t, h, w]
        for i, timestep in enumerate(self.scheduler.timesteps):
            frame_t = torch.cat([torch.zeros(b, k, device=self.device), timestep.expand(b, t).float()], dim=1)
            inputs = torch.cat([self._context, latents], dim=2)
            flow = predict_flow(self._denoiser(timestep), inputs, conditioning, frame_t, prompt)
            latents = self.scheduler.step(flow[:, :, k:], timestep, latents, return_dict=False)[0]
            if self.cache_guidance > 0:
                s_next = self.scheduler.sigmas[i + 1].to(self.device)
                latents = latents + guide * ((1 - s_next) * cache + s_next * noise - latents)
        timer.lap("denoise")

        frames = self.vae.decode(latents)
        if frames.shape[1] != n:
            raise RuntimeError(f"the VAE decoded {frames.shape[1]} frames for a chunk of {n}")
        rgb = self._to_uint8(frames)
        token_depth, latent_pixel_depth = self._depth(latents)
        # Pixel frame j belongs to latent frame ceil(j / f) (frame 0 alone, then groups of f).
        owner = (torch.arange(n, device=self.device) + f - 1) // f
        # The token filter judges the chunk by the head's own estimate: anchored cells carry the cache's
        # depth, which agrees with the cache by construction and so is no evidence of what moved.
        shown_depth = latent_pixel_depth[:, owner]
        if self.anchor_depth and cached_depth is not None:
            token_depth, latent_pixel_depth = self._anchor_depth(token_depth, latent_pixel_depth, mask, cached_depth)
        pixel_depth = latent_pixel_depth[:, owner]
        timer.lap("decode")
        if not self.filter_history or self._history is None:
            keep = self.token_filter(rgb, shown_depth, cam_to_world, self._intrinsics, latent_size=(h, w))
        else:
            keep = self.token_filter(rgb, shown_depth, cam_to_world, self._intrinsics, latent_size=(h, w),
                                     history=self._history)
            self._history = tuple(torch.cat([past, now], dim=1)[:, -self.filter_history:].contiguous()
                                  for past, now in zip(self._history, (rgb, shown_depth, cam_to_world), strict=True))
        freed = None
        if self.memory == "latent" and getattr(self.token_filter, "cross_chunk", False):
            # Cross-chunk check: cached tokens this chunk sees through have moved away; drop them.
            freed = self.token_filter.carve(self._store, shown_depth, cam_to_world, self._intrinsics, (h, w))
        if not self.rewrite_cached and self.memory == "latent":  # the pixel baseline appends every frame, as published
            cached = mask[:, owner] if freed is None else mask[:, owner] & ~freed
            keep = keep & ~cached
        if self.observed_margin is not None and self.memory == "latent":
            keep[:, ::f] &= ~self._in_observed_space(token_depth, poses)
        timer.lap("filter")
        self._write(latents, token_depth, rgb, pixel_depth, cam_to_world, keep, torch.arange(b, device=self.device))
        timer.lap("write")

        self._context = torch.cat([self._context, latents], dim=2)[:, :, -k:].contiguous()
        self._context_poses = all_poses[:, -k:].contiguous()
        return ChunkOutput(rgb=rgb, depth=pixel_depth, latents=latents, cache_mask=mask, timings=timer.timings,
                           written=None if self._store is None else keep)
