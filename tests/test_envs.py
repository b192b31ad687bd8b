"""The single environments on a tiny random generator (32x32, chunk 2) and in oracle mode."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import mirage_gym  # noqa: F401  (registers the environments)
from mirage_gym.envs import MirageRoomEnv, MirageRoomNavEnv, OracleGenerator, Task
from mirage_gym.memory import LatentCache, PointCloudMemory
from mirage_gym.envs.rendering import human_render_problem
from mirage_gym.model.generator import MirageGenerator
from tiny_generator import CHUNK, RESOLUTION, save_tiny_generator, tiny_env_kwargs


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    return save_tiny_generator(tmp_path_factory.mktemp("tiny_generator"))


@pytest.fixture()
def env(tiny_folder):
    return gym.make("MirageRoom-v0", **tiny_env_kwargs(tiny_folder)).unwrapped


def oracle_kwargs(**overrides):
    return {"generator": "oracle", "resolution": RESOLUTION, "chunk": CHUNK, "room_seeds": [0, 1], **overrides}


def test_spaces_and_shapes(env):
    space = env.observation_space
    assert set(space.spaces) == {"rgb", "depth", "cam_to_world", "intrinsics"}
    assert space["rgb"].shape == (CHUNK, RESOLUTION, RESOLUTION, 3) and space["rgb"].dtype == np.uint8
    assert space["depth"].shape == (CHUNK, RESOLUTION, RESOLUTION, 1) and space["depth"].dtype == np.float32
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    assert isinstance(env.generator, MirageGenerator)
    obs, info = env.reset(seed=0)
    assert obs in space
    assert np.array_equal(obs["rgb"][0], obs["rgb"][-1]), "reset repeats the start view over the chunk"
    assert info["frames_generated"] == 0 and not info["collided"] and info["memory_bytes"] > 0
    obs, reward, terminated, truncated, info = env.step(np.array([1.0, 0.0, 0.3, 0.0], np.float32))
    assert obs in space and isinstance(reward, float) and not terminated and not truncated
    assert info["frames_generated"] == CHUNK and 0.0 < info["coverage"] <= 1.0
    assert "step_time" not in info  # wall-clock time is opt-in (report_step_time), see the env docs
    # The chunk's poses move forward frame by frame (the motion is spread over the chunk).
    steps = np.linalg.norm(np.diff(obs["cam_to_world"][:, :3, 3], axis=0), axis=1)
    assert np.all(steps > 0) or info["collided"]


def test_registration_and_time_limits():
    assert gym.spec("MirageRoom-v0").max_episode_steps == 200
    assert gym.spec("MirageRoomNav-v0").max_episode_steps == 100
    assert gym.spec("MirageRoom-v0").vector_entry_point.endswith("MirageRoomVectorEnv")


@pytest.mark.parametrize("env_id", ["MirageRoom-v0", "MirageRoomNav-v0"])
def test_check_env_with_tiny_generator(tiny_folder, env_id):
    check_env(gym.make(env_id, **tiny_env_kwargs(tiny_folder)).unwrapped)


@pytest.mark.parametrize("env_id", ["MirageRoom-v0", "MirageRoomNav-v0"])
def test_check_env_in_oracle_mode(env_id):
    env = gym.make(env_id, **oracle_kwargs())
    assert isinstance(env.unwrapped.generator, OracleGenerator)
    check_env(env.unwrapped)


def test_same_seed_same_observations(env, tiny_folder):
    other = MirageRoomEnv(**tiny_env_kwargs(tiny_folder))
    actions = np.random.default_rng(0).uniform(-1, 1, (3, 4)).astype(np.float32)
    runs = []
    for e, seed in ((env, 5), (other, 5), (env, 6)):
        obs, _ = e.reset(seed=seed)
        frames = [obs["rgb"]]
        for action in actions:
            frames.append(e.step(action)[0]["rgb"])
        runs.append(np.stack(frames))
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_generated_frames_are_not_the_ground_truth(tiny_folder):
    generated = MirageRoomEnv(**tiny_env_kwargs(tiny_folder))
    oracle = MirageRoomEnv(**oracle_kwargs())
    action = np.array([0.5, 0.0, 0.5, 0.0], np.float32)
    a, _ = generated.reset(seed=3)
    b, _ = oracle.reset(seed=3)
    assert np.array_equal(a["rgb"], b["rgb"]), "both start from the same ground-truth view"
    a, b = generated.step(action)[0], oracle.step(action)[0]
    np.testing.assert_allclose(a["cam_to_world"], b["cam_to_world"], atol=1e-6)
    assert not np.array_equal(a["rgb"], b["rgb"])


def test_bad_input_names_the_problem_and_leaves_the_env_usable(env, tiny_folder):
    good = np.array([0.5, 0.0, 0.2, 0.0], np.float32)
    env.reset(seed=1)
    bad_actions = {
        "shape": np.zeros(3, np.float32),
        "dtype": np.zeros(4, np.int64),
        "NaN": np.array([np.nan, 0, 0, 0], np.float32),
        "out of bounds": np.array([2.0, 0, 0, 0], np.float32),
    }
    for problem, action in bad_actions.items():
        with pytest.raises(ValueError, match=problem):
            env.step(action)
    with pytest.raises(ValueError, match="infinite"):
        env.step(np.array([np.inf, 0, 0, 0], np.float32))
    with pytest.raises(ValueError, match="unknown reset option.*'colour'"):
        env.reset(options={"colour": "red"})
    with pytest.raises(ValueError, match="start_image"):
        env.reset(options={"start_image": np.zeros((16, 16, 3), np.uint8)})
    with pytest.raises(ValueError, match="start_image"):
        env.reset(options={"start_image": np.zeros((RESOLUTION, RESOLUTION, 3), np.float32)})
    with pytest.raises(ValueError, match="start_pose"):
        env.reset(options={"start_pose": np.full((4, 4), np.nan)})
    # The episode was not disturbed: it continues exactly as an undisturbed twin.
    twin = MirageRoomEnv(**tiny_env_kwargs(tiny_folder))
    twin.reset(seed=1)
    assert np.array_equal(env.step(good)[0]["rgb"], twin.step(good)[0]["rgb"])


def test_start_pose_inside_an_obstacle_is_rejected(env):
    env.reset(seed=0, options={"room_seed": 0})
    scene = env.scene
    wall = np.eye(4)
    wall[:3, :3] = env.simulator.subenv(0).pose[:3, :3].numpy()
    wall[:3, 3] = [scene.x_lines[0], scene.y_lines[0] + 1.0, 1.4]  # on the outer wall's centre line
    with pytest.raises(ValueError, match="not free"):
        env.reset(options={"room_seed": 0, "start_pose": wall})


def test_start_from_your_own_image(env):
    image = np.random.default_rng(0).integers(0, 256, (RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    obs, _ = env.reset(seed=0, options={"start_image": image})
    assert all(np.array_equal(frame, image) for frame in obs["rgb"])
    obs, *_ = env.step(np.zeros(4, np.float32))
    assert obs["rgb"].shape == (CHUNK, RESOLUTION, RESOLUTION, 3)


def test_start_pose_and_room_seed_options(env):
    obs, _ = env.reset(seed=0, options={"room_seed": 1})
    pose = obs["cam_to_world"][0]
    again, _ = env.reset(seed=9, options={"room_seed": 1, "start_pose": pose})
    np.testing.assert_allclose(again["cam_to_world"][0], pose, atol=1e-5)
    assert np.array_equal(again["rgb"], obs["rgb"])


def test_collisions_stop_the_camera_at_walls():
    env = MirageRoomEnv(**oracle_kwargs(max_translation=1.0))
    env.reset(seed=0)
    collided = []
    for _ in range(30):
        obs, reward, *_, info = env.step(np.array([1.0, 0.0, 0.0, 0.0], np.float32))
        collided.append(info["collided"])
        positions = obs["cam_to_world"][:, :3, 3]
        assert env.scene.is_free(positions, env.simulator.camera_radius).all()
    assert any(collided), "walking straight for 30 m must hit a wall"
    assert info["collided"] and reward <= 0.0, "a blocked move sees nothing new and pays the penalty"


def test_coverage_reward_counts_new_floor_once():
    env = MirageRoomEnv(**oracle_kwargs(collision_penalty=0.0))
    env.reset(seed=2)
    turn = np.array([0.0, 0.0, 1.0, 0.0], np.float32)
    total, coverages = 0.0, []
    for _ in range(48):  # 360 degrees in place (15 degrees a step), then again
        _, reward, *_, info = env.step(turn)
        total += reward
        coverages.append(info["coverage"])
        assert reward >= 0.0
    covered = env.simulator.subenv(0).task_state.coverage.covered
    start_cells = covered.sum() - total / env.scene.grid_cell**2
    assert start_cells > 0 and np.isclose(total, (covered.sum() - start_cells) * env.scene.grid_cell**2)
    assert coverages[-1] == coverages[23], "the second turn sees nothing new"
    assert np.all(np.diff(coverages) >= 0)


def test_memory_modes_and_discrete_actions(tiny_folder):
    for memory in ("latent", "pixel", "none"):
        env = MirageRoomEnv(action_type="discrete", **tiny_env_kwargs(tiny_folder, memory=memory))
        assert env.action_space == gym.spaces.Discrete(7)
        env.reset(seed=0)
        _, _, _, _, info = env.step(1)
        assert (info["memory_bytes"] == 0) == (memory == "none")
        with pytest.raises(ValueError, match="out of bounds"):
            env.step(7)
        with pytest.raises(ValueError, match="integer"):
            env.step(1.0)


def test_grid_render_and_human_mode(tiny_folder):
    env = MirageRoomEnv(render_mode="rgb_array", render_layout="grid", **tiny_env_kwargs(tiny_folder))
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (RESOLUTION, 3 * RESOLUTION + 4, 3) and frame.dtype == np.uint8
    env.step(np.zeros(4, np.float32))
    assert np.array_equal(env.render()[:, :RESOLUTION], env.simulator.subenv(0).rgb)
    with pytest.raises(ValueError, match="render_layout"):
        MirageRoomEnv(render_layout="mosaic", **oracle_kwargs())
    if human_render_problem():
        with pytest.raises(RuntimeError, match="render_mode='human'"):
            MirageRoomEnv(render_mode="human", **oracle_kwargs())


def test_missing_default_weights_say_what_to_do(tmp_path, monkeypatch):
    import mirage_gym.envs.generators as generators

    # A folder with only some parts (as while the default is being trained) is not a model.
    (tmp_path / "vae").mkdir()
    monkeypatch.setattr(generators, "default_weights_path", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match="default weights are not in this build.*oracle"):
        MirageRoomEnv()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MirageRoomEnv(generator="/no/such/folder")


def test_generator_must_fit_resolution_and_chunk(tiny_folder):
    with pytest.raises(ValueError, match="resolution 40 must be a multiple of 16"):
        MirageRoomEnv(**tiny_env_kwargs(tiny_folder, resolution=40))


def test_pointnav_goal_progress_and_success():
    env = MirageRoomNavEnv(**oracle_kwargs(collision_penalty=0.0))
    for seed in range(20):  # find a start with free floor 0.8 m ahead
        obs, info = env.reset(seed=seed)
        pose = obs["cam_to_world"][0]
        goal = pose[:3, 3] + 0.8 * pose[:3, 2]
        scene = env.scene
        row, col, inside = scene.cell_of(goal[None])
        if inside[0] and scene.free_cells(0.2)[row[0], col[0]] and scene.is_free(goal[None], 0.2)[0]:
            break
    obs, info = env.reset(seed=seed, options={"start_pose": pose, "goal": goal})
    np.testing.assert_allclose(obs["goal"], [0.0, 0.0, 0.8], atol=1e-4)  # straight ahead, camera frame
    distance = info["distance_to_goal"]
    obs, reward, terminated, _, info = env.step(np.array([1.0, 0.0, 0.0, 0.0], np.float32))  # 0.25 m forward
    assert not terminated and np.isclose(reward, distance - info["distance_to_goal"], atol=1e-5)
    assert obs["goal"][2] == pytest.approx(0.55, abs=1e-3)
    obs, reward, terminated, _, info = env.step(np.array([1.0, 0.0, 0.0, 0.0], np.float32))
    assert terminated and info["success"] and reward > 10.0


def test_geodesic_distance_looks_past_blocked_neighbours_and_progress_stays_finite(monkeypatch):
    from mirage_gym.envs import tasks
    from mirage_gym.world import make_scene

    scene = make_scene(3)
    free = np.argwhere(scene.free_cells(0.2))
    row, col = free[len(free) // 2]
    position = np.array([*scene.cell_centers()[row, col, :2], 1.4])
    goal = np.array([*scene.cell_centers()[tuple(free[0])][:2], 1.4])
    distances = tasks.geodesic_distances(scene, goal)
    exact = tasks.geodesic_distance(scene, distances, position)
    assert np.isfinite(exact)
    # A body pressed into a corner: every cell of the 3x3 around it counts as blocked.
    blocked = distances.copy()
    blocked[max(0, row - 1) : row + 2, max(0, col - 1) : col + 2] = np.inf
    ring2 = blocked[max(0, row - 2) : row + 3, max(0, col - 2) : col + 3]
    centres = scene.cell_centers()[max(0, row - 2) : row + 3, max(0, col - 2) : col + 3, :2]
    expected = (np.linalg.norm(centres - position[:2], axis=-1) + ring2).min()
    widened = tasks.geodesic_distance(scene, blocked, position)
    assert widened == pytest.approx(expected) and widened >= exact
    assert tasks.geodesic_distance(scene, np.full_like(distances, np.inf), position) == np.inf
    # Nowhere near a reachable cell: the episode's reward and distance stay finite (no progress).
    env = MirageRoomNavEnv(**oracle_kwargs())
    _, info = env.reset(seed=0)
    monkeypatch.setattr(tasks, "geodesic_distance", lambda *args: np.inf)
    _, reward, _, _, after = env.step(np.array([1.0, 0.0, 0.0, 0.0], np.float32))
    assert np.isfinite(reward) and after["reward_progress"] == 0.0
    assert after["distance_to_goal"] == info["distance_to_goal"]


# ---------------------------------------------------------------------- declared interfaces


def test_generators_and_memory_stores_satisfy_the_declared_protocols(tmp_path):
    from mirage_gym.memory import LatentCache, MemoryStore, PersistentMemoryStore, PointCloudMemory
    from mirage_gym.model.protocols import Generator
    from tiny_generator import build_tiny_generator

    gen, oracle = build_tiny_generator(), OracleGenerator()
    for g in (gen, oracle):
        assert isinstance(g, Generator)
    assert not gen.renders_ground_truth and oracle.renders_ground_truth
    assert gen.max_depth == float(gen.depth_head.config.max_depth) and oracle.max_depth == 20.0
    assert gen.memory_modes == ("latent", "pixel", "none") and oracle.memory_modes == ()
    assert gen.memory_store is None and oracle.memory_store is None  # before start
    with pytest.raises(ValueError, match="resolution 40 must be a multiple of 16"):
        gen.check_geometry(40, CHUNK)
    oracle.check_geometry(40, 3)  # the renderer takes any size
    with pytest.raises(ValueError, match="keeps no memory"):
        oracle.set_memory("latent")
    cache, cloud = LatentCache(4, 0.1, 100), PointCloudMemory()
    assert isinstance(cache, MemoryStore) and isinstance(cloud, MemoryStore)
    assert isinstance(cache, PersistentMemoryStore) and not isinstance(cloud, PersistentMemoryStore)


def test_memory_mode_is_switched_by_one_method_correct_mid_episode():
    from mirage_gym import geometry
    from tiny_generator import build_tiny_generator

    k = geometry.intrinsics_from_fov(90.0, RESOLUTION, RESOLUTION)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, RESOLUTION, RESOLUTION, 3), dtype=np.uint8))
    pose = torch.eye(4)[None]
    poses = pose[:, None].repeat(1, CHUNK, 1, 1)
    poses[:, :, 0, 3] = torch.linspace(0.05, 0.1, CHUNK)

    def run(gen, switch_to=None):
        gen.start(images, pose, k)
        outs = [gen.step(poses, torch.Generator().manual_seed(0))]
        if switch_to is not None:
            gen.set_memory(switch_to)
        outs.append(gen.step(poses, torch.Generator().manual_seed(1)))
        return outs

    gen = build_tiny_generator()
    with pytest.raises(AttributeError):
        gen.memory = "pixel"  # no flipping from outside: set_memory is the one way
    with pytest.raises(ValueError, match="memory must be one of"):
        gen.set_memory("voxels")
    # Switching before a scene starts is the same as constructing with that mode.
    switched = build_tiny_generator()
    switched.set_memory("pixel")
    parts = build_tiny_generator()
    built = MirageGenerator(parts.transformer, parts.vae, parts.depth_head, parts.scheduler, memory="pixel",
                            num_inference_steps=2, context_frames=1, voxel_size=0.1, cache_capacity=4000).eval()
    for a, b in zip(run(switched), run(built)):
        assert torch.equal(a.rgb, b.rgb) and torch.equal(a.depth, b.depth)
    # Mid-episode: the running scene continues with an empty store of the new kind, every mode steps.
    gen = build_tiny_generator()
    run(gen)
    assert gen.memory_bytes()[0] > 0
    for mode, store in (("none", type(None)), ("pixel", PointCloudMemory), ("latent", LatentCache), ("latent", LatentCache)):
        before = gen.memory_store
        gen.set_memory(mode)
        assert gen.memory == mode and isinstance(gen.memory_store, store)
        if mode == "latent" and isinstance(before, LatentCache):
            assert gen.memory_store is before, "switching to the current mode keeps the memory"
        else:
            assert gen.memory_bytes() == [0], "another kind of memory starts empty"
        out = gen.step(poses, torch.Generator().manual_seed(2))
        assert out.rgb.shape == (1, CHUNK, RESOLUTION, RESOLUTION, 3)
        assert (gen.memory_bytes()[0] > 0) == (mode != "none")


# ---------------------------------------------------------------------- tasks


@pytest.mark.parametrize("env_cls", [MirageRoomEnv, MirageRoomNavEnv])
def test_reward_terms_are_in_info_and_sum_to_the_reward(env_cls):
    env = env_cls(**oracle_kwargs(max_translation=1.0))
    terms = [f"reward_{t}" for t in env.task.reward_terms]
    _, info = env.reset(seed=4)
    assert all(info[key] == 0.0 for key in terms)
    keys = set(info)
    for action in np.random.default_rng(0).uniform(-1, 1, (12, 4)).astype(np.float32):
        _, reward, terminated, _, info = env.step(action)
        assert set(info) == keys, "the same info keys at reset and at every step (datasets need it)"
        assert reward == pytest.approx(sum(info[key] for key in terms), rel=1e-6, abs=1e-6)
        assert info["reward_collision"] == (-0.1 if info["collided"] else 0.0)
        if terminated:
            break
    assert "coverage" in info and "collided" in info


class LookUpTask(Task):
    """A tiny custom task: reward for looking up, an option for how much, ends when the camera looks up far."""

    option_dims = {"weight": 0}
    reward_terms = ("pitch", "collision")

    def check_option(self, key, value):
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"options['weight'] must be a number >= 0, got {value!r}")
        return float(value)

    def start(self, episode, rng, options):
        state = super().start(episode, rng, options)
        state.weight = options.get("weight", 1.0)
        return state

    def rewards(self, state, transition, new_floor):
        forward = transition.poses[-1, :3, 2]  # the camera's z axis in the world (z up)
        state.pitch = float(forward[2])
        return {"pitch": state.weight * state.pitch, "collision": self._collision(transition)}

    def terminated(self, state):
        return state.pitch > 0.7

    def info(self, state):
        return {**super().info(state), "weight": state.weight}


def test_a_new_task_is_one_class_and_its_registration():
    gym.register("LookUp-v0", entry_point="mirage_gym.envs:MirageRoomEnv",
                 vector_entry_point="mirage_gym.envs:MirageRoomVectorEnv", kwargs={"task": LookUpTask()},
                 max_episode_steps=20)
    try:
        env = gym.make("LookUp-v0", **oracle_kwargs())
        check_env(env.unwrapped)
        _, info = env.reset(seed=0, options={"weight": 2.0})
        assert info["weight"] == 2.0 and info["reward_pitch"] == 0.0
        _, reward, terminated, _, info = env.step(np.array([0, 0, 0, 1], np.float32))
        assert reward > 0 and reward == pytest.approx(info["reward_pitch"] + info["reward_collision"], rel=1e-6)
        with pytest.raises(ValueError, match="weight"):
            env.reset(options={"weight": -1})
        with pytest.raises(ValueError, match="unknown reset option.*'goal'"):
            env.reset(options={"goal": [0, 0, 0]})
        envs = gym.make_vec("LookUp-v0", num_envs=2, vectorization_mode="vector_entry_point", **oracle_kwargs())
        _, info = envs.reset(seed=0, options={"weight": [1.0, 3.0]})  # one value per sub-env
        assert info["weight"].tolist() == [1.0, 3.0]
        with pytest.raises(ValueError, match="collision_penalty belongs"):
            gym.make("LookUp-v0", collision_penalty=0.5, **oracle_kwargs())
    finally:
        gym.registry.pop("LookUp-v0")


def test_goal_option_is_validated_by_the_task():
    env = MirageRoomNavEnv(**oracle_kwargs())
    for goal in ([1.0, 2.0], [np.nan, 0.0, 0.0]):
        with pytest.raises(ValueError, match=r"options\['goal'\] must be a finite world position \[3\]"):
            env.reset(seed=0, options={"goal": goal})


# ---------------------------------------------------------------------- settings


@pytest.mark.parametrize("name, value, message", [
    ("max_translation", 1e5, r"max_translation must be in \(0, 2\] metres per step, got 100000.0"),
    ("max_translation", 0.0, r"max_translation must be in \(0, 2\]"),
    ("max_translation", float("nan"), r"max_translation must be in \(0, 2\]"),
    ("max_rotation", 720.0, r"max_rotation must be in \(0, 180\] degrees per step"),
    ("max_pitch", 90.0, r"max_pitch must be in \(0, 89\] degrees"),
    ("camera_radius", 5.0, r"camera_radius must be in \(0, 1\] metres"),
    ("frame_time", -1.0, r"frame_time must be in \(0, 10\]"),
    ("max_depth", 1e9, r"max_depth must be in \(0, 1000\] metres"),
    ("fov", 180.0, r"fov must be in \[10, 170\] degrees"),
    ("resolution", 100_000, r"resolution must be in \[8, 1024\] pixels"),
    ("resolution", 32.5, r"resolution must be an integer in \[8, 1024\]"),
    ("resolution", True, r"resolution must be an integer"),
    ("chunk", 0, r"chunk must be in \[1, 129\] frames per step"),
    ("num_inference_steps", 0, r"num_inference_steps must be in \[1, 1000\]"),
    ("moving_objects", -1, r"moving_objects must be in \[0, 32\]"),
    ("num_rooms", 12, r"num_rooms must be in \[1, 9\]"),
    ("room_seeds", [1, -2], r"room_seeds must be a non-empty list"),
    ("memory", "voxels", r"memory must be one of"),
])
def test_settings_outside_sensible_ranges_are_refused(name, value, message):
    for env_cls in (MirageRoomEnv, MirageRoomNavEnv):
        with pytest.raises(ValueError, match=message):
            env_cls(**oracle_kwargs(**{name: value}))


def test_motion_settings_at_their_bounds_still_work():
    env = MirageRoomEnv(**oracle_kwargs(max_translation=2.0, max_rotation=180.0, camera_radius=0.2))
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([1.0, 0.0, 1.0, 0.0], np.float32))
    assert info["frames_generated"] == CHUNK


def test_env_signatures_are_explicit_and_documented():
    import inspect

    for env_cls in (MirageRoomEnv, MirageRoomNavEnv):
        params = inspect.signature(env_cls).parameters
        assert not any(p.kind is p.VAR_KEYWORD for p in params.values()), "no **kwargs"
        assert params["max_translation"].annotation == "float" and params["max_translation"].default == 0.25
        for section in ("## Description", "## Action Space", "## Observation Space", "## Rewards",
                        "## Starting State", "## Episode End", "## Arguments",
                        "| Parameter | Type | Default | Description |"):
            assert section in env_cls.__doc__, (env_cls.__name__, section)
        for name in params:
            assert f"``{name}``" in env_cls.__doc__, f"{env_cls.__name__}: {name} is not in the Arguments table"
