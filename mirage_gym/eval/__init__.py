"""Measure a generated world: consistency metrics and fidelity, per memory mode.

Python API::

    from mirage_gym.envs import load_generator
    from mirage_gym.eval import EvalConfig, evaluate, markdown_table

    result = evaluate(load_generator("path/to/model"), EvalConfig.quick())
    print(markdown_table(result))

Command line: ``mirage-gym eval --generator PATH|default|oracle --out DIR [--quick]``.

* :mod:`~mirage_gym.eval.consistency` -- the metrics on frames with known poses;
* :mod:`~mirage_gym.eval.trajectories` -- the fixed, seeded paths on held-out rooms;
* :mod:`~mirage_gym.eval.runner` -- running them in every memory mode, scoring, summarising;
* :mod:`~mirage_gym.eval.reprojection` -- the ceiling the latent cache puts on a moved view;
* :mod:`~mirage_gym.eval.report` -- the markdown table and the plots.
* :mod:`~mirage_gym.eval.compare` -- two runs paired trajectory by trajectory: which figures differ beyond noise.
"""

from mirage_gym.eval.consistency import (
    camera_control_error,
    flow_error,
    induced_flow,
    observed_mask,
    optical_flow,
    relative_pose,
    reprojection_error,
    revisit_pairs,
)
from mirage_gym.eval.report import markdown_table, plot_fidelity, plot_summary
from mirage_gym.eval.reprojection import MOVES, Move, reprojection_ceiling
from mirage_gym.eval.runner import (
    METRICS,
    MODES,
    EvalConfig,
    EvalResult,
    evaluate,
    observed_filter_counts,
    render_truth,
    rollout,
    score,
)
from mirage_gym.eval.trajectories import KINDS, EvalTrajectory, eval_trajectories, make_trajectory

__all__ = [
    "EvalConfig",
    "EvalResult",
    "EvalTrajectory",
    "KINDS",
    "METRICS",
    "MODES",
    "MOVES",
    "Move",
    "camera_control_error",
    "eval_trajectories",
    "evaluate",
    "flow_error",
    "induced_flow",
    "make_trajectory",
    "markdown_table",
    "observed_mask",
    "optical_flow",
    "plot_fidelity",
    "plot_summary",
    "relative_pose",
    "render_truth",
    "observed_filter_counts",
    "reprojection_ceiling",
    "reprojection_error",
    "revisit_pairs",
    "rollout",
    "score",
]
