"""Procedural ground truth: houses of textured rooms, a fast batched renderer and camera trajectories.

Example::

    import numpy as np
    from mirage_gym import geometry
    from mirage_gym.world import Renderer, make_scene, trajectories

    scene = make_scene(0, moving_objects=2)
    poses = trajectories.walk_and_return(scene, np.random.default_rng(0), 48)   # [48, 4, 4]
    k = geometry.intrinsics_from_fov(90.0, 128, 128)
    out = Renderer(scene).render(poses, k, 128, 128, time=0.0)  # rgb, depth, instance, dynamic

The world is ground truth for training data, start images and exact evaluation; the envs'
observations come from the generator, not from here (except in an explicit oracle mode).
"""

from mirage_gym.world import trajectories
from mirage_gym.world.generate import make_scene
from mirage_gym.world.renderer import Renderer, RenderOutput
from mirage_gym.world.scene import MovingObjects, Quads, Scene

__all__ = ["Scene", "Quads", "MovingObjects", "make_scene", "Renderer", "RenderOutput", "trajectories"]
