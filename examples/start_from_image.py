"""Start the generated world from your own picture, then walk forward and turn.

The image is resized (centre-cropped to a square) to the env's resolution and given as
``reset(options={"start_image": ...})``. No procedural house stands behind a picture: the
generated world itself decides collisions and rewards (``physics="generated"``: its shown
surfaces block, and the body walks only over floor the frames have shown). Without --image, a
view of a procedural room stands in for your photo.

    .venv/bin/python examples/start_from_image.py --image my_room.jpg --out from_image.mp4
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np

from mirage_gym import geometry
from mirage_gym.envs import MirageRoomEnv
from mirage_gym.video import write_video
from mirage_gym.world import Renderer, make_scene


def load_square(path: str, size: int) -> np.ndarray:
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"could not read an image from {path}")
    h, w = image.shape[:2]
    side = min(h, w)
    crop = image[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2]
    return np.ascontiguousarray(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)[..., ::-1])


def stand_in_photo(size: int) -> np.ndarray:
    scene = make_scene(12345)
    pose = scene.sample_pose(np.random.default_rng(1))
    k = geometry.intrinsics_from_fov(90.0, size, size)
    return Renderer(scene).render(pose[None], k, size, size).rgb[0].numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", help="a picture file (any size; centre-cropped and resized)")
    parser.add_argument("--generator", default="default", help="'default' or a model folder")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=None, help="default: the model's")
    parser.add_argument("--chunk", type=int, default=None, help="default: the model's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="from_image.mp4")
    args = parser.parse_args()

    env = MirageRoomEnv(generator=args.generator, resolution=args.resolution, chunk=args.chunk)
    size = env.simulator.resolution  # the model's unless given
    image = load_square(args.image, size) if args.image else stand_in_photo(size)
    obs, info = env.reset(seed=args.seed, options={"start_image": image})
    frames = [obs["rgb"][0]]
    blocked = []
    for k in range(args.steps):
        action = np.array([0.6, 0.0, 0.4 if k % 8 < 4 else -0.4, 0.0], np.float32)
        obs, _, _, _, info = env.step(action)
        frames.extend(obs["rgb"])
        if info["collided"]:
            blocked.append(f"step {k}: {info['blocked_by']}")
    print(f"physics {info['physics']}: floor shown {info['explored_m2']:.1f} m^2, stopped {len(blocked)} times "
          f"({', '.join(blocked) or 'never'})")
    print(f"{len(frames)} frames -> {write_video(args.out, np.stack(frames), fps=8)}")


if __name__ == "__main__":
    main()
