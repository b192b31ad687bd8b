"""mirage_gym: Gymnasium environments whose world is a generated video kept
consistent by a persistent 3D latent cache (the "Mirage" approach).

See ``mirage_gym.geometry`` for the single camera convention, ``mirage_gym.world``
for the procedural ground-truth rooms, ``mirage_gym.memory`` for the latent cache
and its pixel-space baseline, ``mirage_gym.envs`` for the Gymnasium environments
(registered here on import, without importing torch: the entry points are strings).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mirage-gym")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

import gymnasium as _gym

# (id, single env class, vector env class, max_episode_steps); classes live in mirage_gym.envs.
_ENVS = (
    ("MirageRoom-v0", "MirageRoomEnv", "MirageRoomVectorEnv", 200),
    ("MirageRoomNav-v0", "MirageRoomNavEnv", "MirageRoomNavVectorEnv", 100),
)
for _id, _single, _vector, _steps in _ENVS:
    if _id not in _gym.registry:
        _gym.register(
            id=_id,
            entry_point=f"mirage_gym.envs.room:{_single}",
            vector_entry_point=f"mirage_gym.envs.vector:{_vector}",
            max_episode_steps=_steps,
        )

__all__ = ["__version__"]
