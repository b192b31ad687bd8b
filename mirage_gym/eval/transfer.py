"""`mirage-gym eval transfer`: dream-to-real (see :func:`mirage_gym.eval.rl.dream_to_real`)."""

from mirage_gym.eval.rl import add_transfer_arguments as add_arguments
from mirage_gym.eval.rl import run_transfer as run

__all__ = ["add_arguments", "run"]
