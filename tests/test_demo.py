"""The README's first command: ``mirage-gym demo`` drives MirageRoom-v0 and writes generated | depth | truth."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np

from mirage_gym.cli import main
from mirage_gym.demo import key_frames, look_around_and_return
from tiny_generator import CHUNK, RESOLUTION, save_tiny_generator


def test_demo_writes_generated_depth_and_truth_side_by_side(tmp_path, capsys):
    folder = save_tiny_generator(tmp_path / "tiny")
    out = tmp_path / "demo.mp4"
    args = ["demo", "--generator", str(folder), "--resolution", str(RESOLUTION), "--chunk", str(CHUNK),
            "--turn-steps", "4", "--walk-steps", "1", "--out", str(out), "--strip", str(tmp_path / "strip.png")]
    assert main(args) == 0
    steps = len(look_around_and_return(4, 1))
    frames = iio.imread(out)
    assert frames.shape[0] == 1 + steps * CHUNK  # the start frame, then every frame of every chunk
    assert frames.shape[1] >= RESOLUTION and frames.shape[2] >= 3 * RESOLUTION  # three panels (mp4 may pad)
    assert f"{steps} steps" in capsys.readouterr().out
    # The strip stacks five key frames, the last of them the final frame of the return.
    assert key_frames(4, 1, CHUNK)[-1] == frames.shape[0] - 1
    assert iio.imread(tmp_path / "strip.png").shape == (5 * RESOLUTION, 3 * RESOLUTION + 4, 3)


def test_demo_path_turns_a_full_circle_and_comes_back():
    actions = np.stack(look_around_and_return(24, 6))
    assert actions[:, 2].sum() == 24 + 12  # 360 degrees, then 180 to face back
    assert actions[:, 0].sum() == 12  # out and back


def test_demo_reports_a_missing_model_without_a_traceback(tmp_path, capsys):
    assert main(["demo", "--generator", str(tmp_path / "no-model"), "--out", str(tmp_path / "d.mp4")]) == 2
    assert "no-model" in capsys.readouterr().err
    assert not (tmp_path / "d.mp4").exists()
