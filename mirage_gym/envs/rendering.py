"""``render_mode="human"``: an OpenCV window, or a clear error where none can be opened."""

from __future__ import annotations

import os
import sys

import cv2
import numpy as np

__all__ = ["HumanViewer", "human_render_problem", "render_modes"]


def human_render_problem() -> str | None:
    """Why no window can be opened here (no display, headless OpenCV), or ``None`` when one can."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return ("render_mode='human' needs a display, and DISPLAY / WAYLAND_DISPLAY is not set; use "
                "render_mode='rgb_array' and save the frames (e.g. mirage_gym.video.write_video)")
    gui = [line for line in cv2.getBuildInformation().splitlines() if line.strip().startswith("GUI:")]
    if gui and gui[0].split(":", 1)[1].strip().upper() == "NONE":
        return ("render_mode='human' needs OpenCV with GUI support, but this OpenCV build has none "
                "(opencv-python-headless); install opencv-python or use render_mode='rgb_array'")
    return None


def render_modes() -> list[str]:
    """The render modes available on this machine: ``"human"`` only where a window can be opened.

    Declaring ``"human"`` only where it works keeps Gymnasium's checker (which makes the env in
    every declared mode) passing on headless machines; asking for it there is a clear error.
    """
    return ["rgb_array"] if human_render_problem() else ["rgb_array", "human"]


class HumanViewer:
    """Shows RGB frames in an OpenCV window, ``scale`` times enlarged."""

    def __init__(self, title: str = "mirage_gym", scale: int = 4) -> None:
        problem = human_render_problem()
        if problem:
            raise RuntimeError(problem)
        self.title = title
        self.scale = int(scale)

    def show(self, frame: np.ndarray) -> None:
        big = cv2.resize(frame, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_NEAREST)
        cv2.imshow(self.title, big[..., ::-1])
        cv2.waitKey(1)

    def close(self) -> None:
        cv2.destroyWindow(self.title)
