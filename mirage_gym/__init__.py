"""mirage_gym: Gymnasium environments whose world is a generated video kept
consistent by a persistent 3D latent cache (the "Mirage" approach).

See ``mirage_gym.geometry`` for the single camera convention, ``mirage_gym.world``
for the procedural ground-truth rooms, ``mirage_gym.memory`` for the latent cache
and its pixel-space baseline.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mirage-gym")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
