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
    actions (``[B, 4]`` or ``[B]`` move indices). This is the one validation path for actions:
    the environments and the ``mirage-gym play`` viewer call it. Raises ``ValueError`` naming
    the problem.

    What is accepted follows ``action_space.contains``: a continuous action is a floating-point
    array (any float dtype; integer arrays only of a dtype that casts to float32 exactly, as
    ``int16``) or a (nested) list/tuple of plain numbers, e.g. ``[1, 0, 0, 0]``; a discrete action
    is an integer (Python or NumPy, or a 0-d integer array). Strings, booleans, ``None``, NaN or
    infinite values, wrong shapes and values out of bounds are refused (``contains`` lets strings
    and booleans through a cast; this does not).
    """
    if action_type not in ACTION_TYPES:
        raise ValueError(f"action_type must be one of {ACTION_TYPES}, got {action_type!r}")
    continuous = action_type == "continuous"
    if continuous:
        shape: tuple[int, ...] = (4,) if batch is None else (int(batch), 4)
        what = "(forward, right, yaw, pitch)"
    else:
        shape = () if batch is None else (int(batch),)
        what = "(move indices)"
    if not isinstance(action, (np.ndarray, list, tuple, int, float, np.generic)) and hasattr(action, "__array__"):
        action = np.asarray(action)  # e.g. a torch tensor
    if isinstance(action, np.generic):
        action = np.asarray(action)
    if isinstance(action, np.ndarray):
        if action.shape != shape:
            raise ValueError(f"action must have shape {shape} {what}, got {action.shape}")
        kind = action.dtype.kind
        numeric = kind == "f" or (kind in "iu" and np.can_cast(action.dtype, np.float32))  # bool casts too: refused
        if continuous and (kind == "b" or not numeric):
            raise ValueError(f"action must be a floating-point array (float32), got dtype {action.dtype}")
        if not continuous and kind not in "iu":
            raise ValueError(f"a discrete action must be an integer move index, got dtype {action.dtype}")
        values = action
    else:
        _check_nested(action, shape, shape, what, continuous)
        values = _leaves(action, len(shape))
        if continuous:
            try:
                values = np.array([float(v) for v in values], np.float64)
            except OverflowError:
                raise ValueError(f"action is out of bounds [-1, 1]: {_short(action)}") from None
        elif any(not 0 <= int(v) < len(MOVE_NAMES) for v in values):
            raise ValueError(f"action is out of bounds: moves are 0..{len(MOVE_NAMES) - 1} {MOVE_NAMES}, "
                             f"got {_short(action)}")
        else:
            values = np.array([int(v) for v in values], np.int64)
        values = values.reshape(shape)
    if continuous:
        if not np.isfinite(values).all():
            raise ValueError("action contains NaN or infinite values")
        if (np.abs(values) > 1.0).any():
            raise ValueError(f"action is out of bounds [-1, 1]: {values.tolist()}")
        return values.astype(np.float32).reshape(-1, 4)
    if ((values < 0) | (values >= len(MOVE_NAMES))).any():
        raise ValueError(f"action is out of bounds: moves are 0..{len(MOVE_NAMES) - 1} {MOVE_NAMES}, "
                         f"got {values.tolist()}")
    return DISCRETE_MOVES[values.reshape(-1)]


def _is_number(value: Any, continuous: bool) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if continuous:
        return isinstance(value, (int, float, np.integer, np.floating))
    return isinstance(value, (int, np.integer))


def _check_nested(value: Any, shape: tuple[int, ...], full: tuple[int, ...], what: str, continuous: bool) -> None:
    """``ValueError`` unless ``value`` is nested lists/tuples of ``shape`` holding numbers.

    The recursion goes no deeper than ``shape``: a deeply nested value is refused at that depth.
    """
    if not shape:
        if isinstance(value, (list, tuple, np.ndarray)):
            raise ValueError(f"action must have shape {full} {what}, got a deeper nesting: {_short(value)}")
        if not _is_number(value, continuous):
            if continuous:
                raise ValueError(f"action must be numbers {what}, got {_short(value)} ({type(value).__name__})")
            raise ValueError(f"a discrete action must be an integer move index, got {_short(value)} "
                             f"({type(value).__name__})")
        return
    if not isinstance(value, (list, tuple)) or len(value) != shape[0]:
        got = f"length {len(value)}" if isinstance(value, (list, tuple)) else type(value).__name__
        raise ValueError(f"action must have shape {full} {what}, got {got}: {_short(value)}")
    for item in value:
        if isinstance(item, np.ndarray):
            item = item.tolist() if item.size <= 64 else item
        _check_nested(item, shape[1:], full, what, continuous)


def _leaves(value: Any, depth: int) -> list[Any]:
    if depth == 0:
        return [value]
    return [leaf for item in value for leaf in _leaves(item.tolist() if isinstance(item, np.ndarray) else item,
                                                      depth - 1)]


def _short(value: Any, limit: int = 80) -> str:
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print (Python limits int -> str to 4300 digits)
        return f"an integer of {value.bit_length()} bits" if isinstance(value, int) else (
            f"a {type(value).__name__} holding an integer too long to print")
    return text if len(text) <= limit else text[: limit - 3] + "..."
