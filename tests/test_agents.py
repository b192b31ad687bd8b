"""The agents' scripts as a user runs them (oracle frames, a few steps)."""

import re
import subprocess
import sys
from pathlib import Path

AGENTS = Path(__file__).resolve().parents[1] / "agents"


def test_evaluate_prints_every_column_for_the_random_agent():
    steps = 6
    result = subprocess.run(
        [sys.executable, str(AGENTS / "evaluate.py"), "--env", "MirageRoom-v0", "--generator", "oracle",
         "--episodes", "2", "--num-envs", "2", "--max-episode-steps", str(steps), "--threads", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    header, row = result.stdout.strip().splitlines()[-2:]
    assert header.split() == ["policy", "return", "coverage", "explored_m2", "success", "length", "collisions"]
    values = re.findall(r"-?\d+\.\d+", row)
    # return, coverage, explored_m2, collisions as mean +- std; length
    assert row.startswith("random") and len(values) == 9
    coverage, explored, length, collisions = float(values[2]), float(values[4]), float(values[6]), float(values[7])
    assert 0 < coverage <= 1 and explored > 0 and length == steps and 0 <= collisions <= steps
