"""`mirage-gym bench generator` / `bench env` and the provenance of results, on tiny sizes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mirage_gym.bench.env import bench_env, episode_memory
from mirage_gym.bench.generator import (
    ProcessMemory,
    bench_generator,
    build_random_generator,
    flatness,
    summarize_checkpoints,
)
from mirage_gym.cli import main
from mirage_gym.config import load_config
from mirage_gym.geometry import intrinsics_from_fov
from mirage_gym.model.generator import MirageGenerator
from mirage_gym.provenance import collect, results_folder, write_results
from mirage_gym.world import Renderer, make_scene, trajectories

TINY = Path(__file__).parent / "configs" / "tiny.json"


def test_random_generator_has_the_config_architecture():
    config = load_config(TINY)
    gen = build_random_generator(config)
    assert isinstance(gen, MirageGenerator)
    assert gen.vae.latent_channels == config.model.vae.latent_channels and gen.vae.spatial_factor == 8
    assert gen.transformer.config.num_layers == config.model.transformer.num_layers
    assert gen.num_inference_steps == config.model.sampling.num_inference_steps
    assert gen.cache_capacity == config.model.memory.capacity
    # The memory channels have weights, so the memory can change what a random model generates.
    emb = gen.transformer.patch_embedding
    assert emb.weight[:, emb.base_channels :].abs().sum() > 0


def test_bench_generator_records_every_chunk_of_every_mode():
    config = load_config(TINY)
    gen = build_random_generator(config)
    scene = make_scene(1_000_000)
    chunk, chunks = 2, 6
    poses = trajectories.random_walk(scene, np.random.default_rng(0), 1 + chunk * chunks)
    k = intrinsics_from_fov(90.0, 32, 32)
    start = Renderer(scene).render(poses[:1], k, 32, 32).rgb
    records = bench_generator(gen, poses, k, start, chunk, progress=False)
    assert gen.memory == "latent"  # restored
    for mode in ("latent", "pixel", "none"):
        rows = records[mode]
        assert [r["frames"] for r in rows] == [1 + chunk * (c + 1) for c in range(chunks)]
        assert all(r["seconds"] > 0 and r["cpu_seconds"] > 0 and r["denoise"] > 0 and r["rss_bytes"] > 0 for r in rows)
        assert records[f"{mode}/peak"]["peak_rss_bytes"] > 0
    pixel, latent = records["pixel"], records["latent"]
    assert all(r["render"] > 0 and r["encode"] > 0 for r in pixel) and all(r["render"] == 0 for r in latent)
    assert all(r["cache_read"] > 0 for r in latent)
    # The point cloud only grows (every valid pixel of every frame); no memory holds nothing.
    assert all(b["memory_bytes"] > a["memory_bytes"] for a, b in zip(pixel, pixel[1:], strict=False))
    assert all(r["memory_bytes"] == 0 for r in records["none"])
    assert 0 < latent[-1]["memory_bytes"] < pixel[-1]["memory_bytes"]

    rows = summarize_checkpoints(records, [5, 13], repeats=2)
    assert [r["frames"] for r in rows] == [5, 13] and rows[1]["frames_reached"] == 13
    assert rows[1]["memory_ratio"] == pytest.approx(pixel[-1]["memory_bytes"] / latent[-1]["memory_bytes"])
    assert rows[1]["time_ratio"] == pytest.approx(rows[1]["pixel_ms"] / rows[1]["latent_ms"])
    with pytest.raises(ValueError, match="whole chunks"):
        bench_generator(gen, poses[:4], k, start, chunk, progress=False)
    with pytest.raises(ValueError, match="modes"):
        bench_generator(gen, poses, k, start, chunk, modes=["cloud"], progress=False)


def test_flatness_compares_early_and_late_chunks():
    rows = [{"chunk": c + 1, "seconds": 0.1 if c < 20 else 0.2} for c in range(40)]
    f = flatness(rows, first=10, repeats=5)
    assert f["early_ms"] == pytest.approx(100.0) and f["late_ms"] == pytest.approx(200.0)
    assert f["change"] == pytest.approx(1.0) and f["to_chunk"] == 40
    assert flatness(rows[:12]) == {}


def test_bench_generator_command_writes_results_with_provenance(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["bench", "generator", "--config", str(TINY), "--chunks", "3", "--checkpoints", "3,7",
                 "--repeats", "1", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "RANDOM weights" in printed and "time px/lat" in printed
    data = json.loads((out / "bench_generator.json").read_text())
    assert data["config"]["weights"].startswith("RANDOM") and data["config"]["chunk"] == 2
    assert [r["frames"] for r in data["results"]["checkpoints"]] == [3, 7]
    assert data["provenance"]["git_commit"] is None or len(data["provenance"]["git_commit"]) == 40
    assert (out / "bench_time.png").stat().st_size > 0 and (out / "bench_memory.png").stat().st_size > 0


def test_bench_env_measures_single_and_batched_steps():
    rows = bench_env("oracle", [2], steps=1, warmup=0,
                     env_kwargs={"resolution": 32, "chunk": 2, "room_seeds": [1_000_000]})
    assert [(r["num_envs"], r["batched"]) for r in rows] == [(1, False), (2, True)]
    assert all(r["env_steps_per_s"] > 0 and r["frames_per_s"] == pytest.approx(2 * r["env_steps_per_s"])
               for r in rows)
    with pytest.raises(ValueError, match="num_envs"):
        bench_env("oracle", [0])


def test_process_memory_reads_this_process():
    memory = ProcessMemory(torch.device("cpu"))
    assert memory.rss() > 1e6
    memory.reset_peak()
    assert memory.peak()["peak_rss_bytes"] >= memory.rss() * 0.5


def test_provenance_names_the_code_and_machine(tmp_path):
    meta = collect(["mirage-gym", "bench", "generator", "--chunks", "3"])
    assert meta["command"] == "mirage-gym bench generator --chunks 3"
    assert meta["libraries"]["torch"] == torch.__version__ and meta["cpu_count"] >= 1
    assert meta["git_commit"] is None or len(meta["git_commit"]) == 40
    path = write_results(tmp_path / "r", "figures", {"x": math.nan, "y": [1.0, math.inf]}, config={"a": 1})
    data = json.loads(path.read_text())
    assert data["results"] == {"x": None, "y": [1.0, None]} and data["config"] == {"a": 1}
    assert (tmp_path / "r" / "provenance.json").is_file()


def test_provenance_rejects_bad_destinations_without_writing(tmp_path):
    (tmp_path / "file").write_text("keep me")
    with pytest.raises(ValueError, match="not a directory"):
        results_folder(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "keep me"
    with pytest.raises(ValueError, match="name"):
        write_results(tmp_path / "r", "../escape", {})
    assert not (tmp_path / "r").exists()
    with pytest.raises(TypeError):
        write_results(tmp_path / "s", "bad", {"x": object()})
    assert not (tmp_path / "s" / "bad.json").exists()


def test_episode_memory_reports_rss_and_memory_along_one_episode():
    rows = episode_memory("oracle", 50, env_kwargs={"resolution": 32, "chunk": 2})
    assert [r["step"] for r in rows] == [10, 50]
    assert all(r["rss_mib"] > 0 and r["memory_mib"] == 0.0 for r in rows)  # the oracle keeps no memory
    assert rows[-1]["coverage"] >= rows[0]["coverage"]


def test_wan22_5b_timing_model_builds_and_steps_in_bf16(monkeypatch):
    # The GPU benchmark's model (--arch wan2.2-5b) at toy widths on the CPU: the same layout
    # (48-channel latents, patchified 16x Wan2.2 VAE, widened transformer, UniPC flow sampler),
    # built, cast to bf16 and stepped, so the path a GPU run takes is exercised here too.
    from mirage_gym.bench import generator as bench_generator

    monkeypatch.setattr(bench_generator, "WAN22_5B_TRANSFORMER", {
        **bench_generator.WAN22_5B_TRANSFORMER,
        "num_attention_heads": 2, "attention_head_dim": 16, "text_dim": 32, "freq_dim": 16, "ffn_dim": 32, "num_layers": 1,
    })
    monkeypatch.setattr(bench_generator, "WAN22_VAE", {
        **bench_generator.WAN22_VAE, "base_dim": 8, "decoder_base_dim": 8, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1,
    })
    gen = bench_generator.build_wan22_5b_generator(device="cpu", num_inference_steps=2)
    assert gen.transformer.dtype == torch.bfloat16 and gen.latent_channels == 48
    images = torch.randint(0, 256, (1, 32, 32, 3), dtype=torch.uint8)
    pose = torch.eye(4)[None]
    gen.start(images, pose, intrinsics_from_fov(90.0, 32, 32))
    out = gen.step(pose[:, None].repeat(1, 5, 1, 1), torch.Generator().manual_seed(0))
    assert out.rgb.shape == (1, 5, 32, 32, 3) and out.latents.shape[1] == 48
    assert torch.isfinite(out.depth).all()


def test_bench_env_command_times_both_physics_side_by_side(tmp_path, capsys):
    from mirage_gym.cli import main

    out = tmp_path / "bench_env"
    assert main(["bench", "env", "--generator", "oracle", "--num-envs", "2", "--steps", "1", "--warmup", "0",
                 "--resolution", "32", "--chunk", "2", "--physics", "ground_truth", "generated", "--out", str(out)]) == 0
    rows = json.loads((out / "bench_env.json").read_text())["results"]["throughput"]
    assert [(r["physics"], r["num_envs"]) for r in rows] == [("ground_truth", 1), ("ground_truth", 2),
                                                             ("generated", 1), ("generated", 2)]
    assert "generated" in capsys.readouterr().out
