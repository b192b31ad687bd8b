"""The scene behind ``mirage-gym play``: one environment driven by one user, with no web code.

:class:`PlaySession` owns a ``MirageRoom-v0`` environment and everything the page shows: the
frames and depth of the last step, the top-down map of the scene memory, the camera's path,
and the frames recorded for the mp4. Its public methods are the page's controls (move, reset
with a seed, switch the memory mode, start from an uploaded image, save a video); each one
validates its input before touching anything, so a bad request leaves the scene as it was,
and a lock makes them run one at a time whatever thread calls them.
"""

from __future__ import annotations

import io
import math
import struct
import tempfile
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from mirage_gym import geometry
from mirage_gym.envs import MirageRoomEnv
from mirage_gym.envs.actions import to_motion
from mirage_gym.memory import LatentCache
from mirage_gym.model.generator import MEMORY_MODES
from mirage_gym.play.latent_rgb import LatentColorProbe, calibration_colors
from mirage_gym.play.topdown import TopDownMap
from mirage_gym.video import colorize_depth, side_by_side, write_video

__all__ = ["MAX_IMAGE_PIXELS", "MAX_UPLOAD_BYTES", "PlaySession", "Update", "decode_start_image", "image_header"]

MAX_UPLOAD_BYTES = 10 * 2**20
# A decoded image takes 3 bytes a pixel: 36 megapixels (an 8K frame, a 6000x6000 photo) is ~110 MB.
MAX_IMAGE_PIXELS = 36_000_000
MAX_CONCURRENT_DECODES = 2
_DECODES = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)
_DECODE_WAIT = 30.0  # seconds an upload waits for a decode slot
_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "TIFF")  # MPO: a camera JPEG with a preview
SEED_LIMIT = 2**31  # seeds are in [0, SEED_LIMIT)
_MAP_POINTS = 500_000  # at most this many memory points are drawn on the map (the pixel memory grows without bound)
_ORACLE_MAP_CELL = 0.05  # metres per map square in oracle mode (no memory, no voxel size)


@dataclass(frozen=True)
class Update:
    """What the page shows after a request.

    Attributes:
        rgb: ``[T, H, W, 3]`` uint8, the new frames (``T = chunk`` after a step, 1 after a reset).
        depth: ``[T, H, W]`` float32, their generated depth in metres.
        pose: ``[4, 4]`` the camera's ``cam_to_world`` after the last frame.
        map: ``[h, w, 3]`` uint8, the top-down map of the scene memory.
        step_time: seconds the generator spent on the request.
        memory: the memory mode (``"latent"``, ``"pixel"``, ``"none"``; ``"oracle"`` for the ground truth).
        memory_bytes: bytes the scene memory holds.
        memory_points: tokens (latent cache) or points (pixel memory) it holds.
        frames_generated: frames since the last reset.
        collided: whether the last move was stopped.
        seed: the reset seed of the episode (it picks the room and the start pose).
        room_seed: the procedural room's seed (``None``: a picture's generated world, which has no house).
        start_image: whether the episode started from an uploaded image.
        physics: the physics in force (``"ground_truth"``: the house; ``"generated"``: the generated world).
        blocked_by: what stopped the last move (``"obstacle"``, ``"unseen"`` space, or ``None``).
    """

    rgb: np.ndarray
    depth: np.ndarray
    pose: np.ndarray
    map: np.ndarray
    step_time: float
    memory: str
    memory_bytes: int
    memory_points: int
    frames_generated: int
    collided: bool
    seed: int
    room_seed: int | None
    start_image: bool
    physics: str = "ground_truth"
    blocked_by: str | None = None

    @property
    def position_yaw_pitch(self) -> tuple[list[float], float, float]:
        """Camera position (metres) and yaw, pitch (degrees; yaw counter-clockwise from +x, pitch up)."""
        position, yaw, pitch = geometry.position_yaw_pitch_from_pose(torch.from_numpy(self.pose))
        return position.tolist(), math.degrees(float(yaw)), math.degrees(float(pitch))


def too_large_message(size: int, limit: int) -> str:
    return f"the image file is too large ({size / 2**20:.1f} MiB); the limit is {limit / 2**20:g} MiB"


def image_header(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) as the file's header declares them, read without decoding the pixels.

    ``ValueError`` for a file that is not a PNG, JPEG, WebP, BMP or TIFF image.
    """
    from PIL import Image

    Image.init()
    prefix = data[:16]
    for name in _FORMATS:
        # Pillow's own opener for the format, as Image.open uses it, without Image.open's decompression-bomb
        # check (it raises for huge images without saying their size; this function reports the size).
        factory, accept = Image.OPEN.get(name, (None, None))
        if factory is None or (accept is not None and not accept(prefix)):
            continue
        try:
            with factory(io.BytesIO(data), "") as image:  # parses the header only
                return str(image.format or name), int(image.width), int(image.height)
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError):
            continue
    raise ValueError("the uploaded file is not an image that can be read (use PNG, JPEG, BMP, WebP or TIFF)")


def decode_start_image(data: bytes, resolution: int, max_bytes: int = MAX_UPLOAD_BYTES,
                       max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """An uploaded file -> a start image ``[resolution, resolution, 3]`` uint8 RGB.

    The image is centre-cropped to a square and resized (area interpolation) to the env's
    resolution. ``ValueError`` naming the problem for an empty file, one over ``max_bytes``,
    one that is not an image OpenCV can read, and one whose header declares more than
    ``max_pixels`` pixels: that is refused before decoding (a small file can declare a huge
    image: a decompression bomb). At most :data:`MAX_CONCURRENT_DECODES` decodes run at once.
    """
    if not data:
        raise ValueError("the uploaded file is empty")
    if len(data) > max_bytes:
        raise ValueError(too_large_message(len(data), max_bytes))
    kind, w, h = image_header(data)
    if w < 1 or h < 1:
        raise ValueError(f"the {kind} image declares a size of {w}x{h} pixels")
    if w * h > max_pixels:
        raise ValueError(f"the {kind} image is too large: its header declares {w}x{h} pixels "
                         f"({w * h / 1e6:.1f} megapixels); the limit is {max_pixels / 1e6:g} megapixels")
    if not _DECODES.acquire(timeout=_DECODE_WAIT):
        raise ValueError("the server is busy decoding other images; try again")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    finally:
        _DECODES.release()
    if image is None:
        raise ValueError(f"the uploaded {kind} image could not be decoded (damaged or unsupported)")
    h, w = image.shape[:2]
    if h * w > max_pixels:  # the decoder read another size than the header said
        raise ValueError(f"the {kind} image decodes to {w}x{h} pixels; the limit is {max_pixels / 1e6:g} megapixels")
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[top : top + side, left : left + side]
    interpolation = cv2.INTER_AREA if side > resolution else cv2.INTER_CUBIC
    resized = cv2.resize(square, (resolution, resolution), interpolation=interpolation)
    return np.ascontiguousarray(resized[..., ::-1])  # OpenCV decodes to BGR


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must be an integer in [0, {SEED_LIMIT}), got {seed!r}")
    return int(seed)


def _check_action(action: object) -> np.ndarray:
    """The env's own validation (:func:`~mirage_gym.envs.actions.to_motion`): what the env accepts, nothing else."""
    return to_motion(action, "continuous")[0]


class PlaySession:
    """One driven scene: a ``MirageRoom-v0`` environment and what the page shows of it.

    Args:
        generator: ``"default"`` (the shipped weights), ``"oracle"`` (the ground-truth renderer)
            or a model folder; as the environments' ``generator=``.
        memory: ``"latent"``, ``"pixel"`` or ``"none"`` (the oracle has no memory to choose).
        resolution, chunk, moving_objects, device: of the environment.
        seed: the first reset's seed.
        max_upload_bytes: the largest start image file accepted.
        max_recorded_frames: the mp4 keeps the last this many frames.
        map_size: about this many pixels along the map's longer side.

    Raises:
        FileNotFoundError: the generator's weights are missing (as the environments raise it).
    """

    def __init__(
        self,
        generator: str | Path = "default",
        *,
        memory: str = "latent",
        resolution: int | None = None,
        chunk: int | None = None,
        seed: int = 0,
        moving_objects: int = 0,
        device: str = "cpu",
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        max_recorded_frames: int = 1000,
        map_size: int = 480,
        physics: str | None = None,
    ) -> None:
        if memory not in MEMORY_MODES:
            raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")
        if max_upload_bytes < 1 or max_recorded_frames < 1:
            raise ValueError("max_upload_bytes and max_recorded_frames must be >= 1")
        seed = _check_seed(seed)
        self.generator = str(generator)
        self.physics = physics
        self._resolution, self._chunk = resolution, chunk  # None: the model's (known once the env is made)
        self.moving_objects = int(moving_objects)
        self.device = device
        self.max_upload_bytes = int(max_upload_bytes)
        self.map_size = int(map_size)
        self._lock = threading.Lock()
        self._recorded: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=int(max_recorded_frames))
        self._path: list[np.ndarray] = []
        self._probe: LatentColorProbe | None = None
        self._env = self._make_env(memory)
        self.resolution, self.chunk = self._env.simulator.resolution, self._env.simulator.chunk
        self.oracle = self._env.generator.renders_ground_truth
        self._memory = memory
        self._start_image: np.ndarray | None = None
        self._start_pose: np.ndarray | None = None  # the last procedural start pose (a picture restarts there)
        self._seed = seed
        self._map: TopDownMap | None = None
        self._latest = self._restart(self._env, memory, seed, None)

    # ------------------------------------------------------------------ state

    @property
    def memory_modes(self) -> tuple[str, ...]:
        """The memory modes the page can switch between (none for the oracle, which has no memory)."""
        return () if self.oracle else MEMORY_MODES

    @property
    def latest(self) -> Update:
        """What the page shows now."""
        return self._latest

    @property
    def recorded_frames(self) -> int:
        """Frames the next :meth:`video` will hold."""
        return len(self._recorded)

    def _make_env(self, memory: str) -> MirageRoomEnv:
        return MirageRoomEnv(
            generator=self.generator, memory=memory, resolution=self._resolution, chunk=self._chunk,
            moving_objects=self.moving_objects, report_step_time=True, device=self.device, physics=self.physics,
        )

    def _restart(self, env: MirageRoomEnv, memory: str, seed: int, image: np.ndarray | None) -> Update:
        """Reset ``env`` and make it the session's scene (called with everything validated)."""
        # A picture restarts from the current start pose (the house's, where one was drawn): no house is behind it.
        options = None if image is None else {"start_image": image, "start_pose": self._start_pose}
        obs, info = env.reset(seed=seed, options=options)
        self._env, self._memory, self._seed, self._start_image = env, memory, seed, image
        if image is None:
            self._start_pose = obs["cam_to_world"][0].astype(np.float64)
        # One map geometry for every memory mode of a generator (its latent cache's voxels), so maps compare.
        cell = _ORACLE_MAP_CELL if self.oracle else float(env.generator.voxel_size)
        self._map = TopDownMap(env.scene, cell=cell, size=self.map_size, fov=env.simulator.fov,
                               centre=obs["cam_to_world"][0][:2, 3])
        if not self.oracle and self._probe is None:
            self._probe = self._fit_probe(env)
        pose = obs["cam_to_world"][-1]
        self._path = [pose[:3, 3].copy()]
        self._recorded.clear()
        return self._update(obs, info, frames=1)

    def _fit_probe(self, env: MirageRoomEnv) -> LatentColorProbe:
        """Latent colours from the VAE: views of the first room plus solid colours (see :mod:`.latent_rgb`)."""
        world = env.simulator.subenv(0).world
        rng = np.random.default_rng(0)
        poses = torch.stack([world.scene.sample_pose(rng) for _ in range(8)])
        r = self.resolution
        views = world.renderer.render(poses, env.simulator.intrinsics, r, r).rgb.numpy()
        solids = np.broadcast_to(calibration_colors()[:, None, None], (27, r, r, 3))
        return LatentColorProbe.from_vae(env.generator.vae, np.concatenate([views, solids]))

    def _memory_points(self) -> tuple[np.ndarray, np.ndarray, int]:
        """World points, colours and the count of the scene memory (empty for ``none`` and the oracle)."""
        store = self._env.generator.memory_store  # None for "none" and the oracle
        if store is None:
            return np.empty((0, 3), np.float32), np.empty((0, 3), np.uint8), 0
        xyz, values = store.points(0)
        count = len(xyz)
        stride = max(1, -(-count // _MAP_POINTS))
        xyz, values = xyz[::stride], values[::stride]
        colors = self._probe(values) if isinstance(store, LatentCache) else values.cpu().numpy()
        return xyz.cpu().numpy(), colors, count

    def _update(self, obs: dict, info: dict, frames: int) -> Update:
        rgb, depth = obs["rgb"][-frames:], obs["depth"][-frames:, ..., 0]
        for k in range(frames):
            self._recorded.append((rgb[k], depth[k].astype(np.float16)))
        pose = obs["cam_to_world"][-1].astype(np.float32)
        points, colors, count = self._memory_points()
        body = self._env.simulator.subenv(0).body  # generated physics' state (None: the house decides)
        scene = self._env.scene
        self._latest = Update(
            rgb=rgb, depth=depth, pose=pose,
            map=self._map.draw(points, colors, np.stack(self._path), pose,
                               physics=None if body is None else body.maps(), blocked_by=info["blocked_by"]),
            step_time=float(info["step_time"]), memory=self._env.generator.memory,
            memory_bytes=int(info["memory_bytes"]), memory_points=count,
            frames_generated=int(info["frames_generated"]), collided=bool(info["collided"]),
            seed=self._seed, room_seed=None if scene is None else int(scene.seed),
            start_image=self._start_image is not None, physics=str(info["physics"]), blocked_by=info["blocked_by"],
        )
        return self._latest

    # ------------------------------------------------------------------ controls

    def step(self, action: Sequence[float]) -> Update:
        """Move the camera: ``action`` is forward, right, yaw (left positive), pitch (up positive) in ``[-1, 1]``."""
        action = _check_action(action)
        with self._lock:
            obs, _, _, _, info = self._env.step(action)
            self._path.extend(obs["cam_to_world"][:, :3, 3])
            return self._update(obs, info, frames=self.chunk)

    def reset(self, seed: int) -> Update:
        """A new episode from ``seed`` (it picks the room and the start pose), from the ground-truth view."""
        seed = _check_seed(seed)
        with self._lock:
            return self._restart(self._env, self._memory, seed, None)

    def start_from_image(self, data: bytes) -> Update:
        """Restart the current room and start pose from an uploaded image file (see :func:`decode_start_image`)."""
        image = decode_start_image(data, self.resolution, self.max_upload_bytes)
        with self._lock:
            return self._restart(self._env, self._memory, self._seed, image)

    def set_memory(self, mode: str) -> Update:
        """Switch the memory mode; the episode restarts from the same room, start pose and start image."""
        if self.oracle:
            raise ValueError("the oracle renders the ground truth and keeps no memory; memory modes apply to a "
                             "generated world (--generator default or a model folder)")
        if mode not in MEMORY_MODES:
            raise ValueError(f"memory mode must be one of {MEMORY_MODES}, got {mode!r}")
        with self._lock:
            if mode == self._memory:
                return self._latest
            env = self._make_env(mode)  # loads the generator again; the old scene stays until it worked
            old = self._env
            update = self._restart(env, mode, self._seed, self._start_image)
            old.close()
            return update

    def video(self, fps: int = 12) -> bytes:
        """The recorded frames (generated | depth side by side) as mp4 bytes."""
        with self._lock:
            rgb = np.stack([frame for frame, _ in self._recorded])
            depth = np.stack([d for _, d in self._recorded]).astype(np.float32)
        with tempfile.TemporaryDirectory() as folder:
            path = write_video(Path(folder) / "play.mp4", side_by_side([rgb, colorize_depth(depth)]), fps=fps)
            return path.read_bytes()

    def close(self) -> None:
        self._env.close()
