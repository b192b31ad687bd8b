"""LoRA training on tiny random Wan2.2 folders (5B- and A14B-shaped): runs, saves, loads, resumes, refuses bad input."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file

from mirage_gym.geometry import scale_intrinsics
from mirage_gym.memory import TokenFilter
from mirage_gym.model.depth_head import DepthHead
from mirage_gym.model.generator import MirageGenerator
from mirage_gym.model.pretrained import (
    LORA_WEIGHTS,
    LORA_WEIGHTS_2,
    MIRAGE_CONFIG,
    PATCH_EMBEDDING,
    add_lora,
    load_components,
    lora_parameters,
)
from mirage_gym.training import lora_stage
from mirage_gym.training.data import RoomStream
from mirage_gym.training.generator_stage import flow_matching_loss, make_chunk_batch
from mirage_gym.training.latent_clips import LatentClips
from mirage_gym.training.lora_stage import LoraRun, expert_flow_loss, load_lora_config, train_lora
from mirage_gym.config import Config
from mirage_gym.training import loop
from mirage_gym.training.loop import CHECKPOINT, RunOptions, load_tensors
from mirage_gym.training.video_clips import RawVideoClips, annotate_video_clips, encode_video_clips
from test_pretrained import flow, run_chunk, wan_folder

TINY = Path(__file__).parent / "configs" / "tiny_lora.json"


def with_model(config: Config, **changes) -> Config:
    """``config`` with some of its model (architecture) settings changed."""
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **changes))


@pytest.fixture(scope="module")
def config() -> Config:
    return load_lora_config(TINY)


@pytest.fixture(scope="module")
def wan_5b(tmp_path_factory) -> Path:
    return wan_folder(tmp_path_factory.mktemp("wan5b"), a14b=False)


@pytest.fixture(scope="module")
def wan_a14b(tmp_path_factory) -> Path:
    return wan_folder(tmp_path_factory.mktemp("wana14b"), a14b=True)


@pytest.fixture(scope="module")
def run_5b(tmp_path_factory, config, wan_5b) -> LoraRun:
    """float32 on CPU; 64x64 frames (the 5B VAE is 16x, its patches 2x2)."""
    return train_lora(with_model(config, resolution=64), wan_5b, tmp_path_factory.mktemp("lora5b"),
                      run=RunOptions(progress=False))


@pytest.fixture(scope="module")
def run_a14b(tmp_path_factory, config, wan_a14b) -> LoraRun:
    """The GPU recipe (bf16 base, fp32 trained weights, bf16 autocast) run on the CPU."""
    return train_lora(config, wan_a14b, tmp_path_factory.mktemp("loraa14b"), precision="bf16",
                      run=RunOptions(progress=False))


def _base_name(name: str) -> str:
    return name.replace(".base_layer", "")


# ---------------------------------------------------------------------- the run and its LoRA folder


def test_5b_run_saves_a_lora_that_loads_and_changes_the_model(run_5b, wan_5b):
    out = run_5b.folder.parent
    assert run_5b.folder == out / "lora"
    assert (out / CHECKPOINT).is_file() and list((out / "tb").glob("events.out.tfevents.*"))
    config = json.loads((run_5b.folder / MIRAGE_CONFIG).read_text())
    assert config["format"] == "mirage-lora" and config["base_model"] == str(wan_5b.resolve())
    assert config["context_frames"] == 1 and config["num_inference_steps"] == 2
    assert (run_5b.folder / LORA_WEIGHTS).is_file() and (run_5b.folder / PATCH_EMBEDDING).is_file()
    assert not (run_5b.folder / LORA_WEIGHTS_2).exists()

    loaded = MirageGenerator.from_pretrained(wan_5b, lora=run_5b.folder)
    assert torch.equal(run_chunk(loaded, 64), run_chunk(run_5b.generator, 64))
    base = MirageGenerator.from_pretrained(wan_5b)
    assert not torch.equal(flow(loaded.transformer, 48), flow(base.transformer, 48)), "the LoRA learned nothing"
    stats = run_5b.stats
    assert 0 < stats["params/trainable"] < stats["params/total"] and stats["val/loss"] > 0


def test_only_the_lora_and_the_new_input_channels_change_the_base(run_5b, wan_5b):
    fresh = load_components(wan_5b)  # widened, untrained
    trained = dict(run_5b.generator.transformer.named_parameters())
    base = dict(fresh.transformer.named_parameters())
    lora = {name for name in trained if ".lora_" in name}
    assert lora and all(trained[n].abs().sum() > 0 for n in lora if ".lora_B." in n), "every LoRA B matrix trained"
    for name, param in trained.items():
        if name in lora or name == "patch_embedding.weight":
            continue
        assert torch.equal(param, base[_base_name(name)]), f"{name} changed"
    c = run_5b.generator.transformer.patch_embedding.base_channels
    weight = trained["patch_embedding.weight"]
    assert torch.equal(weight[:, :c], base["patch_embedding.weight"][:, :c]), "the checkpoint's input channels changed"
    assert weight[:, c:].abs().sum() > 0, "the conditioning channels did not train"
    for name, param in run_5b.generator.vae.state_dict().items():
        assert torch.equal(param, fresh.vae.state_dict()[name]), f"the VAE's {name} changed"


def test_a14b_trains_both_experts_in_bf16_and_loads_identically(run_a14b, wan_a14b):
    gen = run_a14b.generator
    assert (run_a14b.folder / LORA_WEIGHTS).is_file() and (run_a14b.folder / LORA_WEIGHTS_2).is_file()
    for expert, file in ((gen.transformer, LORA_WEIGHTS), (gen.transformer_2, LORA_WEIGHTS_2)):
        saved = load_file(str(run_a14b.folder / file))
        assert all(v.dtype == torch.float32 for v in saved.values()), "trained weights are saved in float32"
        assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k), f"{file}: this expert never trained"
        # After training the in-memory generator is back in the base's dtype, with no autocast left on it.
        assert expert.dtype == torch.bfloat16 and "forward" not in vars(expert)
        assert expert.blocks[0].attn1.to_q.lora_A["mirage"].weight.dtype == torch.bfloat16
    loaded = MirageGenerator.from_pretrained(wan_a14b, lora=run_a14b.folder, torch_dtype=torch.bfloat16)
    assert torch.equal(run_chunk(loaded, 32), run_chunk(gen, 32))
    assert run_a14b.stats["params/trainable"] < run_a14b.stats["params/total"]


def test_resume_continues_the_step_count(tmp_path, run_a14b, wan_a14b, capsys):
    out = tmp_path / "run"
    shutil.copytree(run_a14b.folder.parent, out)
    depth_checkpoint = (out / "depth" / CHECKPOINT).read_bytes()
    annotated = (out / "clips" / "shard_00000.safetensors").stat().st_mtime_ns
    parser = argparse.ArgumentParser()
    lora_stage.add_arguments(parser)
    args = parser.parse_args(
        ["--config", str(TINY), "--base", str(wan_a14b), "--out", str(out), "--steps", "6", "--precision", "bf16",
         "--device", "cpu"]
    )
    assert args.config == str(TINY) and parser.parse_args(["--base", "x"]).config == "lora_default"
    assert lora_stage.run(args) == 0
    assert f"resumed {out} at step 4" in capsys.readouterr().out
    payload = torch.load(out / CHECKPOINT, weights_only=True)
    assert payload["train_state"]["step"] == 6 and payload["scheduler"]["last_epoch"] == 6
    # The finished depth head and the clips annotated with it were kept.
    assert (out / "depth" / CHECKPOINT).read_bytes() == depth_checkpoint
    assert (out / "clips" / "shard_00000.safetensors").stat().st_mtime_ns == annotated
    assert MirageGenerator.from_pretrained(wan_a14b, lora=out / "lora").transformer_2 is not None


# ---------------------------------------------------------------------- the loss


def wide_a14b_folder(path: Path) -> Path:
    """An A14B-shaped folder whose experts are wide enough (64) to fit a chunk: the overfitting test's base."""
    wan_folder(path, a14b=True)
    for index, name in enumerate(("transformer", "transformer_2")):
        torch.manual_seed(index)
        WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16, in_channels=16, out_channels=16,
            text_dim=16, freq_dim=16, ffn_dim=128, num_layers=2,
        ).save_pretrained(path / name)
    return path


def test_lora_loss_falls_when_overfitting(tmp_path, run_a14b):
    parts = load_components(wide_a14b_folder(tmp_path / "wide"))
    clips = LatentClips(run_a14b.folder.parent / "clips")
    gen = torch.Generator().manual_seed(2)
    latents, depth, keep, poses = clips.sample(2, gen)
    latent_k = scale_intrinsics(clips.intrinsics, 1 / 8)
    batch = make_chunk_batch(latents, depth, keep, poses, latent_k, context_frames=1, chunk=2, align=2, voxel_size=0.1,
                             cache_dropout=0.0, history_keep=(1.0, 1.0), context_noise=0.0, rng=gen)
    assert batch.mask.any(), "the chunk must be conditioned on a cache"
    transformer = parts.transformer
    add_lora(transformer, rank=16, ffn=True)
    params = lora_parameters(transformer)
    c = transformer.patch_embedding.base_channels
    sigmas, noise = torch.tensor([0.3, 0.7]), torch.randn(batch.target.shape, generator=gen)
    optimizer = torch.optim.Adam(params.values(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = expert_flow_loss([transformer], None, batch, latent_k, sigmas, noise, 1000)
        optimizer.zero_grad()
        loss.backward()
        transformer.patch_embedding.weight.grad[:, :c] = 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.4 * losses[0], f"loss did not fall: {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_each_noise_level_trains_the_expert_the_sampler_uses(run_a14b):
    gen = run_a14b.generator
    experts, boundary = [gen.transformer, gen.transformer_2], gen.boundary_ratio
    clips = LatentClips(run_a14b.folder.parent / "clips")
    g = torch.Generator().manual_seed(0)
    latents, depth, keep, poses = clips.sample(3, g)
    latent_k = scale_intrinsics(clips.intrinsics, 1 / 8)
    batch = make_chunk_batch(latents, depth, keep, poses, latent_k, context_frames=1, chunk=2, align=2, voxel_size=0.1,
                             cache_dropout=0.0, history_keep=(1.0, 1.0), context_noise=0.0, rng=g)
    noise = torch.randn(batch.target.shape, generator=g)
    sigmas = torch.tensor([0.95, boundary, 0.2])  # at the boundary the sampler uses the high-noise expert
    with torch.no_grad():
        mixed = expert_flow_loss(experts, boundary, batch, latent_k, sigmas, noise, 1000)
        high = flow_matching_loss(experts[0], lora_stage._subset(batch, torch.tensor([0, 1])), latent_k, sigmas[:2],
                                  noise[:2], 1000)
        low = flow_matching_loss(experts[1], lora_stage._subset(batch, torch.tensor([2])), latent_k, sigmas[2:],
                                 noise[2:], 1000)
        one_expert = flow_matching_loss(experts[0], batch, latent_k, sigmas, noise, 1000)
    assert torch.allclose(mixed, (2 * high + low) / 3)
    assert not torch.allclose(mixed, one_expert)


def test_chunks_start_at_whole_encoded_chunks(run_5b):
    clips = LatentClips(run_5b.folder.parent / "clips")
    latents, depth, keep, poses = clips.sample(1, torch.Generator().manual_seed(0))
    assert latents.shape[2] == 6  # 3 chunks of 2 latent frames
    starts = set()
    latent_k = scale_intrinsics(clips.intrinsics, 1 / 16)
    for seed in range(12):
        batch = make_chunk_batch(latents, depth, keep, poses, latent_k, context_frames=1, chunk=2, align=2,
                                 voxel_size=0.1, cache_dropout=0.0, history_keep=(1.0, 1.0), context_noise=0.0,
                                 rng=torch.Generator().manual_seed(seed))
        found = [s for s in range(1, 5) if torch.equal(batch.target, latents[:, :, s : s + 2])]
        assert len(found) == 1 and found[0] % 2 == 0, f"chunk at latent frame {found}"
        assert torch.equal(batch.context, latents[:, :, found[0] - 1 : found[0]])  # the previous chunk's last frame
        starts.add(found[0])
    assert starts == {2, 4}
    with pytest.raises(ValueError, match="align must be >= 1"):
        make_chunk_batch(latents, depth, keep, poses, torch.eye(3), context_frames=1, chunk=2, align=0, voxel_size=0.1,
                         cache_dropout=0.0, history_keep=(1.0, 1.0), context_noise=0.0, rng=torch.Generator())


# ---------------------------------------------------------------------- clips per latent frame


def test_clips_are_encoded_chunk_by_chunk_per_latent_frame(tmp_path, wan_a14b):
    vae = load_components(wan_a14b).vae

    def stream(index: int) -> RoomStream:
        return RoomStream(resolution=32, fov_deg=90.0, latent_factor=8, room_seeds=(0, 1000), pool_size=1,
                          moving_objects_prob=1.0, seed=index)

    encode_video_clips(tmp_path / "raw", stream, vae, num_clips=2, chunk_frames=5, chunks=2, clips_per_shard=2,
                       progress=False)
    raw = RawVideoClips(tmp_path / "raw")
    truth = stream(0).clips(2, 10)  # two chunks of 5 pixel frames
    assert raw.latents.shape == (2, 4, 16, 4, 4)
    for c in range(2):  # each chunk is encoded on its own; its latent frame j has pixel frame 4j's pose and depth
        frames = [5 * c, 5 * c + 4]
        expected = vae.encode(truth.rgb[:, 5 * c : 5 * c + 5]).transpose(1, 2)
        torch.testing.assert_close(raw.latents[:, 2 * c : 2 * c + 2].float(), expected, atol=2e-3, rtol=2e-3)
        assert torch.equal(raw.cam_to_world[:, 2 * c : 2 * c + 2], truth.cam_to_world[:, frames])
        assert torch.equal(raw.depth_token[:, 2 * c : 2 * c + 2], truth.token_depth[:, frames])

    head = DepthHead(latent_channels=16, spatial_factor=8, hidden_channels=8, num_blocks=1).eval()
    annotate_video_clips(tmp_path / "raw", tmp_path / "clips", stream, vae, head, chunk_frames=5, chunks=2,
                         progress=False)
    clips = LatentClips(tmp_path / "clips")
    assert torch.equal(clips.latents, raw.latents) and torch.equal(clips.cam_to_world, raw.cam_to_world)
    # As the sampler writes a chunk: pixel frame i has the depth of latent frame ceil(i/4), latent frame j the
    # filter's decision on pixel frame 4j.
    with torch.no_grad():
        out = head(raw.latents[0, 2:4].float())
    torch.testing.assert_close(clips.token_depth[0, 2:4].float(), out.token_depth, atol=1e-2, rtol=1e-3)
    rgb = ((truth.rgb[:1, 5:10].permute(0, 1, 3, 4, 2) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    pixel_depth = out.pixel_depth[[0, 1, 1, 1, 1]][None]
    keep = TokenFilter(stride=2)(rgb, pixel_depth, truth.cam_to_world[:1, 5:10], truth.intrinsics, latent_size=(4, 4))
    assert torch.equal(clips.keep[0, 2:4], keep[0, ::4])

    shutil.rmtree(tmp_path / "clips")
    with pytest.raises(RuntimeError, match="renders other clips"):
        annotate_video_clips(tmp_path / "raw", tmp_path / "clips", lambda i: stream(i + 7), vae, head, chunk_frames=5,
                             chunks=2, progress=False)
    with pytest.raises(ValueError, match="1 \\+ 4k frames, got 6"):
        encode_video_clips(tmp_path / "bad", stream, vae, num_clips=1, chunk_frames=6, chunks=2, progress=False)


# ---------------------------------------------------------------------- parameters and errors


def test_lora_parameters_are_the_adapter_and_the_input_layer(wan_5b):
    transformer = load_components(wan_5b).transformer
    with pytest.raises(ValueError, match="no 'mirage' LoRA adapter"):
        lora_parameters(transformer)
    add_lora(transformer, rank=2)
    extra = lora_parameters(transformer)
    assert "patch_embedding.weight" in extra and "patch_embedding.bias" not in extra
    assert all(".lora_A.mirage." in n or ".lora_B.mirage." in n for n in extra if n != "patch_embedding.weight")
    assert {n for n, p in transformer.named_parameters() if p.requires_grad} == set(extra)
    assert "patch_embedding.bias" in lora_parameters(transformer, patch_embedding="all")
    with pytest.raises(ValueError, match="patch_embedding must be 'extra' or 'all'"):
        lora_parameters(transformer, patch_embedding="base")


def test_a_base_that_is_not_wan22_is_refused_before_anything_is_written(tmp_path, config, run_5b):
    parser = argparse.ArgumentParser()
    lora_stage.add_arguments(parser)
    (tmp_path / "empty").mkdir()
    for base, kind in ((tmp_path / "nowhere", "missing"), (tmp_path / "empty", "without model_index.json"),
                       (run_5b.folder, "a Mirage folder, not its Wan2.2 base")):
        args = parser.parse_args(["--config", str(TINY), "--base", str(base), "--out", str(tmp_path / "out")])
        with pytest.raises(ValueError, match=f"base .* is not a Wan2.2 folder \\({kind}\\)"):
            lora_stage.run(args)
        assert not (tmp_path / "out").exists()


def test_bad_settings_and_a_foreign_run_folder_are_refused(tmp_path, config, wan_a14b, run_5b):
    with pytest.raises(ValueError, match="chunk_frames: a temporal VAE with factor 4 needs 1 \\+ 4k frames"):
        train_lora(with_model(config, chunk_frames=6), wan_a14b, tmp_path / "out", run=RunOptions(progress=False))
    with pytest.raises(ValueError, match="resolution 36 must be a multiple of 16"):
        train_lora(with_model(config, resolution=36), wan_a14b, tmp_path / "out", run=RunOptions(progress=False))
    with pytest.raises(ValueError, match="lora.rank must be a positive integer"):
        train_lora(config, wan_a14b, tmp_path / "out", rank=0, run=RunOptions(progress=False))
    with pytest.raises(ValueError, match="precision must be one of"):
        train_lora(config, wan_a14b, tmp_path / "out", precision="fp16", run=RunOptions(progress=False))
    assert not (tmp_path / "out").exists()
    # A run folder of another base keeps its clips and checkpoints: nothing is touched.
    out = run_5b.folder.parent
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="holds a LoRA run with other settings \\(base, resolution"):
        train_lora(config, wan_a14b, out, run=RunOptions(progress=False))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(ValueError, match="is not a LoRA config: it has no model.lora"):
        load_lora_config("default")  # the CPU model's config is not a LoRA config
    with pytest.raises(ValueError, match="lora_default"):
        load_lora_config("no-such-config")


class Killed(Exception):
    """Stands for a run killed right after a checkpoint."""


def test_a_resumed_lora_run_is_the_same_run(tmp_path, monkeypatch, config, run_5b, wan_5b):
    out = tmp_path / "run"
    save = loop.save_checkpoint

    def save_then_die(folder, state, *args, **kwargs):  # killed right after the LoRA phase's step-2 checkpoint
        save(folder, state, *args, **kwargs)
        if folder == out and state.step == 2:
            raise Killed

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train_lora(with_model(config, resolution=64), wan_5b, out, run=RunOptions(progress=False))
    monkeypatch.undo()
    train_lora(with_model(config, resolution=64), wan_5b, out, run=RunOptions(progress=False))
    whole = run_5b.folder.parent
    for folder in (CHECKPOINT, f"depth/{CHECKPOINT}"):
        first, second = load_tensors(whole / folder)["modules"], load_tensors(out / folder)["modules"]
        for module, state in first.items():
            for key, value in state.items():
                assert torch.equal(value, second[module][key]), f"{folder}: {module}.{key}"
