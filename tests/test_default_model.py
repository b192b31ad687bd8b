"""The shipped default model: it is in the package, loads by name, runs MirageRoom-v0, and a damaged copy is named."""

from __future__ import annotations

import json
import shutil

import gymnasium as gym
import numpy as np
import pytest

import mirage_gym  # noqa: F401  (registers the envs)
from mirage_gym.config import load_config
from mirage_gym.envs import generators
from mirage_gym.model.generator import MirageGenerator

FOLDER = generators.default_weights_path()


def test_default_weights_ship_small_and_match_the_default_config():
    files = [p for p in FOLDER.rglob("*") if p.suffix in (".safetensors", ".json")]
    assert sum(p.stat().st_size for p in files) < 50 * 2**20  # the issue's budget for shipped weights
    gen = generators.load_generator("default")
    assert isinstance(gen, MirageGenerator)
    model = load_config("default").model
    assert gen.num_inference_steps == model.sampling.num_inference_steps
    assert gen.context_frames == model.context_frames
    assert gen.cache_guidance == model.sampling.cache_guidance
    assert gen.transformer.config.num_layers == model.transformer.num_layers
    assert gen.vae.latent_channels == model.vae.latent_channels
    assert gen.depth_head.config.hidden_channels == model.depth_head.hidden_channels
    assert gen.filter_history == model.memory.filter_history
    assert gen.cache_footprint == model.memory.footprint and gen.anchor_depth is model.memory.anchor_depth


def test_make_runs_the_default_model():
    env = gym.make("MirageRoom-v0")  # generator="default" is what users meet first
    obs, _ = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(np.array([0.0, 0.0, 1.0, 0.0], np.float32))
    assert obs["rgb"].shape == (4, 128, 128, 3) and obs["rgb"].dtype == np.uint8
    assert np.isfinite(obs["depth"]).all() and (obs["depth"] > 0).all()
    assert info["memory_bytes"] > 0 and info["frames_generated"] == 4  # the start view is given, not generated
    env.close()


def test_corrupt_default_weights_are_named(tmp_path, monkeypatch):
    copy = shutil.copytree(FOLDER, tmp_path / "default", ignore=shutil.ignore_patterns("*.pt"))
    weights = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: 1000])  # a truncated download or disk error
    monkeypatch.setattr(generators, "default_weights_path", lambda: copy)
    with pytest.raises(Exception, match="transformer"):
        generators.load_generator("default")
    config = json.loads((copy / "mirage_config.json").read_text())
    assert config["format"] == "mirage"  # the rest of the folder is untouched


def test_default_autoencoder_keeps_colour():
    # PSNR and SSIM are luminance-dominated: the first shipped model scored well on them with grey frames.
    from mirage_gym.training.vae_stage import evaluate_stage1

    held_out = evaluate_stage1(load_config("default"), FOLDER, frames=8)  # the folder is a stage-1 export too
    assert held_out["chroma_ratio"] > 0.6


# ---------------------------------------------------------------------- regression guard of the autoencoder

GUARD_FRAMES = 32  # held-out frames (the first 32 of `mirage-gym eval`'s 256): a fixed set, seconds to score
# Issue 16's "must reach" lines for the shipped autoencoder (its model card reports them on 256 frames).
MUST_REACH = {"psnr": 26.0, "psnr_worst_decile": 22.0, "ssim": 0.85, "detail_ratio": 0.7}
# What the shipped weights score on these frames today (31.42 dB, 27.40 dB, 0.936, 1.04), less a margin:
# a change that makes the shipped autoencoder worse than it is fails here.
CURRENT = {"psnr": 30.0, "psnr_worst_decile": 25.0, "ssim": 0.90, "detail_ratio": 0.90}


@pytest.fixture(scope="module")
def held_out_reconstruction():
    from mirage_gym.training.vae_stage import evaluate_stage1

    return evaluate_stage1(load_config("default"), FOLDER, frames=GUARD_FRAMES)


@pytest.mark.parametrize("figure", list(MUST_REACH))
def test_shipped_autoencoder_reaches_the_issue_16_lines(held_out_reconstruction, figure):
    assert held_out_reconstruction[figure] >= MUST_REACH[figure], (figure, held_out_reconstruction[figure])


@pytest.mark.parametrize("figure", list(CURRENT))
def test_shipped_autoencoder_does_not_regress(held_out_reconstruction, figure):
    assert held_out_reconstruction[figure] >= CURRENT[figure], (figure, held_out_reconstruction[figure])


def test_shipped_depth_head_is_the_wide_one_and_does_not_regress(held_out_reconstruction):
    # The shipped head comes from `mirage-gym train depth` (96 channels, context path, encoded and generated
    # latents): token abs-rel 0.210 on these 32 frames (0.181 on 256). The 64-channel head it replaced scores
    # 0.223 here, so a return to it, or any head as poor, fails.
    head = generators.load_generator("default").depth_head
    assert head.config.context_levels > 0 and head.config.hidden_channels == 96
    assert held_out_reconstruction["depth_abs_rel_token"] < 0.215, held_out_reconstruction["depth_abs_rel_token"]
