"""The widened Wan transformer and the chunked sampler, on tiny random configurations."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import AutoencoderKLWan, AutoencoderTiny, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

from mirage_gym.geometry import backproject, intrinsics_from_fov, pose_from_position_yaw_pitch, scale_intrinsics
from mirage_gym.memory import observed_space, pool_depth
from mirage_gym.model.depth_head import DepthHead
from mirage_gym.model.generator import ChunkOutput, MirageGenerator
from mirage_gym.model.transformer import (
    InputLayout,
    WidenedPatchEmbedding,
    build_transformer,
    conditioning_channels,
    predict_flow,
    restore_widened_patch_embedding,
    token_timesteps,
    widen_patch_embedding,
)
from mirage_gym.model.vae import VideoVAE

SIZE = 32  # pixels; latent grid 4x4 with the 8x tiny VAE, 2x2 tokens per frame
C = 4


def tiny_wan(in_channels: int = C, out_channels: int = C, num_layers: int = 2) -> WanTransformer3DModel:
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=in_channels,
        out_channels=out_channels,
        text_dim=16,
        freq_dim=16,
        ffn_dim=32,
        num_layers=num_layers,
    ).eval()


def tiny_vae() -> VideoVAE:
    return VideoVAE(
        AutoencoderTiny(
            encoder_block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            num_encoder_blocks=(1, 1, 1, 1),
            num_decoder_blocks=(1, 1, 1, 1),
            latent_channels=C,
        )
    ).eval()


def trained_like(transformer: WanTransformer3DModel, seed: int = 1) -> WanTransformer3DModel:
    """Give the zero-initialised conditioning channels weights, as training would."""
    g = torch.Generator().manual_seed(seed)
    emb = transformer.patch_embedding
    with torch.no_grad():
        extra = emb.weight[:, emb.base_channels :]
        extra.copy_(torch.randn(extra.shape, generator=g) * 0.3)
    return transformer


def make_generator(memory: str = "latent", seed: int = 0, **kwargs) -> MirageGenerator:
    torch.manual_seed(seed)
    transformer = trained_like(
        build_transformer(C, num_layers=2, num_attention_heads=2, attention_head_dim=8, text_dim=16, freq_dim=16)
    )
    head = DepthHead(latent_channels=C, spatial_factor=8, hidden_channels=8, num_blocks=1)
    kwargs.setdefault("num_inference_steps", 2)
    return MirageGenerator(
        transformer, tiny_vae(), head, FlowMatchEulerDiscreteScheduler(shift=3.0), memory=memory, **kwargs
    ).eval()


def scene_inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, SIZE, SIZE, 3), generator=g, dtype=torch.uint8)
    position = torch.rand(batch, 3, generator=g) * 2 + torch.tensor([0.0, 0.0, 1.0])
    yaw = torch.rand(batch, generator=g) * 6.28
    poses = pose_from_position_yaw_pitch(position, yaw, torch.zeros(batch))
    return images, poses, intrinsics_from_fov(90.0, SIZE, SIZE)


def chunk_poses(start: torch.Tensor, frames: int, step: float = 0.05) -> torch.Tensor:
    """A short forward walk: ``[B, frames, 4, 4]``."""
    poses = start[:, None].repeat(1, frames, 1, 1)
    offsets = torch.arange(1, frames + 1, dtype=torch.float32)[None, :, None] * step
    poses[..., :3, 3] += offsets * start[:, None, :3, 2]
    return poses


def seeds(*values: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(v) for v in values]


# ---------------------------------------------------------------------- transformer


def test_zero_init_widening_is_bit_exact() -> None:
    torch.manual_seed(0)
    transformer = tiny_wan()
    latents = torch.randn(2, C, 3, 4, 4)
    frame_t = torch.tensor([[0.0, 0.0, 700.0], [0.0, 0.0, 250.0]])
    prompt = torch.randn(2, 5, 16)
    with torch.no_grad():
        reference = transformer(latents, token_timesteps(transformer, frame_t, 4, 4), prompt).sample
        widen_patch_embedding(transformer)
        conditioning = torch.randn(2, InputLayout(C).extra_channels, 3, 4, 4)
        widened = predict_flow(transformer, latents, conditioning, frame_t, prompt)
    assert transformer.config.in_channels == 2 * C + 7 and transformer.config.out_channels == C
    assert isinstance(transformer.patch_embedding, WidenedPatchEmbedding)
    assert torch.equal(widened, reference)
    # The new channels are live: once they have weights, the conditioning changes the output.
    with torch.no_grad():
        changed = predict_flow(trained_like(transformer), latents, conditioning, frame_t, prompt)
    assert not torch.allclose(changed, reference)


def test_widening_rejects_unsupported_transformers() -> None:
    widened = widen_patch_embedding(tiny_wan())
    with pytest.raises(ValueError, match="already widened"):
        widen_patch_embedding(widened)
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        widen_patch_embedding(tiny_wan(in_channels=36, out_channels=16))  # an I2V-style input
    with pytest.raises(ValueError, match="not widened"):
        predict_flow(
            tiny_wan(),
            torch.zeros(1, C, 1, 4, 4),
            torch.zeros(1, C + 7, 1, 4, 4),
            torch.zeros(1, 1),
            torch.zeros(1, 1, 16),
        )


def test_restore_widened_patch_embedding_checks_channels() -> None:
    plain = tiny_wan(in_channels=2 * C + 7)
    restore_widened_patch_embedding(plain)
    assert isinstance(plain.patch_embedding, WidenedPatchEmbedding)
    assert plain.patch_embedding.base_channels == C
    with pytest.raises(ValueError, match=f"must take {2 * C + 7} input channels"):
        restore_widened_patch_embedding(tiny_wan(in_channels=2 * C + 3))


def test_token_timesteps_follow_the_patch_order() -> None:
    transformer = tiny_wan()
    steps = token_timesteps(transformer, torch.tensor([[0.0, 0.0, 900.0]]), 4, 6)
    tokens = 2 * 3  # (4 / 2) * (6 / 2) per frame
    assert steps.shape == (1, 3 * tokens)
    assert steps[0, : 2 * tokens].eq(0).all() and steps[0, 2 * tokens :].eq(900).all()
    with pytest.raises(ValueError, match="multiple of the patch size"):
        token_timesteps(transformer, torch.zeros(1, 1), 3, 4)


def test_conditioning_zeroes_cache_holes() -> None:
    cache = torch.randn(1, C, 2, 4, 4)
    mask = torch.rand(1, 2, 4, 4) > 0.5
    plucker = torch.randn(1, 6, 2, 4, 4)
    cond = conditioning_channels(cache, mask, plucker)
    layout = InputLayout(C)
    assert cond.shape == (1, layout.extra_channels, 2, 4, 4)
    shifted = slice(layout.cache.start - C, layout.cache.stop - C)  # slices of the widening only
    assert torch.equal(cond[:, shifted], cache * mask[:, None])
    assert torch.equal(cond[:, layout.mask.start - C].bool(), mask)
    assert torch.equal(cond[:, layout.camera.start - C :], plucker)
    with pytest.raises(ValueError, match="cache_mask"):
        conditioning_channels(cache, mask[:, :1], plucker)


# ---------------------------------------------------------------------- sampler


def test_start_and_step_shapes() -> None:
    gen = make_generator()
    images, poses, k = scene_inputs(2)
    first = gen.start(images, poses, k)
    assert isinstance(first, ChunkOutput)
    assert first.rgb.shape == (2, 1, SIZE, SIZE, 3) and torch.equal(first.rgb[:, 0], images)
    assert first.depth.shape == (2, 1, SIZE, SIZE) and (first.depth > 0).all()
    out = gen.step(chunk_poses(poses, 4), seeds(0, 1))
    assert out.rgb.shape == (2, 4, SIZE, SIZE, 3) and out.rgb.dtype == torch.uint8
    assert out.depth.shape == (2, 4, SIZE, SIZE) and out.depth.dtype == torch.float32
    assert out.latents.shape == (2, C, 4, 4, 4) and torch.isfinite(out.latents).all()
    assert out.cache_mask.shape == (2, 4, 4, 4)
    assert {"cache_read", "denoise", "decode", "filter", "write"} <= set(out.timings)
    assert all(v >= 0 for v in out.timings.values())


def test_deterministic_per_seed() -> None:
    images, poses, k = scene_inputs(2)
    runs = []
    for seed in (0, 0, 1):
        gen = make_generator()
        gen.start(images, poses, k)
        runs.append(gen.step(chunk_poses(poses, 3), torch.Generator().manual_seed(seed)))
    assert torch.equal(runs[0].latents, runs[1].latents) and torch.equal(runs[0].rgb, runs[1].rgb)
    assert not torch.allclose(runs[0].latents, runs[2].latents)


def test_batch_equals_single_runs() -> None:
    images, poses, k = scene_inputs(3)
    gen = make_generator()
    gen.start(images, poses, k)
    batch = [
        gen.step(chunk_poses(poses, 3), seeds(10, 11, 12)),
        gen.step(chunk_poses(poses, 3, step=0.1), seeds(20, 21, 22)),
    ]
    for b in range(3):
        single = make_generator()
        single.start(images[b : b + 1], poses[b : b + 1], k)
        for chunk, (step, seed) in enumerate(((0.05, 10 + b), (0.1, 20 + b))):
            out = single.step(chunk_poses(poses[b : b + 1], 3, step=step), seeds(seed))
            torch.testing.assert_close(out.latents[0], batch[chunk].latents[b], atol=1e-5, rtol=1e-5)
            assert (out.rgb[0].int() - batch[chunk].rgb[b].int()).abs().max() <= 1
            assert torch.equal(out.cache_mask[0], batch[chunk].cache_mask[b])


def test_latent_memory_reads_what_start_wrote() -> None:
    gen = make_generator("latent")
    images, poses, k = scene_inputs(2)
    first = gen.start(images, poses, k)
    latent_k = scale_intrinsics(k, 1 / 8)
    read, mask = gen.memory_store.read(poses, latent_k, height=4, width=4, scene=torch.arange(2))
    assert mask.all()
    assert torch.equal(read, first.latents[:, :, 0])
    out = gen.step(poses[:, None].repeat(1, 2, 1, 1), seeds(0, 1))  # stay at the start pose
    assert out.cache_mask.all()
    assert all(n > 0 for n in gen.memory_bytes())


def test_full_cache_guidance_ends_cached_cells_on_the_cache() -> None:
    images, poses, k = scene_inputs(2)
    stay = poses[:, None].repeat(1, 2, 1, 1)  # the start pose: every cell is cached
    outs = {}
    for w in (0.0, 1.0):
        gen = make_generator("latent", cache_guidance=w)
        first = gen.start(images, poses, k)
        outs[w] = gen.step(stay, seeds(0, 1))
    cached = first.latents.expand_as(outs[1.0].latents)
    assert outs[1.0].cache_mask.all()
    torch.testing.assert_close(outs[1.0].latents, cached, atol=1e-5, rtol=0)
    assert (outs[0.0].latents - cached).abs().mean() > 0.1  # the random model alone does not copy
    with pytest.raises(ValueError, match="cache_guidance"):
        make_generator(cache_guidance=1.5)


@pytest.mark.parametrize("rewrite", [False, True])
def test_cells_read_from_the_cache_are_not_written_back_by_default(rewrite: bool) -> None:
    images, poses, k = scene_inputs(2)
    gen = make_generator("latent", rewrite_cached=rewrite)
    gen.start(images, poses, k)
    before = [t.clone() for t in gen.memory_store.points()]
    out = gen.step(poses[:, None].repeat(1, 2, 1, 1), seeds(0, 1))  # the start pose: every cell is cached
    assert out.cache_mask.all()
    after = gen.memory_store.points()
    unchanged = all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert unchanged != rewrite  # remembered surfaces stay put unless rewriting is asked for
    # The chunk's record of its write says the same: nothing (all cached) or every token the filter kept.
    assert out.written.shape == (2, 2, *out.cache_mask.shape[-2:]) and out.written.dtype == torch.bool
    assert out.written.any() == rewrite


def test_sampler_spaces_its_steps_evenly_before_the_shift() -> None:
    gen = make_generator(num_inference_steps=3)
    gen._set_timesteps()
    shift = 3.0
    expected = [shift * u / (1 + (shift - 1) * u) for u in (1.0, 2 / 3, 1 / 3)] + [0.0]
    torch.testing.assert_close(gen.scheduler.sigmas.float(), torch.tensor(expected), atol=1e-5, rtol=0)


def test_memory_modes_switch() -> None:
    images, poses, k = scene_inputs(2)
    outputs, sizes = {}, {}
    for memory in ("latent", "pixel", "none"):
        gen = make_generator(memory)
        gen.start(images, poses, k)
        outputs[memory] = gen.step(poses[:, None].repeat(1, 2, 1, 1), seeds(0, 1))
        sizes[memory] = gen.memory_bytes()
        if memory == "pixel":
            gen.step(poses[:, None].repeat(1, 2, 1, 1), seeds(2, 3))
            assert all(after > before for after, before in zip(gen.memory_bytes(), sizes[memory], strict=True))
    assert outputs["latent"].cache_mask.all()
    assert outputs["pixel"].cache_mask.float().mean() > 0.5
    assert not outputs["none"].cache_mask.any() and sizes["none"] == [0, 0]
    assert outputs["none"].written is None and outputs["pixel"].written is not None
    assert "render" in outputs["pixel"].timings and "encode" in outputs["pixel"].timings
    # The conditioning reaches the model: the same noise gives different chunks.
    assert not torch.allclose(outputs["latent"].latents, outputs["none"].latents)


def test_resetting_one_scene_leaves_the_others() -> None:
    images, poses, k = scene_inputs(2)
    new_images, new_poses, _ = scene_inputs(1, seed=5)
    reference = make_generator()
    reference.start(images, poses, k)
    reference.step(chunk_poses(poses, 2, step=1.0), seeds(0, 1))  # far enough to add tokens the start did not cover
    expected = reference.step(chunk_poses(poses, 2, step=0.1), seeds(2, 3))

    gen = make_generator()
    gen.start(images, poses, k)
    gen.step(chunk_poses(poses, 2, step=1.0), seeds(0, 1))
    bytes_before = gen.memory_bytes()
    gen.start(new_images, new_poses, k, scenes=[1])
    after = gen.memory_bytes()
    assert after[0] == bytes_before[0] and 0 < after[1] < bytes_before[1]
    out = gen.step(torch.cat([chunk_poses(poses[:1], 2, step=0.1), chunk_poses(new_poses, 2, step=0.1)]), seeds(2, 3))
    torch.testing.assert_close(out.latents[0], expected.latents[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="scenes must be in"):
        gen.start(new_images, new_poses, k, scenes=[2])
    with pytest.raises(ValueError, match="images must be"):
        gen.start(torch.zeros(1, 64, 64, 3, dtype=torch.uint8), new_poses, k, scenes=[0])


def test_bad_input_is_rejected_and_changes_nothing() -> None:
    gen = make_generator()
    images, poses, k = scene_inputs(2)
    with pytest.raises(RuntimeError, match="start"):
        gen.step(chunk_poses(poses, 2))
    with pytest.raises(ValueError, match="images"):
        gen.start(images.float(), poses, k)
    with pytest.raises(ValueError, match="image size"):
        gen.start(torch.zeros(2, 24, 24, 3, dtype=torch.uint8), poses, k)
    gen.start(images, poses, k)
    before = (gen.memory_bytes(), gen._context.clone())
    bad = chunk_poses(poses, 2)
    bad[0, 1, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        gen.step(bad)
    with pytest.raises(ValueError, match="cam_to_world"):
        gen.step(chunk_poses(poses[:1], 2))
    with pytest.raises(ValueError, match="one generator per scene"):
        gen.step(chunk_poses(poses, 2), seeds(0))
    assert gen.memory_bytes() == before[0] and torch.equal(gen._context, before[1])


def test_constructor_validates_components() -> None:
    gen = make_generator()
    parts = (gen.transformer, gen.vae, gen.depth_head, gen.scheduler)
    with pytest.raises(ValueError, match="memory must be one of"):
        MirageGenerator(*parts, memory="voxels")
    with pytest.raises(ValueError, match="VAE has"):
        MirageGenerator(widen_patch_embedding(tiny_wan(in_channels=8, out_channels=8)), *parts[1:])
    with pytest.raises(ValueError, match="depth_head"):
        MirageGenerator(parts[0], parts[1], DepthHead(latent_channels=8), parts[3])
    with pytest.raises(ValueError, match="boundary_ratio"):
        MirageGenerator(*parts, transformer_2=copy.deepcopy(parts[0]))


def test_moe_switches_expert_at_the_boundary() -> None:
    gen = make_generator(num_inference_steps=4)
    expert_2 = trained_like(copy.deepcopy(gen.transformer), seed=7)
    moe = MirageGenerator(
        gen.transformer,
        gen.vae,
        gen.depth_head,
        gen.scheduler,
        transformer_2=expert_2,
        boundary_ratio=0.8,
        num_inference_steps=4,
    )
    calls = {"high": 0, "low": 0}
    moe.transformer.register_forward_hook(lambda *_: calls.__setitem__("high", calls["high"] + 1))
    expert_2.register_forward_hook(lambda *_: calls.__setitem__("low", calls["low"] + 1))
    images, poses, k = scene_inputs(1)
    moe.start(images, poses, k)
    moe.step(chunk_poses(poses, 2), seeds(0))
    timesteps = moe.scheduler.timesteps
    assert calls == {"high": int((timesteps >= 800).sum()), "low": int((timesteps < 800).sum())}
    assert calls["high"] > 0 and calls["low"] > 0


def test_temporal_vae_chunks() -> None:
    torch.manual_seed(0)
    z = 8
    wan_vae = AutoencoderKLWan(
        base_dim=8, z_dim=z, dim_mult=[1, 1, 1, 1], num_res_blocks=1, latents_mean=[0.0] * z, latents_std=[1.0] * z
    )
    vae = VideoVAE(wan_vae).eval()
    transformer = build_transformer(
        z, num_layers=1, num_attention_heads=2, attention_head_dim=8, text_dim=16, freq_dim=16
    )
    head = DepthHead(latent_channels=z, spatial_factor=8, hidden_channels=8, num_blocks=1)
    gen = MirageGenerator(transformer, vae, head, FlowMatchEulerDiscreteScheduler(), num_inference_steps=1).eval()
    assert gen.chunk_frames(2) == 5
    images, poses, k = scene_inputs(1)
    gen.start(images, poses, k)
    out = gen.step(chunk_poses(poses, 5), seeds(0))
    assert out.rgb.shape == (1, 5, SIZE, SIZE, 3) and out.latents.shape == (1, z, 2, 4, 4)
    # Pixel frames 1..4 share latent frame 1's depth.
    assert all(torch.equal(out.depth[0, j], out.depth[0, 1]) for j in range(2, 5))
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        gen.step(chunk_poses(poses, 4), seeds(0))


def test_anchor_depth_returns_the_cached_surface_where_the_memory_covers_the_view() -> None:
    images, poses, k = scene_inputs(2)
    chunk = poses[:, None].repeat(1, 2, 1, 1)  # back at the start pose: the start frame's tokens cover the view
    outs = {}
    for anchor in (False, True):
        gen = make_generator("latent", anchor_depth=anchor)
        start = gen.start(images, poses, k)
        outs[anchor] = gen.step(chunk, seeds(0, 1))
        h, w = outs[anchor].cache_mask.shape[-2:]
        _, mask, cached = gen._store.read(chunk.flatten(0, 1), scale_intrinsics(k, 1.0 / gen.vae.spatial_factor),
                                          h, w, scene=torch.arange(2).repeat_interleave(2), return_depth=True)
    off, on = outs[False], outs[True]
    assert torch.equal(off.rgb, on.rgb)  # only the depth changes
    mask = mask.reshape(2, 2, h, w)
    assert mask.float().mean() > 0.5 and torch.equal(mask, on.cache_mask)
    # In the cached cells, the token depth (the median of its pixels) is the cached surface's, not a new estimate.
    token = pool_depth(on.depth, (h, w))
    cached = cached.reshape(2, 2, h, w)
    assert torch.allclose(token[mask], cached[mask], rtol=0.05)
    assert not torch.allclose(pool_depth(off.depth, (h, w))[mask], cached[mask], rtol=0.05)
    # Back at the start pose the cached surface is the start frame's own depth (to interpolation error).
    err = ((on.depth[:, 0] - start.depth[:, 0]).abs() / start.depth[:, 0])
    assert err.median() < 0.05 < ((off.depth[:, 0] - start.depth[:, 0]).abs() / start.depth[:, 0]).median()
    # Outside the cached cells nothing changes.
    sf = 8
    uncached = ~mask.repeat_interleave(sf, -2).repeat_interleave(sf, -1)
    assert torch.equal(on.depth[uncached], off.depth[uncached]) or not uncached.any()
    with pytest.raises(ValueError, match="anchor_depth"):
        make_generator(anchor_depth="yes")


def test_the_token_filter_judges_an_anchored_chunk_by_the_heads_own_depth() -> None:
    # Anchored cells carry the cache's depth, which agrees with the cache by construction; the filter
    # must see the depth the head reads from the chunk, which is what it returns without anchoring.
    images, poses, k = scene_inputs(2)
    chunk = poses[:, None].repeat(1, 2, 1, 1)
    seen, outs = {}, {}
    for anchor in (False, True):
        gen = make_generator("latent", anchor_depth=anchor)
        judge = gen.token_filter

        def spy(rgb, depth, *args, _anchor=anchor, _judge=judge, **kwargs):
            seen[_anchor] = depth.clone()
            return _judge(rgb, depth, *args, **kwargs)

        gen.token_filter = spy
        gen.start(images, poses, k)
        outs[anchor] = gen.step(chunk, seeds(0, 1))
    assert not torch.equal(outs[True].depth, outs[False].depth)  # anchoring changed what the chunk returns
    torch.testing.assert_close(seen[True], outs[False].depth)
    torch.testing.assert_close(seen[False], outs[False].depth)


def test_cache_footprint_reaches_the_latent_cache() -> None:
    images, poses, k = scene_inputs(1)
    gen = make_generator("latent", cache_footprint=3)
    gen.start(images, poses, k)
    assert gen._store.max_footprint == 3
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="cache_footprint"):
            make_generator(cache_footprint=bad)


def test_generated_tokens_stay_out_of_the_space_the_start_frame_observed() -> None:
    images, poses, k = scene_inputs(2)
    # Half a field of view to the left: the chunk sees part of what the start frame saw, and new space.
    turned = pose_from_position_yaw_pitch(poses[:, :3, 3], torch.atan2(poses[:, 1, 2], poses[:, 0, 2]) + 0.8,
                                          torch.zeros(2))
    chunk = torch.stack([poses, turned], dim=1)
    written = {}
    for margin in (None, 0.2):
        gen = make_generator("latent", rewrite_cached=True, observed_margin=margin)
        start = gen.start(images, poses, k)
        out = gen.step(chunk, seeds(0, 1))
        written[margin] = out.written
    # The same chunk (the margin changes only what is written), less exactly the tokens in the observed space.
    token_depth, _ = gen._depth(out.latents)
    h, w = token_depth.shape[-2:]
    points = backproject(token_depth.flatten(0, 1), scale_intrinsics(k, 1.0 / gen.vae.spatial_factor),
                         chunk.flatten(0, 1)).reshape(2, -1, 3)
    settled = observed_space(points, start.depth[:, 0], poses, k, margin=0.2, max_depth=gen.max_depth)
    settled = settled.reshape(2, 2, h, w)
    assert torch.equal(written[0.2], written[None] & ~settled)
    assert (written[None] & settled).any() and written[0.2].any()  # some withheld, some written
    # A partial reset replaces that scene's observation only.
    gen.start(images[:1], turned[:1], k, scenes=[1])
    assert torch.equal(gen._observed_poses[1], turned[0]) and torch.equal(gen._observed_poses[0], poses[0])
    with pytest.raises(ValueError, match="observed_margin"):
        make_generator(observed_margin=-1.0)
