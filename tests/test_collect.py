"""Dataset collection: Minari round trip, slot- and backend-independent episodes, kill-and-resume, bad input.

Oracle generator at 32x32, chunks of 2 and 3-step episodes in two fixed rooms (their renderers
are cached per process), so every collection takes a second or two.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import imageio.v3 as iio
import minari
import numpy as np
import pytest

import mirage_gym
from mirage_gym import cli
from mirage_gym.data import CollectionError, collect, minari_writer
from mirage_gym.envs import MirageRoomEnv

ROOT = Path(__file__).resolve().parent.parent
ENV_KWARGS = {"generator": "oracle", "resolution": 32, "chunk": 2, "room_seeds": [0, 1]}
STEPS = 3
EPISODES = 5
QUIET = {"progress": False, "previews": False}


def run_collect(out: Path, dataset_id: str, **overrides):
    kwargs = {"episodes": EPISODES, "num_envs": 3, "env_kwargs": ENV_KWARGS, "max_episode_steps": STEPS,
              "out": out, **QUIET, **overrides}
    return collect(dataset_id, **kwargs)


def episodes_of(path: Path) -> list:
    return list(minari.MinariDataset(path / "data").iterate_episodes())


def assert_same_episodes(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.id == y.id
        for key in x.observations:
            np.testing.assert_array_equal(x.observations[key], y.observations[key], err_msg=f"episode {x.id} {key}")
        for field in ("actions", "rewards", "terminations", "truncations"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field), err_msg=f"episode {x.id} {field}")
        assert x.infos.keys() == y.infos.keys()
        for key in x.infos:
            np.testing.assert_array_equal(x.infos[key], y.infos[key], err_msg=f"episode {x.id} info {key}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list:
    """An uninterrupted local collection (3 sub-envs) that every other way of collecting must reproduce."""
    result = run_collect(tmp_path_factory.mktemp("reference"), "mirage/reference-v0")
    return episodes_of(result.path)


def test_round_trip_through_minari_load_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))  # the default --out is Minari's own folder
    result = collect("mirage/roundtrip-v0", episodes=3, num_envs=2, env_kwargs=ENV_KWARGS, max_episode_steps=STEPS,
                     seed=7, progress=False)
    assert "mirage/roundtrip-v0" in minari.list_local_datasets()
    dataset = minari.load_dataset("mirage/roundtrip-v0")
    assert dataset.total_episodes == 3 and dataset.total_steps == 3 * STEPS
    assert result.total_episodes == 3 and result.generated_frames == 3 * STEPS * 2
    rows = STEPS + 1
    for k, episode in enumerate(dataset.iterate_episodes()):
        obs = episode.observations
        assert obs["rgb"].shape == (rows, 2, 32, 32, 3) and obs["rgb"].dtype == np.uint8
        assert obs["depth"].shape == (rows, 2, 32, 32, 1) and obs["depth"].dtype == np.float32
        assert obs["cam_to_world"].shape == (rows, 2, 4, 4) and obs["intrinsics"].shape == (rows, 3, 3)
        assert episode.actions.shape == (STEPS, 4) and np.abs(episode.actions).max() <= 1
        assert episode.rewards.shape == (STEPS,)
        assert episode.terminations.tolist() == [False] * STEPS
        assert episode.truncations.tolist() == [False] * (STEPS - 1) + [True]
        assert episode.infos["frames_generated"].tolist() == [0, 2, 4, 6] and "coverage" in episode.infos
        coverage, explored = episode.infos["coverage"], episode.infos["explored_m2"]  # the house's physics
        assert np.all((coverage > 0) & (coverage <= 1)) and explored.min() > 0 and np.all(np.diff(explored) >= 0)
        assert iio.imread(result.path / "previews" / f"episode_{k:06d}.mp4", index=None).shape == (1 + STEPS * 2, 32,
                                                                                                   66, 3)
    assert [m["seed"] for m in dataset.storage.get_episode_metadata(range(3))] == [7, 8, 9]
    ours = dataset.storage.metadata["mirage_gym"]
    assert ours["version"] == mirage_gym.__version__ and ours["generator"] == "oracle" and ours["memory"] == "latent"
    assert ours["seed"] == 7 and ours["config"]["env_kwargs"] == ENV_KWARGS
    assert dataset.env_spec.id == "MirageRoom-v0" and dataset.env_spec.max_episode_steps == STEPS
    assert 0 < result.bytes_per_frame < 32 * 32 * (3 + 4), "compressed below raw RGB + float depth"

    # The data is the env's: a single env reset with the episode's seed and fed its actions replays it.
    env = dataset.recover_environment()
    assert env.observation_space == dataset.observation_space
    episode = dataset[1]
    obs, _ = env.reset(seed=8)
    np.testing.assert_array_equal(obs["rgb"], episode.observations["rgb"][0])
    for t, action in enumerate(episode.actions):
        obs, reward, _, truncated, _ = env.step(action)
        np.testing.assert_array_equal(obs["rgb"], episode.observations["rgb"][t + 1])
        assert reward == pytest.approx(episode.rewards[t]) and truncated == episode.truncations[t]


def test_episodes_do_not_depend_on_the_sub_env_that_ran_them(reference, tmp_path):
    single = run_collect(tmp_path, "mirage/single-v0", num_envs=1)
    assert_same_episodes(episodes_of(single.path), reference)


def test_again_changes_nothing_and_more_episodes_extend(reference, tmp_path):
    run_collect(tmp_path, "mirage/grow-v0", episodes=2)
    path = tmp_path / "mirage/grow-v0"
    before = {p: p.read_bytes() for p in path.glob("data/*/part-0.arrow")}
    metadata = (path / "data/metadata.json").read_bytes()
    again = run_collect(tmp_path, "mirage/grow-v0", episodes=2)
    assert again.episodes == 0 and "nothing to collect" in again.summary()
    assert (path / "data/metadata.json").read_bytes() == metadata
    grown = run_collect(tmp_path, "mirage/grow-v0")
    assert grown.episodes == EPISODES - 2 and grown.total_episodes == EPISODES
    assert all(p.read_bytes() == data for p, data in before.items())
    assert_same_episodes(episodes_of(path), reference)


def test_sigkill_then_the_same_command_resumes_without_duplicates(tmp_path, capsys):
    out = tmp_path / "datasets"
    argv = ["collect", "--episodes", "6", "--num-envs", "2", "--generator", "oracle", "--resolution", "32",
            "--chunk", "2", "--room-seeds", "0", "1", "--max-episode-steps", "4", "--seed", "3", "--out", str(out),
            "--dataset-id", "mirage/killed-v0", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "mirage_gym.cli", *argv], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metadata = out / "mirage/killed-v0/data/metadata.json"
    deadline = time.monotonic() + 120
    while not (metadata.exists() and json.loads(metadata.read_text())["total_episodes"] >= 1):
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no episode committed in time"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    process.stderr.close()
    assert 1 <= json.loads(metadata.read_text())["total_episodes"] < 6, "killed in the middle of the collection"
    assert len(episodes_of(metadata.parent.parent)) >= 1, "what was committed reads back"

    assert cli.main(argv) == 0  # the same command again
    resumed = episodes_of(metadata.parent.parent)
    assert [e.id for e in resumed] == list(range(6))
    dataset = minari.MinariDataset(metadata.parent)
    assert [m["seed"] for m in dataset.storage.get_episode_metadata(range(6))] == [3, 4, 5, 6, 7, 8]
    assert dataset.total_steps == 6 * 4 and not (metadata.parent.parent / ".staging").exists()
    assert sorted(p.name for p in (metadata.parent.parent / "previews").iterdir()) == [
        f"episode_{k:06d}.mp4" for k in range(6)]

    reference = collect("mirage/unkilled-v0", episodes=6, num_envs=2, env_kwargs={
        "generator": "oracle", "memory": "latent", "resolution": 32, "chunk": 2, "device": "cpu",
        "room_seeds": [0, 1]}, max_episode_steps=4, seed=3, out=out, **QUIET)
    assert_same_episodes(resumed, episodes_of(reference.path))

    capsys.readouterr()
    assert cli.main(argv) == 0  # and once more, on the finished dataset
    assert "nothing to collect" in capsys.readouterr().out


def test_uncommitted_and_half_written_episodes_are_recovered(reference, tmp_path):
    result = run_collect(tmp_path, "mirage/recover-v0", episodes=3)
    data = result.path / "data"
    # What a kill leaves between moving episodes 1 and 2 into data/ and committing them ...
    metadata = json.loads((data / "metadata.json").read_text())
    first = json.loads((data / "0" / "metadata.json").read_text())["total_steps"]
    (data / "metadata.json").write_text(json.dumps({**metadata, "total_episodes": 1, "total_steps": first}))
    # ... and while writing episode 4 and its preview.
    (result.path / ".staging" / "tmp-4").mkdir(parents=True)
    (result.path / ".staging" / "tmp-4" / "part-0.arrow").write_bytes(b"half an episode")
    (result.path / "previews").mkdir()
    (result.path / "previews" / ".tmp-episode_000004.mp4").write_bytes(b"half a video")
    assert minari.MinariDataset(data).total_episodes == 1, "uncommitted episodes are not visible"

    resumed = run_collect(tmp_path, "mirage/recover-v0")
    assert resumed.episodes == EPISODES - 3, "episodes 1 and 2 were complete: kept, not collected again"
    assert_same_episodes(episodes_of(result.path), reference)
    assert not (result.path / ".staging").exists() and not list((result.path / "previews").iterdir())


def test_disk_full_keeps_the_finished_episodes(reference, tmp_path, monkeypatch):
    write = minari_writer._write_episode
    calls = []

    def full_disk(path, episode, *args):
        calls.append(episode.index)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write(path, episode, *args)

    monkeypatch.setattr(minari_writer, "_write_episode", full_disk)
    with pytest.raises(CollectionError, match="disk is full.*intact.*run the same command again"):
        run_collect(tmp_path, "mirage/full-v0", num_envs=1)
    path = tmp_path / "mirage/full-v0"
    assert minari.MinariDataset(path / "data").total_episodes == 2
    assert not list((path / ".staging").iterdir()), "the half-written episode is gone"
    monkeypatch.setattr(minari_writer, "_write_episode", write)
    run_collect(tmp_path, "mirage/full-v0", num_envs=1)
    assert_same_episodes(episodes_of(path), reference)


def test_ray_backend_gives_the_local_episodes(reference, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run_collect(tmp_path, "mirage/ray-v0", backend="ray", workers=2, num_envs=2)
    finally:
        ray.shutdown()
    assert result.total_episodes == EPISODES
    assert_same_episodes(episodes_of(result.path), reference)


def test_sb3_policy_acts_deterministically_on_the_recorded_observations(tmp_path):
    from stable_baselines3 import PPO

    from mirage_gym.sb3 import MirageVecEnv
    from mirage_gym.wrappers import ImageObservation

    env_kwargs = {**ENV_KWARGS, "resolution": 48}  # SB3's NatureCNN needs at least 36x36 images
    vector = gym.make_vec("MirageRoom-v0", num_envs=1, vectorization_mode="vector_entry_point", **env_kwargs)
    transform = ImageObservation(vector.single_observation_space, frames=2, depth=True)
    model = PPO("MultiInputPolicy", MirageVecEnv(vector, transform), n_steps=8, batch_size=8, seed=0, device="cpu",
                policy_kwargs={"net_arch": [16]})
    model.save(tmp_path / "ppo.zip")

    result = collect("mirage/ppo-v0", episodes=2, num_envs=2, env_kwargs=env_kwargs, max_episode_steps=STEPS,
                     policy=tmp_path / "ppo.zip", out=tmp_path, **QUIET)
    dataset = minari.MinariDataset(result.path / "data")
    assert "PPO" in dataset.storage.metadata["algorithm_name"]
    for episode in dataset.iterate_episodes():
        observations = {key: value[:-1] for key, value in episode.observations.items()}
        expected, _ = model.predict(transform(observations), deterministic=True)
        np.testing.assert_allclose(episode.actions, expected, atol=1e-6)


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "datasets"
    with pytest.raises(ValueError, match="namespace/name-vN"):
        run_collect(out, "no-version")
    with pytest.raises(ValueError, match="episodes"):
        run_collect(out, "mirage/x-v0", episodes=0)
    with pytest.raises(ValueError, match="env_id"):
        run_collect(out, "mirage/x-v0", env_id="CartPole-v1")
    with pytest.raises(ValueError, match="policy"):
        run_collect(out, "mirage/x-v0", policy=tmp_path / "missing.zip")
    with pytest.raises(ValueError, match="max_episode_steps"):
        run_collect(out, "mirage/x-v0", env_kwargs={**ENV_KWARGS, "max_episode_steps": 5})
    with pytest.raises(ValueError, match="backend"):
        run_collect(out, "mirage/x-v0", backend="spark")
    with pytest.raises(FileNotFoundError, match="generator folder"):
        run_collect(out, "mirage/x-v0", env_kwargs={**ENV_KWARGS, "generator": str(tmp_path / "no-model")})
    assert not out.exists(), "a failed start leaves no folder behind"

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("keep me")
    with pytest.raises(CollectionError, match="cannot write"):
        run_collect(not_a_folder, "mirage/x-v0")
    assert not_a_folder.read_text() == "keep me"

    result = run_collect(out, "mirage/x-v0", episodes=1)
    metadata = (result.path / "data/metadata.json").read_bytes()
    with pytest.raises(ValueError, match="seed: 0 -> 1"):
        run_collect(out, "mirage/x-v0", episodes=2, seed=1)
    assert (result.path / "data/metadata.json").read_bytes() == metadata
    with open(result.path / ".lock") as held:  # as another collection writing the dataset would
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(CollectionError, match="another process"):
            run_collect(out, "mirage/x-v0", episodes=2)
    assert (result.path / "data/metadata.json").read_bytes() == metadata
    assert cli.main(["collect", "--episodes", "0", "--out", str(out), "--no-progress"]) == 1


def test_masked_reset_gives_a_sub_env_its_own_seed():
    envs = gym.make_vec("MirageRoom-v0", num_envs=2, vectorization_mode="vector_entry_point", **ENV_KWARGS)
    envs.reset(seed=0)
    stepped, *_ = envs.step(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="one per reset sub-env"):
        envs.reset(seed=[11, 12], options={"reset_mask": np.array([False, True])})
    obs, info = envs.reset(seed=[11], options={"reset_mask": np.array([False, True])})
    single, _ = MirageRoomEnv(**ENV_KWARGS).reset(seed=11)
    np.testing.assert_array_equal(obs["rgb"][1], single["rgb"])
    np.testing.assert_array_equal(obs["rgb"][0], stepped["rgb"][0])
    assert info["_frames_generated"].tolist() == [False, True]


def test_example_trains_from_a_dataset_it_collects(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["train_from_dataset.py", "--out", str(tmp_path), "--episodes", "5",
                                      "--steps", "3", "--iterations", "5"])
    monkeypatch.delenv("MINARI_DATASETS_PATH", raising=False)
    runpy.run_path(str(ROOT / "examples/train_from_dataset.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "mirage/example-random-v0: 5 episodes, 15 transitions" in out and "validation MSE" in out


# ---------------------------------------------------------------------- the generator's identity


def test_a_resume_with_other_weights_is_refused_naming_the_file(tmp_path):
    import shutil

    from tiny_generator import build_tiny_generator, save_tiny_generator, tiny_env_kwargs

    folder = save_tiny_generator(tmp_path / "model")
    env_kwargs = tiny_env_kwargs(folder)
    out = tmp_path / "datasets"
    result = run_collect(out, "mirage/tiny-v0", env_kwargs=env_kwargs, episodes=1, num_envs=1, max_episode_steps=2)
    metadata_file = result.path / "data/metadata.json"
    recorded = json.loads(metadata_file.read_text())["mirage_gym"]["model"]
    weights = "transformer/diffusion_pytorch_model.safetensors"
    assert recorded["generator"] == str(folder) and "package_version" not in recorded
    assert set(recorded["files"]) >= {weights, "mirage_config.json", "transformer/config.json",
                                      "vae/diffusion_pytorch_model.safetensors", "depth_head/config.json"}

    original = (folder / weights).read_bytes()
    other = build_tiny_generator(seed=1).save_pretrained(tmp_path / "other")
    shutil.copyfile(other / weights, folder / weights)  # new weights in the same folder, same command
    before = metadata_file.read_bytes()
    with pytest.raises(ValueError, match=rf"another model \({weights} changed \(sha256 "
                                         rf"{recorded['files'][weights][:12]}\.\.\. -> [0-9a-f]{{12}}\.\.\.\)\)"):
        run_collect(out, "mirage/tiny-v0", env_kwargs=env_kwargs, episodes=2, num_envs=1, max_episode_steps=2)
    assert metadata_file.read_bytes() == before  # nothing written
    (folder / "extra.json").write_text("{}")
    with pytest.raises(ValueError, match=r"extra\.json added"):
        run_collect(out, "mirage/tiny-v0", env_kwargs=env_kwargs, episodes=2, num_envs=1, max_episode_steps=2)

    (folder / "extra.json").unlink()
    (folder / weights).write_bytes(original)  # the model it was started with: it continues
    again = run_collect(out, "mirage/tiny-v0", env_kwargs=env_kwargs, episodes=2, num_envs=1, max_episode_steps=2)
    assert again.total_episodes == 2 and again.episodes == 1


def test_the_default_models_identity_holds_the_package_version(monkeypatch):
    from mirage_gym.data.collect import _model_changes, generator_identity

    identity = generator_identity("default", physics="generated")
    assert identity["package_version"] == mirage_gym.__version__ and identity["physics"] == "generated"
    assert any(name.endswith(".safetensors") for name in identity["files"])
    monkeypatch.setattr(mirage_gym, "__version__", "99.0")
    upgraded = generator_identity("default", physics="ground_truth")
    assert _model_changes(identity, upgraded) == [
        f"mirage-gym version {identity['package_version']!r} -> '99.0'", "physics 'generated' -> 'ground_truth'"]
    assert generator_identity("oracle") == {"generator": "oracle", "files": {}}


def test_a_dataset_from_before_the_identity_is_continued_with_a_warning(tmp_path):
    result = run_collect(tmp_path, "mirage/old-v0", episodes=1)
    metadata_file = result.path / "data/metadata.json"
    metadata = json.loads(metadata_file.read_text())
    del metadata["mirage_gym"]["model"]
    metadata_file.write_text(json.dumps(metadata))
    with pytest.warns(UserWarning, match="cannot check that it is continued with the same model"):
        assert run_collect(tmp_path, "mirage/old-v0", episodes=2).total_episodes == 2


def test_the_physics_is_recorded_and_a_dataset_keeps_its_physics(tmp_path, capsys):
    generated = {**ENV_KWARGS, "physics": "generated"}
    result = run_collect(tmp_path, "mirage/physics-v0", env_kwargs=generated, episodes=2, num_envs=2)
    metadata = json.loads((result.path / "data/metadata.json").read_text())
    assert "physics 'generated'" in metadata["description"]
    stored = json.dumps(metadata)
    assert '"physics": "generated"' in stored
    episode = episodes_of(result.path)[0]
    assert set(episode.infos["physics"]) == {b"generated"} or set(episode.infos["physics"]) == {"generated"}
    assert "blocked_by" in episode.infos
    for episode in episodes_of(result.path):  # no house: coverage is inf (a float column), explored_m2 is m^2
        coverage, explored = episode.infos["coverage"], episode.infos["explored_m2"]
        assert coverage.dtype == np.float64 and coverage.shape == (STEPS + 1,) and np.all(coverage == np.inf)
        assert explored.dtype == np.float64 and explored.min() > 0 and np.all(np.diff(explored) >= 0)
        np.testing.assert_allclose(np.diff(explored), episode.infos["reward_explored"][1:], atol=1e-9)
    with pytest.raises(ValueError, match="other settings.*'physics': 'generated'.*'physics': 'ground_truth'"):
        run_collect(tmp_path, "mirage/physics-v0", env_kwargs={**ENV_KWARGS, "physics": "ground_truth"}, episodes=3)
    with pytest.raises(ValueError, match="physics must be one of"):
        run_collect(tmp_path, "mirage/physics-bad-v0", env_kwargs={**ENV_KWARGS, "physics": "house"}, episodes=1)
    # The command line: --physics, and resolution/chunk from the model when not given.
    argv = ["collect", "--episodes", "1", "--num-envs", "1", "--generator", "oracle", "--room-seeds", "0",
            "--max-episode-steps", "2", "--out", str(tmp_path), "--dataset-id", "mirage/physics-cli-v0",
            "--no-progress", "--no-preview", "--physics", "generated"]
    assert cli.main(argv) == 0
    cli_metadata = json.loads((tmp_path / "mirage/physics-cli-v0/data/metadata.json").read_text())
    assert "physics 'generated'" in cli_metadata["description"]
    assert '"physics": "generated"' in json.dumps(cli_metadata)
