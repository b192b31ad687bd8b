"""Action spaces and their validation: continuous ``Box(-1, 1, (4,))`` or seven discrete moves.

Continuous actions are, in this order, forward, right, yaw (left positive) and pitch (up
positive), scaled by ``max_translation`` metres and ``max_rotation`` degrees per step.
Discrete moves are the same motions at full size (see :data:`DISCRETE_MOVES`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

__all__ = ["ACTION_TYPES", "DISCRETE_MOVES", "MOVE_NAMES", "single_action_space", "to_motion"]

ACTION_TYPES = ("continuous", "discrete")
MOVE_NAMES = ("stay", "forward", "back", "turn_left", "turn_right", "look_up", "look_down")
DISCRETE_MOVES = np.array(
    [[0, 0, 0, 0], [1, 0, 0, 0], [-1, 0, 0, 0], [0, 0, 1, 0], [0, 0, -1, 0], [0, 0, 0, 1], [0, 0, 0, -1]],
    dtype=np.float32,
)


def single_action_space(action_type: str) -> spaces.Space:
    if action_type == "continuous":
        return spaces.Box(-1.0, 1.0, (4,), np.float32)
    if action_type == "discrete":
        return spaces.Discrete(len(MOVE_NAMES))
    raise ValueError(f"action_type must be one of {ACTION_TYPES}, got {action_type!r}")


def to_motion(action: Any, action_type: str, batch: int | None = None) -> np.ndarray:
    """Validate ``action`` and return the motion ``[B, 4]`` float32 in ``[-1, 1]``.

    ``batch=None`` takes one action (a ``[4]`` vector or a move index); otherwise ``batch``
    actions (``[B, 4]`` or ``[B]`` move indices). Raises ``ValueError`` naming the problem.
    """
    arr = np.asarray(action)
    if action_type == "continuous":
        shape = (4,) if batch is None else (batch, 4)
        if arr.shape != shape:
            raise ValueError(f"action must have shape {shape} (forward, right, yaw, pitch), got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"action must be a floating-point array (float32), got dtype {arr.dtype}")
        if not np.isfinite(arr).all():
            raise ValueError("action contains NaN or infinite values")
        if (np.abs(arr) > 1.0).any():
            raise ValueError(f"action is out of bounds [-1, 1]: {arr.tolist()}")
        return arr.astype(np.float32).reshape(-1, 4)
    shape = () if batch is None else (batch,)
    if arr.shape != shape:
        raise ValueError(f"action must have shape {shape} (move indices), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"a discrete action must be an integer move index, got dtype {arr.dtype}")
    if ((arr < 0) | (arr >= len(MOVE_NAMES))).any():
        raise ValueError(f"action is out of bounds: moves are 0..{len(MOVE_NAMES) - 1} {MOVE_NAMES}, got {arr.tolist()}")
    return DISCRETE_MOVES[arr.reshape(-1)]
