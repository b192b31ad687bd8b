"""`mirage-gym eval rl` / `eval transfer`: agreement statistics on constructed cases, the policies, bad input,
determinism, resuming a killed run and the --quick path through the CLI (oracle frames, short episodes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mirage_gym.cli import main
from mirage_gym.eval.agreement import agreement, mmrv, normalise_real, pearson, spearman
from mirage_gym.eval.policies import SCRIPTED, FrontierExplorer, GoalSeeker, PPOPolicy
from mirage_gym.eval.rl import (LOG, QUICK_POLICIES, RLEvalConfig, _normalised, dream_to_real, evaluate_policies,
                                load_policies, transfer_table)

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- agreement on constructed cases


def test_identical_rankings_give_rho_one_and_mmrv_zero():
    real = [0.1, 0.4, 0.5, 0.9]
    sim = [0.2, 0.3, 0.7, 0.8]  # other values, same order
    assert spearman(sim, real) == pytest.approx(1.0)
    assert mmrv(sim, real) == 0.0
    assert pearson(real, real) == pytest.approx(1.0)


def test_reversed_ranking_gives_rho_minus_one_and_a_positive_mmrv():
    real = np.array([0.0, 0.5, 1.0])
    sim = real[::-1]
    assert spearman(sim, real) == pytest.approx(-1.0)
    assert pearson(sim, real) == pytest.approx(-1.0)
    # Every pair is violated: each policy's worst gap is 1, 0.5, 1.
    assert mmrv(sim, real) == pytest.approx((1.0 + 0.5 + 1.0) / 3)


def test_mmrv_counts_the_real_gap_of_one_swapped_pair():
    real = [0.1, 0.2, 0.9]
    sim = [0.2, 0.1, 0.9]  # the two close policies swap
    assert mmrv(sim, real) == pytest.approx((0.1 + 0.1 + 0.0) / 3)


def test_returns_are_min_max_normalised_for_mmrv_fractions_are_not():
    assert normalise_real([2.0, 4.0, 6.0], "return") == pytest.approx([0.0, 0.5, 1.0])
    assert normalise_real([0.2, 0.4, 0.6], "coverage") == pytest.approx([0.2, 0.4, 0.6])
    assert normalise_real([2.0, 4.0, 6.0], "explored_m2") == pytest.approx([0.0, 0.5, 1.0])  # m^2, not a fraction
    # A reversed ranking of returns then costs the same MMRV whatever the return's scale.
    episodes = [[1.0, 1.0], [5.0, 5.0], [9.0, 9.0]]
    scaled = [[10 * v for v in e] for e in episodes]
    a = agreement(episodes[::-1], episodes, "return", n_boot=0)
    b = agreement(scaled[::-1], scaled, "return", n_boot=0)
    assert a["mmrv"]["value"] == pytest.approx(b["mmrv"]["value"]) == pytest.approx(5 / 6)


def test_agreement_bootstrap_is_seeded_and_brackets_the_point_value():
    rng = np.random.default_rng(0)
    real = [rng.normal(m, 0.3, 10) for m in (0, 1, 2, 3)]
    sim = [r + rng.normal(0, 0.1, 10) for r in real]
    first = agreement(sim, real, "return", n_boot=200, seed=3)
    second = agreement(sim, real, "return", n_boot=200, seed=3)
    assert first == second
    for key in ("spearman", "pearson", "mmrv"):
        lo, hi = first[key]["ci"]
        assert lo <= hi
    assert first["spearman"]["value"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 3 policies"):
        agreement(sim[:2], real[:2])
    with pytest.raises(ValueError, match="paired"):
        agreement([[1.0], [2.0], [3.0]], [[1.0], [2.0], [3.0, 4.0]])


# --------------------------------------------------------------------------- policies


def _env(env_id="MirageRoom-v0", **kwargs):
    import gymnasium as gym

    import mirage_gym  # noqa: F401

    return gym.make(env_id, generator="oracle", resolution=32, max_episode_steps=12, **kwargs)


@pytest.mark.parametrize("name", sorted(set(SCRIPTED) - {"goal_seeker"}))
def test_scripted_policies_act_in_the_action_space_and_repeat_given_the_seed(name):
    env = _env()
    runs = []
    for _ in range(2):
        policy = SCRIPTED[name]()
        policy.check(env.observation_space, env.action_space, "MirageRoom-v0")
        policy.reset(7)
        obs, _ = env.reset(seed=7, options={"room_seed": 1_000_003})
        actions = []
        for _ in range(12):
            action = policy.act(obs)
            assert env.action_space.contains(np.asarray(action, np.float32))
            actions.append(np.asarray(action))
            obs, *_ = env.step(action)
        runs.append(np.stack(actions))
    np.testing.assert_array_equal(runs[0], runs[1])
    env.close()


def test_frontier_explorer_maps_floor_and_obstacles_and_moves():
    env = _env()
    policy = FrontierExplorer()
    policy.check(env.observation_space, env.action_space, "MirageRoom-v0")
    policy.reset(0)
    obs, _ = env.reset(seed=0, options={"room_seed": 1_000_001})
    start = obs["cam_to_world"][-1, :2, 3].copy()
    for _ in range(12):
        obs, *_ = env.step(policy.act(obs))
    assert (policy._state == 1).sum() > 20 and (policy._state == 2).sum() > 0
    assert np.linalg.norm(obs["cam_to_world"][-1, :2, 3] - start) > 0.2
    env.close()


def test_goal_seeker_needs_a_goal_and_runs_on_nav():
    room = _env()
    with pytest.raises(ValueError, match="goal"):
        GoalSeeker().check(room.observation_space, room.action_space, "MirageRoom-v0")
    nav = _env("MirageRoomNav-v0")
    policy = GoalSeeker()
    policy.check(nav.observation_space, nav.action_space, "MirageRoomNav-v0")
    policy.reset(0)
    obs, info = nav.reset(seed=0, options={"room_seed": 1_000_002})
    first = info["distance_to_goal"]
    for _ in range(10):
        obs, _, terminated, truncated, info = nav.step(policy.act(obs))
        if terminated or truncated:
            break
    assert info["distance_to_goal"] < first
    room.close()
    nav.close()


def _ppo_zip(path: Path, resolution: int) -> Path:
    from stable_baselines3 import PPO

    from mirage_gym.sb3 import MirageVecEnv
    from mirage_gym.wrappers import ImageObservation

    import gymnasium as gym

    vector = gym.make_vec("MirageRoom-v0", num_envs=1, vectorization_mode="vector_entry_point", generator="oracle",
                          resolution=resolution)
    venv = MirageVecEnv(vector, ImageObservation(vector.single_observation_space, frames=2, depth=True))
    PPO("MultiInputPolicy", venv, n_steps=8, batch_size=8, seed=0).save(path)
    venv.close()
    return path


# --------------------------------------------------------------------------- bad input, before anything runs


def test_bad_input_is_a_clear_error_before_anything_runs(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        load_policies(["random", "nope"], "MirageRoom-v0")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_policies([str(tmp_path / "missing.zip")], "MirageRoom-v0")
    with pytest.raises(ValueError, match="unique"):
        load_policies(["random", "random", "frontier"], "MirageRoom-v0")
    with pytest.raises(ValueError, match="at least 3 policies"):
        evaluate_policies(load_policies(["random", "frontier"], "MirageRoom-v0"), RLEvalConfig.quick(), out)
    with pytest.raises(ValueError, match="not held out"):
        evaluate_policies(load_policies(QUICK_POLICIES, "MirageRoom-v0"), RLEvalConfig.quick(first_room=5), out)
    assert not (out / LOG).exists()
    # The same through the command line: exit status 2 and the reason.
    for argv, reason in ((["--policies", "random", "frontier"], "at least 3 policies"),
                         (["--policies", "random", "frontier", str(tmp_path / "x.zip")], "does not exist"),
                         (["--policies", "random", "frontier", "walk"], "unknown policy")):
        code = main(["eval", "rl", "--quick", "--out", str(out), *argv])
        assert code == 2
    assert not (out / LOG).exists()


def test_a_policy_for_another_observation_space_is_refused(tmp_path):
    zip48 = _ppo_zip(tmp_path / "ppo48.zip", resolution=48)
    out = tmp_path / "out"
    policies = load_policies(["random", "frontier", f"small={zip48}"], "MirageRoom-v0")
    with pytest.raises(ValueError, match="another observation space"):
        evaluate_policies(policies, RLEvalConfig.quick(resolution=64), out)
    assert not (out / LOG).exists()
    # At the resolution it was made for, it runs (deterministic actions through the image wrapper).
    result = evaluate_policies(policies, RLEvalConfig.quick(resolution=48, episodes=1, max_episode_steps=3), out,
                               progress=None)
    assert result["per_policy"]["small"]["world"]["return"]["episodes"] == \
        result["per_policy"]["small"]["truth"]["return"]["episodes"]
    assert result["per_policy"]["small"]["describe"]["sha256"] == PPOPolicy(zip48).sha256


def test_policies_see_frames_resized_from_the_envs_size(tmp_path):
    # The envs make 64x64 frames; a policy built for 48x48 runs on them resized (ResizeFrames), and the
    # run is another than the one with the envs at 48x48.
    zip48 = _ppo_zip(tmp_path / "ppo48.zip", resolution=48)
    policies = load_policies(["random", "frontier", f"small={zip48}"], "MirageRoom-v0")
    config = RLEvalConfig.quick(resolution=48, env_resolution=64, episodes=1, max_episode_steps=3)
    result = evaluate_policies(policies, config, tmp_path / "resized", progress=None)
    assert len(result["per_policy"]["small"]["world"]["return"]["episodes"]) == 1
    assert config.fingerprint() != RLEvalConfig.quick(resolution=48, episodes=1, max_episode_steps=3).fingerprint()
    with pytest.raises(ValueError, match="env_resolution"):
        evaluate_policies(policies, RLEvalConfig.quick(resolution=64, env_resolution=48), tmp_path / "bad")
    assert not (tmp_path / "bad" / LOG).exists()


# --------------------------------------------------------------------------- determinism and resuming


def _quick(out, **overrides):
    config = RLEvalConfig.quick(**{"resolution": 32, **overrides})
    return evaluate_policies(load_policies(QUICK_POLICIES, config.env_id), config, out, progress=None)


def test_same_seeds_give_the_same_table(tmp_path):
    first = _quick(tmp_path / "a")
    second = _quick(tmp_path / "b")
    assert first["table"] == second["table"]
    assert first["episodes_timed"] == 3 * 2 * 2 and all(v > 0 for v in first["episode_seconds"].values())
    assert first["per_policy"] == second["per_policy"]
    other = _quick(tmp_path / "c", seed=2000)
    assert other["per_policy"] != first["per_policy"]


def test_rerun_with_other_settings_in_the_same_folder_is_refused(tmp_path):
    _quick(tmp_path / "a", episodes=1)
    with pytest.raises(ValueError, match="other settings"):
        _quick(tmp_path / "a", episodes=1, seed=5)
    # More episodes of the same settings extend the run.
    result = _quick(tmp_path / "a", episodes=2)
    assert len((tmp_path / "a" / LOG).read_text().splitlines()) == 3 * 2 * 2
    assert len(result["per_policy"]["random"]["truth"]["return"]["episodes"]) == 2


def test_a_new_build_of_the_same_model_name_is_another_run(tmp_path):
    # "default" names whatever weights ship: the run records the model files' SHA-256, so episodes of an
    # earlier build are never mixed with a new one's.
    from tiny_generator import save_tiny_generator

    folder = save_tiny_generator(tmp_path / "model")
    config = RLEvalConfig.quick(world_generator=str(folder))
    before = config.fingerprint()
    assert before == RLEvalConfig.quick(world_generator=str(folder)).fingerprint()
    assert before["models"]["truth"] == {} and before["models"]["world"]
    weights = next(folder.rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    after = config.fingerprint()
    assert after["models"]["world"] != before["models"]["world"] and after["sides"] == before["sides"]


def test_a_killed_run_continues_where_it_stopped(tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "mirage_gym.cli", "eval", "rl", "--quick", "--resolution", "32", "--out", str(out),
            "--threads", "1"]
    env = {**os.environ, "MIRAGE_RL_KILL_AFTER": "5", "PYTHONPATH": str(ROOT)}
    killed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    lines = (out / LOG).read_text().splitlines()
    assert len(lines) == 5
    with open(out / LOG, "a") as handle:
        handle.write('{"policy": "random", "side": "wor')  # a torn write at the moment of the kill
    env.pop("MIRAGE_RL_KILL_AFTER")
    resumed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ran = [line for line in resumed.stdout.splitlines() if " episode " in line]
    assert len(ran) == 3 * 2 * 2 - 5  # only the unfinished episodes ran
    records = [json.loads(line) for line in (out / LOG).read_text().splitlines()]
    keys = [(r["policy"], r["side"], r["episode"]) for r in records]
    assert len(keys) == len(set(keys)) == 12
    # The same numbers as an uninterrupted run.
    assert (out / "rl_table.md").read_text().strip() == _quick(tmp_path / "fresh")["table"]


def test_a_ppo_policy_is_known_by_its_bytes_not_its_path(tmp_path):
    import shutil

    import torch

    first = _ppo_zip(tmp_path / "a" / "ppo.zip", resolution=48)
    moved = tmp_path / "elsewhere" / "ppo.zip"  # a fresh checkout, another folder: the same policy
    moved.parent.mkdir()
    shutil.copyfile(first, moved)
    config = RLEvalConfig.quick(resolution=48, episodes=1, max_episode_steps=2)
    out = tmp_path / "out"
    evaluate_policies(load_policies(["random", "frontier", f"ppo={first}"], config.env_id), config, out, progress=None)
    more = RLEvalConfig.quick(resolution=48, episodes=2, max_episode_steps=2)
    evaluate_policies(load_policies(["random", "frontier", f"ppo={moved}"], more.env_id), more, out, progress=None)
    assert len((out / LOG).read_text().splitlines()) == 3 * 2 * 2
    from stable_baselines3 import PPO

    model = PPO.load(first)
    with torch.no_grad():  # other weights under the same name
        next(model.policy.parameters()).add_(1.0)
    other = tmp_path / "b" / "ppo.zip"
    model.save(other)
    with pytest.raises(ValueError, match="another policy named 'ppo'"):
        evaluate_policies(load_policies(["random", "frontier", f"ppo={other}"], more.env_id), more, out, progress=None)


# --------------------------------------------------------------------------- the command line


def test_quick_path_end_to_end_through_the_cli(tmp_path, capsys):
    out = tmp_path / "rl"
    assert main(["eval", "rl", "--quick", "--out", str(out), "--threads", "1"]) == 0
    data = json.loads((out / "rl.json").read_text())
    assert data["provenance"]["command"] and "git_commit" in data["provenance"]
    results = data["results"]
    assert results["policies"] == list(QUICK_POLICIES)
    assert results["config"]["resolution"] == 64 and results["config"]["world_generator"] == "oracle"
    for metric in ("return", "coverage"):  # oracle vs oracle: the same world, the same ranking
        assert results["agreement"][metric]["spearman"]["value"] == pytest.approx(1.0)
        assert results["agreement"][metric]["mmrv"]["value"] == 0.0
    assert (out / "rl_scatter.png").stat().st_size > 1000
    table = (out / "rl_table.md").read_text()
    assert "| random |" in table and "Spearman rho" in table
    assert results["exploration_metric"] == "coverage" and "Exploration compared on `coverage`" in table
    assert "MMRV" in capsys.readouterr().out


def test_exploration_metric_follows_the_physics():
    assert RLEvalConfig().exploration_metric() == "coverage"
    assert RLEvalConfig(world_kwargs={"physics": "ground_truth"}).exploration_metric() == "coverage"
    assert RLEvalConfig(world_kwargs={"physics": "generated"}).exploration_metric() == "explored_m2"
    assert RLEvalConfig(truth_kwargs={"physics": "generated"}, sides=("truth",)).exploration_metric() == "explored_m2"
    assert RLEvalConfig(world_kwargs={"physics": "generated"}, sides=("truth",)).exploration_metric() == "coverage"


def test_a_log_from_before_explored_m2_still_summarises_on_coverage():
    from mirage_gym.eval.rl import summarise

    policies = load_policies(QUICK_POLICIES, "MirageRoom-v0")
    records = [{"policy": p.name, "side": side, "episode": k, "return": float(i + k), "coverage": 0.1 * (i + 1),
                "collisions": 0, "length": 8, "success": None}
               for i, p in enumerate(policies) for side in ("truth", "world") for k in range(2)]
    config = RLEvalConfig.quick()
    result = summarise(records, policies, config)
    assert set(result["agreement"]) == {"return", "coverage"} and "explored_m2" not in result["table"]
    assert result["agreement"]["coverage"]["spearman"]["value"] == pytest.approx(1.0)
    with pytest.raises(RuntimeError, match="no 'explored_m2'.*new --out"):
        summarise(records, policies, RLEvalConfig.quick(world_kwargs={"physics": "generated"}))


def test_quick_path_with_generated_physics_compares_explored_m2(tmp_path, capsys):
    """The world-model env runs generated physics (coverage inf there): exploration is compared on
    explored_m2, which both envs report, and the JSON and the table say so."""
    out = tmp_path / "rl"
    argv = ["eval", "rl", "--quick", "--out", str(out), "--threads", "1", "--resolution", "32",
            "--world-option", "physics=generated"]
    assert main(argv) == 0
    results = json.loads((out / "rl.json").read_text())["results"]
    assert results["config"]["world_kwargs"] == {"physics": "generated"}
    assert results["exploration_metric"] == "explored_m2"
    assert set(results["agreement"]) == {"return", "explored_m2"}
    for name in QUICK_POLICIES:
        world, truth = results["per_policy"][name]["world"], results["per_policy"][name]["truth"]
        assert world["coverage"]["mean"] is None and world["coverage"]["episodes"] == [None, None]
        assert 0 < truth["coverage"]["mean"] <= 1
        assert world["explored_m2"]["mean"] > 0 and truth["explored_m2"]["mean"] > 0
    records = [json.loads(line) for line in (out / LOG).read_text().splitlines()]
    assert {r["coverage"] is None for r in records if r["side"] == "world"} == {True}
    table = (out / "rl_table.md").read_text()
    assert "Exploration compared on `explored_m2`" in table and "| explored_m2 |" in table
    assert "| coverage |" not in table  # not an agreement row: coverage is not compared
    assert (out / "rl_scatter.png").stat().st_size > 1000
    assert "explored_m2" in capsys.readouterr().out


def test_zoo_manifests_name_at_least_eight_policies_and_their_recipe():
    for env_id in ("MirageRoom-v0", "MirageRoomNav-v0"):
        zoo = json.loads((ROOT / "agents" / "zoo" / f"{env_id}.json").read_text())
        assert zoo["env"] == env_id and len(zoo["policies"]) >= 8
        for entry in zoo["policies"]:
            assert entry.get("scripted") in SCRIPTED or ("ppo" in entry and "build.py" in entry["recipe"])
    # A missing PPO file is an error that gives the recipe, before anything runs.
    if not (ROOT / "agents" / "zoo" / "ppo" / "MirageRoom-v0" / "oracle_10000.zip").exists():
        with pytest.raises(FileNotFoundError, match="build it with: python agents/zoo/build.py"):
            load_policies([str(ROOT / "agents" / "zoo" / "MirageRoom-v0.json")], "MirageRoom-v0")


def test_zoo_build_skips_runs_whose_zips_are_there(tmp_path):
    # The zoo is versioned, its training runs are not: a fresh machine must not retrain the oracle run.
    dest = tmp_path / "ppo"
    dest.mkdir()
    for steps in (10_000, 40_000, 100_000):
        (dest / f"oracle_{steps}.zip").write_bytes(b"zip")
    cmd = [sys.executable, str(ROOT / "agents" / "zoo" / "build.py"), "--dest", str(dest), "--dry-run"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].startswith("skipped oracle") and "--generator default" in out[1] and len(out) == 2
    out = subprocess.run([*cmd, "--rebuild"], capture_output=True, text=True, check=True).stdout.splitlines()
    assert "--generator oracle" in out[0] and "--generator default" in out[1]


def test_normalised_transfer_score_is_undefined_unless_the_truth_ppo_beats_random():
    random, truth = np.array([1.0, 3.0]), np.array([5.0, 7.0])
    assert _normalised(random, np.array([4.0, 4.0]), truth) == pytest.approx(0.5)
    assert _normalised(random, truth, truth) == pytest.approx(1.0)
    # A ground-truth PPO below random would turn a dream policy worse than both into a score above 1.
    assert np.isnan(_normalised(truth, np.array([0.0, 0.0]), random))
    assert np.isnan(_normalised(random, truth, random))  # a tie
    entry = {"value": float("nan"), "ci": [None, None], "undefined_resamples": 1.0, "random": 6.0, "dream": 0.0,
             "truth": 2.0}
    table = transfer_table({"env_id": "MirageRoomNav-v0", "timesteps": 10, "generator": "default",
                            "normalised": {"return": entry}})
    assert "| return | 6.000 | 2.000 | 0.000 | n/a [n/a, n/a] |" in table
    assert "does not beat random" in table and "Undefined in: return (100% of resamples)" in table


def test_dream_to_real_on_a_tiny_budget(tmp_path, monkeypatch):
    """Both trainings through agents/train_ppo.py (oracle as the 'world model' here), then the normalised score."""
    train = ["--num-envs", "2", "--n-steps", "8", "--batch-size", "16", "--resolution", "48", "--eval-freq",
             "1000000", "--checkpoint-freq", "16"]
    monkeypatch.chdir(tmp_path)  # a relative results folder, as a user types it (the script itself runs in agents/)
    result = dream_to_real("MirageRoom-v0", "d2r", generator="oracle", timesteps=32, episodes=2,
                           max_episode_steps=4, train_args=train, n_boot=50, threads=1, progress=None)
    assert set(result["normalised"]) == {"return", "coverage"}
    for role in ("dream", "truth"):
        assert Path(result["models"][role]).is_file()
        assert (tmp_path / "d2r" / "train" / role).is_dir()
    # Same generator, seed and budget: the two runs are the same policy, so the normalised score is 1 (or
    # undefined when that PPO ties random).
    for entry in result["normalised"].values():
        assert entry["dream"] == pytest.approx(entry["truth"])
        assert entry["value"] is None or not np.isfinite(entry["value"]) or entry["value"] == pytest.approx(1.0)
    assert "normalised" in result["table"]
    # Rerun: nothing trains again, nothing is evaluated again.
    again = dream_to_real("MirageRoom-v0", "d2r", generator="oracle", timesteps=32, episodes=2,
                          max_episode_steps=4, train_args=train, n_boot=50, threads=1, progress=None)
    assert json.dumps(again["normalised"]) == json.dumps(result["normalised"])  # NaN where undefined


def test_dream_to_real_world_options_reach_the_dream_run_only(tmp_path):
    """physics=generated is the world model's: the dream run trains under it, the truth run and the scoring do not."""
    train = ["--num-envs", "2", "--n-steps", "8", "--batch-size", "16", "--resolution", "48", "--eval-freq",
             "1000000", "--checkpoint-freq", "16"]
    result = dream_to_real("MirageRoom-v0", tmp_path / "d2r", generator="oracle", timesteps=16, episodes=2,
                           max_episode_steps=4, train_args=train, world_kwargs={"physics": "generated"}, n_boot=20,
                           threads=1, progress=None)
    dream, truth = Path(result["models"]["dream"]), Path(result["models"]["truth"])
    assert dream.parent.name == "MirageRoom-v0_oracle_seed0_physics-generated" and dream.is_file()
    assert truth.parent.name == "MirageRoom-v0_oracle_seed0" and truth.is_file()
    settings = {role: json.loads((path.parent / "settings.json").read_text()) for role, path in
                (("dream", dream), ("truth", truth))}
    assert settings["dream"]["env_kwargs"]["physics"] == "generated"
    assert "physics" not in settings["truth"]["env_kwargs"]
    assert result["exploration_metric"] == "coverage"  # scored in the house, under the house's physics
    assert "physics=generated" in result["table"]
