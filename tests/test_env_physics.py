"""The environments' physics (``physics="generated" | "ground_truth"``), start pictures, and the env
defaults the model decides (resolution, chunk), through the public Gymnasium API."""

from __future__ import annotations

import json
import math
import shutil

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import mirage_gym  # noqa: F401  (registers the environments)
from mirage_gym import geometry
from mirage_gym.envs import MirageRoomEnv, MirageRoomNavEnv
from mirage_gym.envs.generators import model_geometry, recorded_geometry
from mirage_gym.envs.simulator import PICTURE_START_POSE
from mirage_gym.model.generator import ChunkOutput, MirageGenerator
from tiny_generator import CHUNK, RESOLUTION, save_tiny_generator, tiny_env_kwargs

SIZE = 48
FORWARD = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
BACK = np.array([-1.0, 0.0, 0.0, 0.0], np.float32)
TURN = np.array([0.0, 0.0, 1.0, 0.0], np.float32)  # 15 degrees left


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_generator(tmp_path_factory.mktemp("tiny_generator"))


def oracle_env(physics, env_id="MirageRoom-v0", **kwargs):
    return gym.make(env_id, generator="oracle", resolution=SIZE, chunk=2, room_seeds=[3], physics=physics,
                    **kwargs).unwrapped


def position(env) -> np.ndarray:
    return env.simulator.subenv(0).pose[:3, 3].numpy().astype(np.float64)


class WallPicture:
    """A stand-in generator for a user's picture of a wall ``distance`` metres in front of the camera.

    It implements the :class:`~mirage_gym.model.protocols.Generator` protocol with no house behind
    it: every frame shows the picture, and its depth is a wall facing the start camera (a plane at
    ``distance`` along the start's view direction), seen from wherever the camera is.
    """

    renders_ground_truth = False
    memory_modes: tuple[str, ...] = ()
    memory = "none"

    def __init__(self, distance: float = 1.0, max_depth: float = 20.0) -> None:
        self.distance = distance
        self._max_depth = max_depth
        self._images = None
        self._start = None
        self._k = None

    @property
    def max_depth(self) -> float:
        return self._max_depth

    @property
    def memory_store(self):
        return None

    def memory_bytes(self):
        return [0] * self.batch_size

    def set_memory(self, mode):
        pass

    @property
    def batch_size(self) -> int:
        return 0 if self._images is None else len(self._images)

    @property
    def device(self):
        return torch.device("cpu")

    def check_geometry(self, resolution, chunk):
        pass

    def _depth(self, cam_to_world: torch.Tensor) -> torch.Tensor:
        """Depth ``[T, H, W]`` of the wall plane ``n . x = n . start + distance`` for poses ``[T, 4, 4]``."""
        h, w = self._images.shape[1:3]
        k = self._k.double()
        u, v = torch.meshgrid(torch.arange(w) + 0.5, torch.arange(h) + 0.5, indexing="xy")
        rays = torch.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], torch.ones_like(u)], -1).double()
        n = self._start[:3, 2].double()
        offset = n @ self._start[:3, 3].double() + self.distance
        out = []
        for pose in cam_to_world.double():
            world_rays = rays @ pose[:3, :3].T
            denom = world_rays @ n
            t = (offset - n @ pose[:3, 3]) / denom
            out.append(torch.where((denom > 1e-6) & (t > 0), t, torch.full_like(t, self._max_depth)))
        return torch.stack(out).float().clamp(0, self._max_depth)

    def start(self, images, cam_to_world, intrinsics, scenes=None, *, renderers=None):
        self._images, self._start, self._k = images.clone(), cam_to_world[0].clone(), intrinsics.clone()
        depth = self._depth(cam_to_world)
        return ChunkOutput(rgb=images[:, None], depth=depth[:, None], latents=torch.zeros(1, 0, 1, 0, 0),
                           cache_mask=torch.zeros(1, 1, 0, 0, dtype=torch.bool))

    def step(self, cam_to_world, generator=None):
        t = cam_to_world.shape[1]
        depth = self._depth(cam_to_world[0])
        return ChunkOutput(rgb=self._images[:, None].expand(-1, t, -1, -1, -1).clone(), depth=depth[None],
                           latents=torch.zeros(1, 0, t, 0, 0), cache_mask=torch.zeros(1, t, 0, 0, dtype=torch.bool))


# ---------------------------------------------------------------------- settings


def test_bad_physics_is_a_value_error(tiny_folder):
    for bad in ("house", "Generated", 1, True):
        with pytest.raises(ValueError, match="physics must be one of"):
            gym.make("MirageRoom-v0", **tiny_env_kwargs(tiny_folder, physics=bad))
        with pytest.raises(ValueError, match="physics must be one of"):
            gym.make_vec("MirageRoomNav-v0", num_envs=2, vectorization_mode="vector_entry_point",
                         **tiny_env_kwargs(tiny_folder, physics=bad))


def test_ground_truth_physics_with_a_picture_is_a_value_error_saying_why(tiny_folder):
    env = gym.make("MirageRoom-v0", **tiny_env_kwargs(tiny_folder, physics="ground_truth")).unwrapped
    env.reset(seed=0)
    before = env.simulator.subenv(0).pose.clone()
    rng_state = env.np_random.bit_generator.state
    image = np.zeros((RESOLUTION, RESOLUTION, 3), np.uint8)
    with pytest.raises(ValueError, match="no procedural house stands behind a picture"):
        env.reset(seed=1, options={"start_image": image})
    assert env.simulator.subenv(0).pose.equal(before)  # nothing changed, the seed included
    assert env.np_random.bit_generator.state == rng_state
    env.step(FORWARD)


def test_default_physics_is_the_house_for_procedural_starts_and_generated_for_pictures(tiny_folder):
    env = gym.make("MirageRoom-v0", **tiny_env_kwargs(tiny_folder)).unwrapped
    _, info = env.reset(seed=0)
    assert info["physics"] == "ground_truth" and info["blocked_by"] is None and env.scene is not None
    assert 0 < info["coverage"] <= 1
    image = np.full((RESOLUTION, RESOLUTION, 3), 120, np.uint8)
    obs, info = env.reset(seed=0, options={"start_image": image})
    assert info["physics"] == "generated" and env.scene is None  # no house behind a picture
    assert np.allclose(obs["cam_to_world"][0], PICTURE_START_POSE.numpy())
    _, _, _, _, info = env.step(FORWARD)
    assert info["physics"] == "generated" and info["coverage"] == math.inf and info["explored_m2"] >= 0.0
    _, info = env.reset(seed=0)
    assert info["physics"] == "ground_truth"


def info_types(info) -> dict[str, type]:
    return {key: type(value) for key, value in info.items() if key != "blocked_by"}  # str or None by design


@pytest.mark.parametrize("env_id", ["MirageRoom-v0", "MirageRoomNav-v0"])
def test_one_env_with_default_physics_keeps_its_info_keys_types_and_meanings_across_resets(tiny_folder, env_id):
    """A procedural reset and a picture reset of one env (physics=None): the same info keys and types, and
    each key means the same in both: coverage a fraction of the house's floor (inf without a house),
    explored_m2 the floor area shown in square metres."""
    env = gym.make(env_id, **tiny_env_kwargs(tiny_folder)).unwrapped
    image = np.full((RESOLUTION, RESOLUTION, 3), 120, np.uint8)
    seen: dict[str, list[dict]] = {}
    for physics, options in (("ground_truth", None), ("generated", {"start_image": image}),
                             ("ground_truth", None)):
        _, info = env.reset(seed=3, options=options)
        infos = [info] + [env.step(action)[4] for action in (TURN, FORWARD, TURN)]
        assert {i["physics"] for i in infos} == {physics}
        seen.setdefault(physics, []).extend(infos)
    keys = {frozenset(i) for infos in seen.values() for i in infos}
    assert len(keys) == 1 and {"coverage", "explored_m2"} <= next(iter(keys))
    types = {tuple(sorted(info_types(i).items())) for infos in seen.values() for i in infos}
    assert len(types) == 1 and dict(types.pop())["coverage"] is float
    for info in seen["ground_truth"]:
        assert 0.0 <= info["coverage"] <= 1.0 and info["explored_m2"] >= 0.0
    for info in seen["generated"]:
        assert info["coverage"] == math.inf and info["explored_m2"] >= 0.0


# ---------------------------------------------------------------------- generated physics in a house (oracle)


def walk_to_the_wall(env, steps=30):
    """Walk straight ahead until stopped; the stop position and what stopped it."""
    for _ in range(steps):
        _, _, _, _, info = env.step(FORWARD)
        if info["collided"]:
            return position(env), info["blocked_by"]
    raise AssertionError("never reached a wall")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_walking_at_a_wall_stops_where_the_house_stops(seed):
    stops = {}
    for physics in ("ground_truth", "generated"):
        env = oracle_env(physics)
        _, info = env.reset(seed=seed)
        assert info["physics"] == physics
        stops[physics] = walk_to_the_wall(env)
    (truth, truth_by), (generated, generated_by) = stops["ground_truth"], stops["generated"]
    assert truth_by == "obstacle" and generated_by == "obstacle"
    assert np.linalg.norm(truth[:2] - generated[:2]) <= 0.05 + 1e-3  # within a voxel of the physics' grid


def test_a_wall_seen_then_turned_away_from_still_blocks():
    env = oracle_env("generated")
    env.reset(seed=0)
    wall_stop, _ = walk_to_the_wall(env)
    for _ in range(3):  # back off, still looking at the wall (over floor already shown)
        _, _, _, _, info = env.step(BACK)
        assert not info["collided"]
    for _ in range(12):  # turn 180 degrees: the frames now look away from the wall
        env.step(TURN)
    forward = env.simulator.subenv(0).pose[:3, 2].numpy()
    towards = wall_stop - position(env)
    cosine = forward[:2] @ towards[:2] / np.linalg.norm(forward[:2]) / np.linalg.norm(towards[:2])
    assert math.degrees(math.acos(np.clip(cosine, -1, 1))) >= 120  # the wall is behind the camera
    for _ in range(6):  # walk backwards, towards the wall, without looking at it
        _, _, _, _, info = env.step(BACK)
        if info["collided"]:
            break
    assert info["collided"] and info["blocked_by"] == "obstacle"
    assert np.linalg.norm(position(env)[:2] - wall_stop[:2]) <= 0.1  # stopped at the wall, not at unseen space


def test_generated_physics_rewards_and_info_need_no_house():
    env = oracle_env("generated")
    _, info = env.reset(seed=0)
    assert info["explored_m2"] > 0 and info["reward_explored"] == 0.0  # the start view's floor, m^2
    assert info["coverage"] == math.inf  # no house: no total floor to be a fraction of
    total = info["explored_m2"]
    for _ in range(4):
        _, reward, _, _, info = env.step(TURN)
        assert reward == pytest.approx(info["reward_explored"] + info["reward_collision"])
        total += info["reward_explored"]
        assert info["explored_m2"] == pytest.approx(total)  # the area shown so far, square metres
        assert info["coverage"] == math.inf
    assert info["explored_m2"] > 1.0  # more than a fraction could be


@pytest.mark.parametrize("physics", ["ground_truth", "generated"])
def test_explored_m2_and_coverage_mean_the_same_under_both_physics(physics):
    """explored_m2: square metres shown, >= 0, never decreasing, grown by each step's exploration reward;
    coverage: a fraction of the house's navigable floor in [0, 1] with a house's physics, inf without."""
    env = oracle_env(physics)
    _, info = env.reset(seed=1)
    infos = [info]
    for action in (TURN, TURN, FORWARD, TURN, FORWARD, BACK, TURN, TURN):
        infos.append(env.step(action)[4])
    areas = np.array([i["explored_m2"] for i in infos])
    assert all(type(i["explored_m2"]) is float and type(i["coverage"]) is float for i in infos)
    assert areas.min() >= 0.0 and np.all(np.diff(areas) >= 0.0) and areas[-1] > areas[0]
    assert np.diff(areas) == pytest.approx([i["reward_explored"] for i in infos[1:]])
    coverage = np.array([i["coverage"] for i in infos])
    if physics == "generated":
        assert np.all(coverage == math.inf)
    else:
        assert np.all((coverage > 0) & (coverage <= 1)) and np.all(np.diff(coverage) >= 0)
        scene = env.scene  # the same cells: the fraction of the navigable floor, and their area in m^2
        assert areas == pytest.approx(coverage * scene.navigable.sum() * scene.grid_cell**2)


def test_pointnav_goals_are_offsets_with_euclidean_distance():
    env = oracle_env("generated", "MirageRoomNav-v0")
    obs, info = env.reset(seed=0)
    start = position(env)
    goal = env.simulator.subenv(0).task_state.goal
    assert 1.0 <= np.hypot(*(goal[:2] - start[:2])) <= 4.0 + 1e-5
    assert info["distance_to_goal"] == pytest.approx(np.hypot(*(goal[:2] - start[:2])), abs=1e-5)
    _, reward, _, _, info = env.step(FORWARD)
    now = position(env)
    assert info["distance_to_goal"] == pytest.approx(np.hypot(*(goal[:2] - now[:2])), abs=1e-5)
    assert info["reward_progress"] == pytest.approx(np.hypot(*(goal[:2] - start[:2])) - info["distance_to_goal"],
                                                    abs=1e-5)
    # A given goal right ahead is reached by walking to it (success by Euclidean distance).
    env.reset(seed=0)
    pose = env.simulator.subenv(0).pose.numpy()
    ahead = pose[:3, 3] + 0.6 * pose[:3, 2] * np.array([1, 1, 0]) / np.linalg.norm(pose[:2, 2])
    env.reset(seed=0, options={"goal": ahead})
    _, _, terminated, _, info = env.step(FORWARD)
    assert info["distance_to_goal"] < 0.5 and info["success"] and terminated


# ---------------------------------------------------------------------- start pictures


def picture_run(tiny_folder, room_seed, actions):
    env = gym.make("MirageRoom-v0", **tiny_env_kwargs(tiny_folder, physics="generated")).unwrapped
    image = np.random.default_rng(5).integers(0, 256, (RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    obs, info = env.reset(seed=11, options={"start_image": image, "room_seed": room_seed})
    record = [(info["collided"], info["blocked_by"], obs["cam_to_world"].tobytes())]
    for action in actions:
        obs, reward, _, _, info = env.step(action)
        record.append((info["collided"], info["blocked_by"], obs["cam_to_world"].tobytes(), reward))
    return record


def test_with_a_picture_collisions_do_not_depend_on_the_room_seed(tiny_folder):
    actions = [FORWARD, TURN, FORWARD, BACK, np.array([0.5, 0.5, -0.3, 0.2], np.float32), FORWARD, FORWARD]
    first = picture_run(tiny_folder, 0, actions)
    assert first == picture_run(tiny_folder, 1, actions) == picture_run(tiny_folder, 12345, actions)
    assert any(blocked for blocked, *_ in first[1:])  # the run does exercise the physics (BACK is unseen space)


@pytest.mark.parametrize("env_class", [MirageRoomEnv, MirageRoomNavEnv])
def test_a_picture_of_a_close_wall_blocks_a_forward_move_within_a_few_steps(env_class):
    env = env_class(generator=WallPicture(distance=1.0), resolution=SIZE, chunk=2)
    image = np.full((SIZE, SIZE, 3), 200, np.uint8)
    _, info = env.reset(seed=0, options={"start_image": image})
    assert info["physics"] == "generated"
    for step in range(4):
        _, _, _, _, info = env.step(FORWARD)
        if info["collided"]:
            break
    assert info["collided"] and info["blocked_by"] == "obstacle" and step <= 3
    # The body stopped a radius short of the wall, 1 m ahead of the start (within a 5 cm voxel).
    travelled = np.linalg.norm(position(env)[:2] - PICTURE_START_POSE[:2, 3].numpy())
    assert abs(travelled - (1.0 - env.simulator.camera_radius)) <= 0.05
    _, _, _, _, info = env.step(FORWARD)
    assert info["collided"]


def test_vector_env_runs_generated_physics_per_sub_env():
    envs = gym.make_vec("MirageRoom-v0", num_envs=2, vectorization_mode="vector_entry_point", generator="oracle",
                        resolution=SIZE, chunk=2, room_seeds=[3], physics="generated")
    _, info = envs.reset(seed=0)
    assert list(info["physics"]) == ["generated"] * 2
    bodies = [envs.unwrapped.simulator.subenv(i).body for i in range(2)]
    assert bodies[0] is not bodies[1] and all(b is not None for b in bodies)
    blocked = []
    for _ in range(25):
        _, _, _, _, info = envs.step(np.stack([FORWARD, FORWARD]))
        blocked.append(info["blocked_by"].tolist())
    assert any(b is not None for row in blocked for b in row)
    # Each sub-env as the single env seeded alike.
    for i in range(2):
        env = oracle_env("generated")
        env.reset(seed=i)
        single = [env.step(FORWARD)[4]["blocked_by"] for _ in range(25)]
        assert single == [row[i] for row in blocked]


# ---------------------------------------------------------------------- determinism and check_env


@pytest.mark.parametrize("physics", ["ground_truth", "generated"])
@pytest.mark.parametrize("env_id", ["MirageRoom-v0", "MirageRoomNav-v0"])
def test_check_env_and_seeded_determinism(env_id, physics):
    env = oracle_env(physics, env_id)
    check_env(env, skip_render_check=True)

    def run():
        e = oracle_env(physics, env_id)
        e.action_space.seed(4)
        obs, info = e.reset(seed=9)
        out = [(obs["cam_to_world"].tobytes(), obs["depth"].tobytes(), sorted(info.items()))]
        for _ in range(6):
            obs, reward, terminated, _, info = e.step(e.action_space.sample())
            out.append((obs["cam_to_world"].tobytes(), reward, sorted(info.items())))
            if terminated:
                break
        return out

    assert run() == run()


def test_check_env_generated_physics_with_a_model(tiny_folder):
    env = gym.make("MirageRoomNav-v0", **tiny_env_kwargs(tiny_folder, physics="generated")).unwrapped
    check_env(env, skip_render_check=True)


# ---------------------------------------------------------------------- the model decides the defaults


def test_the_shipped_defaults_stay_128_and_4(tiny_folder):
    oracle = gym.make("MirageRoom-v0", generator="oracle").unwrapped
    assert (oracle.simulator.resolution, oracle.simulator.chunk) == (128, 4)
    tiny = gym.make("MirageRoom-v0", generator=str(tiny_folder)).unwrapped  # AutoencoderTiny: any chunk
    assert (tiny.simulator.resolution, tiny.simulator.chunk) == (128, 4)


def test_a_folder_that_records_its_training_geometry_sets_the_defaults(tiny_folder, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_folder, run / "model")
    (run / "config.json").write_text(json.dumps({"model": {"resolution": RESOLUTION, "chunk_frames": 3}}))
    assert recorded_geometry(run / "model") == {"resolution": RESOLUTION, "chunk": 3}
    env = gym.make("MirageRoom-v0", generator=str(run / "model"), room_seeds=[0]).unwrapped
    assert (env.simulator.resolution, env.simulator.chunk) == (RESOLUTION, 3)
    obs, _ = env.reset(seed=0)
    assert obs["rgb"].shape == (3, RESOLUTION, RESOLUTION, 3)
    explicit = gym.make("MirageRoom-v0", generator=str(run / "model"), resolution=64, chunk=2).unwrapped
    assert (explicit.simulator.resolution, explicit.simulator.chunk) == (64, 2)
    with pytest.raises(ValueError, match="resolution 40 must be a multiple of"):
        gym.make("MirageRoom-v0", generator=str(run / "model"), resolution=40)


def test_a_wan_folder_and_its_lora_work_without_extra_arguments(tmp_path):
    from test_pretrained import wan_folder

    from mirage_gym.model.pretrained import add_lora

    base = wan_folder(tmp_path / "wan5b", a14b=False)
    gen = MirageGenerator.from_pretrained(base, num_inference_steps=1)
    assert model_geometry(gen, str(base), None, None) == (128, 5)  # 16x VAE x 2x2 patch; 1 + 4k frames
    with pytest.raises(ValueError, match="chunk=4 does not fit.*1 \\+ 4k"):
        model_geometry(gen, str(base), None, 4)
    add_lora(gen.transformer, rank=2)
    lora = gen.save_pretrained(tmp_path / "lora")
    for folder in (base, lora):
        env = gym.make("MirageRoom-v0", generator=str(folder), num_inference_steps=1).unwrapped
        assert (env.simulator.resolution, env.simulator.chunk) == (128, 5)
        obs, _ = env.reset(seed=0)
        obs, *_ = env.step(env.action_space.sample())
        assert obs["rgb"].shape == (5, 128, 128, 3)
    with pytest.raises(ValueError, match="chunk=4 does not fit"):
        gym.make("MirageRoom-v0", generator=str(base), chunk=4)
