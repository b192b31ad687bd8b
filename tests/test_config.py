"""Typed configs: one schema for every shipped config, errors that name the file and the key, the old
schema read with what to rename, and ``build_generator`` keeping every sampling setting."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mirage_gym.config import CONFIG_DIR, Config, build_generator, config_from_dict, load_config
from mirage_gym.geometry import intrinsics_from_fov

TESTS = Path(__file__).parent / "configs"
SHIPPED = sorted(CONFIG_DIR.glob("*.json")) + sorted(TESTS.glob("*.json"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_config_reads_in_the_one_schema(path):
    config = load_config(path)
    assert isinstance(config, Config) and config.name == path.stem
    assert set(json.loads(path.read_text())) <= {"name", "description", "model", "training"}
    assert config_from_dict(config.to_dict()) == config  # what checkpoints store reads back the same


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


def test_unknown_and_missing_keys_name_the_file_and_the_key(tmp_path):
    data = load_config("default").to_dict()
    data["model"]["sampling"]["steps"] = 3
    path = _write(tmp_path, data)
    with pytest.raises(ValueError, match=f"config file {path}: unknown key model.sampling.steps"):
        load_config(path)
    data = load_config("default").to_dict()
    del data["training"]["generator"]["lr"]
    with pytest.raises(ValueError, match=f"config file {path}: missing key training.generator.lr"):
        load_config(_write(tmp_path, data))
    data = load_config("default").to_dict()
    data["model"]["memory"]["capacity"] = "x"
    with pytest.raises(ValueError, match=f"{path}: model.memory.capacity must be int, got 'x'"):
        load_config(_write(tmp_path, data))
    data = load_config("default").to_dict()
    data["model"]["memory"]["interpolation"] = "cubic"
    with pytest.raises(ValueError, match=f"{path}: model.memory.interpolation must be one of"):
        load_config(_write(tmp_path, data))
    data = load_config("default").to_dict()
    data["model"]["memory"]["footprint"] = 0
    with pytest.raises(ValueError, match=f"{path}: model.memory.footprint must be an integer >= 1, got 0"):
        load_config(_write(tmp_path, data))
    data = load_config("default").to_dict()
    data["model"]["memory"]["anchor_depth"] = "yes"
    with pytest.raises(ValueError, match=f"{path}: model.memory.anchor_depth must be"):
        load_config(_write(tmp_path, data))
    data = load_config("default").to_dict()
    data["model"]["memory"]["filter_history"] = -2
    with pytest.raises(ValueError, match=f"{path}: model.memory.filter_history must be an integer >= 0, got -2"):
        load_config(_write(tmp_path, data))
    data = load_config("default").to_dict()
    data["training"]["data"]["train_room_seeds"] = [0, 2_000_000]
    with pytest.raises(ValueError, match="train_room_seeds must lie in"):
        load_config(_write(tmp_path, data))


def test_an_old_flat_config_reads_with_what_to_rename(tmp_path):
    old = {
        **{k: v for k, v in load_config("default").to_dict()["model"].items() if k not in ("chunk_frames", "lora")},
        "name": "default", "chunk": 4, "data": load_config("default").to_dict()["training"]["data"],
    }
    old["depth_head"] = {k: v for k, v in old["depth_head"].items() if k != "context_levels"}
    training = load_config("default").to_dict()["training"]
    old |= {"train_vae": training["vae"], "train_generator": training["generator"],
            "train_depth": {**training["depth"], "head": {"context_levels": 3}}}
    encoder = old["vae"].pop("encoder_block_out_channels")  # an old config missing a key says which
    with pytest.warns(FutureWarning, match="chunk -> model.chunk_frames"):
        with pytest.raises(ValueError, match="missing key model.vae.encoder_block_out_channels"):
            load_config(_write(tmp_path, old))
    old["vae"]["encoder_block_out_channels"] = encoder
    with pytest.warns(FutureWarning, match="train_depth.head -> model.depth_head"):
        migrated = load_config(_write(tmp_path, old))
    default = load_config("default")  # the old flat schema had no self-forcing section
    assert migrated == dataclasses.replace(default, description="",
                                           training=dataclasses.replace(default.training, self_forcing=None))


def test_build_generator_keeps_every_sampling_and_memory_setting():
    model = load_config("default").model
    generator = build_generator(model)
    assert generator.cache_guidance == model.sampling.cache_guidance == 1.0
    assert generator.num_inference_steps == model.sampling.num_inference_steps
    assert generator.scheduler.config.shift == model.sampling.shift
    assert (generator.voxel_size, generator.cache_capacity) == (model.memory.voxel_size, model.memory.capacity)
    assert generator.cache_interpolation == model.memory.interpolation
    assert generator.cache_footprint == model.memory.footprint
    assert generator.anchor_depth is model.memory.anchor_depth is True
    unanchored = dataclasses.replace(model, memory=dataclasses.replace(model.memory, anchor_depth=False))
    assert build_generator(unanchored).anchor_depth is False
    assert generator.filter_history == model.memory.filter_history == 8
    forgetting = dataclasses.replace(model, memory=dataclasses.replace(model.memory, filter_history=0))
    assert build_generator(forgetting).filter_history == 0
    bilinear = dataclasses.replace(model, memory=dataclasses.replace(model.memory, interpolation="bilinear"))
    generator = build_generator(bilinear)
    generator.start(torch.zeros(1, 128, 128, 3, dtype=torch.uint8), torch.eye(4)[None], intrinsics_from_fov(90.0, 128, 128))
    assert generator.memory_store.interpolation == "bilinear"
    assert generator.context_frames == model.context_frames
    assert generator.depth_head.config.context_levels == model.depth_head.context_levels
    with pytest.raises(ValueError, match="no 'vae' section"):
        build_generator(load_config("lora_default"))


def test_loading_the_default_model_prints_nothing():
    code = "from mirage_gym.envs import load_generator; load_generator('default')"
    result = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, timeout=300,
                            env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1]),
                                 "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == "", result.stdout + result.stderr
