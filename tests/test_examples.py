"""The examples run as written: all of them in one fresh interpreter (as ``__main__``), with small arguments.

One subprocess for all examples keeps the test fast (torch and diffusers are imported once);
each still runs through its command line, exactly as a user would run it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import imageio.v3 as iio
import numpy as np
import pytest

from test_pretrained import wan_folder
from tiny_generator import save_tiny_generator

ROOT = Path(__file__).resolve().parent.parent
DRIVER = """
import json, runpy, sys
for argv in json.loads(sys.argv[1]):
    sys.argv = argv
    print("== " + argv[0], flush=True)
    runpy.run_path(argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("examples")
    tiny = str(save_tiny_generator(tmp / "tiny"))
    wan = str(wan_folder(tmp / "wan", a14b=False))
    photo = tmp / "photo.png"
    cv2.imwrite(str(photo), np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    small = ["--resolution", "32", "--chunk", "2"]
    runs = [
        ["examples/random_rollout.py", "--generator", tiny, "--steps", "3", "--out", str(tmp / "random.mp4"), *small],
        ["examples/revisit_demo.py", "--generator", tiny, "--turn", "30", "--out", str(tmp / "revisit.mp4"), *small],
        ["examples/start_from_image.py", "--generator", tiny, "--image", str(photo), "--steps", "2",
         "--out", str(tmp / "image.mp4"), *small],
        ["examples/batched_rollout.py", "--generator", "oracle", "--num-envs", "2", "--steps", "2",
         "--out", str(tmp / "batched.gif"), *small],
        ["examples/load_wan22.py", "--folder", wan, "--resolution", "32", "--chunk", "5", "--num-inference-steps",
         "1", "--steps", "1", "--out", str(tmp / "wan.mp4")],
    ]
    result = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(runs)], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"dir": str(tmp), "stdout": result.stdout}


def frames(path: str) -> np.ndarray:
    return iio.imread(path, index=None)


def test_random_rollout_video(outputs):
    video = frames(f"{outputs['dir']}/random.mp4")
    assert video.shape[0] == 4 and video.shape[2] >= 3 * 32  # reset + 3 steps, grid of three panels
    assert "coverage" in outputs["stdout"]


def test_revisit_demo_reports_both_memories(outputs):
    assert "memory=latent" in outputs["stdout"] and "memory=none" in outputs["stdout"]
    assert frames(f"{outputs['dir']}/revisit.mp4").shape[0] == 1 + 2 * 2  # start, 2 steps away, 2 back


def test_start_from_image_and_batched_and_wan(outputs):
    assert frames(f"{outputs['dir']}/image.mp4").shape[0] == 1 + 2 * 2
    assert frames(f"{outputs['dir']}/batched.gif").shape[0] == 3
    assert frames(f"{outputs['dir']}/wan.mp4").shape[0] == 1 + 5
    assert "per env-step" in outputs["stdout"]
