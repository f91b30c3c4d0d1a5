"""Which frames of a video become photos: spread along the camera's path, each the sharpest near
its place on it.

    grey = motion_frame(image)                          # a small grey copy of each frame
    motion.append(image_motion(previous_grey, grey))    # how far the picture moved since the last one
    chosen = choose_frames(motion, sharpness, count=60, min_step=0.005)

Every Nth frame would waste frames where the filmer paused, miss views where they hurried and
keep shaken frames. Instead the camera's path is measured by the image motion between
consecutive frames (optical flow over the textured pixels, so a plain backdrop, or the still
background of a turntable, does not count), cut into equal stretches of motion, and from around
the middle of each stretch the sharpest frame is taken.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MOTION_WIDTH = 160  # px: frames are compared at this width (flow of a few pixels is enough)
TEXTURED_QUANTILE = 0.75  # motion is measured on the pixels with the top quarter of the gradient
WINDOW = 1 / 3  # a frame is taken from within this share of a stretch around its middle


@dataclass(frozen=True)
class ChosenFrame:
    index: int
    first: int  # the frames it was the sharpest of
    last: int
    relative_sharpness: float  # its sharpness over the video's median frame's

    def why(self) -> str:
        return (f"sharpest of frames {self.first}-{self.last} "
                f"({self.relative_sharpness:.2f}x the video's median sharpness)")


def motion_frame(image: np.ndarray) -> np.ndarray:
    """[h, w, 3] uint8 -> [h', MOTION_WIDTH] uint8 grey, the copy `image_motion` compares."""
    import cv2

    height = max(1, round(image.shape[0] * MOTION_WIDTH / image.shape[1]))
    return cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (MOTION_WIDTH, height), interpolation=cv2.INTER_AREA)


def image_motion(previous: np.ndarray, current: np.ndarray) -> float:
    """How far the picture moved between two `motion_frame`s: the mean optical-flow length over
    the textured pixels of the first, in frame diagonals (0 when nothing has texture). The mean,
    not the median: orbiting an object moves its surface while its outline, often most of the
    strong edges, stays put (the median read 0 there on a rendered orbit, and more in a pause)."""
    import cv2

    flow = cv2.calcOpticalFlowFarneback(previous, current, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    gradient = np.hypot(cv2.Sobel(previous, cv2.CV_32F, 1, 0), cv2.Sobel(previous, cv2.CV_32F, 0, 1))
    textured = (gradient >= np.quantile(gradient, TEXTURED_QUANTILE)) & (gradient > 0)
    if not textured.any():
        return 0.0
    return float(np.hypot(flow[..., 0], flow[..., 1])[textured].mean() / np.hypot(*previous.shape))


def choose_frames(motion: np.ndarray, sharpness: np.ndarray, count: int, min_step: float) -> list[ChosenFrame]:
    """Up to `count` frames, in order, from per-frame `motion` [N] (from the frame before; the
    first's is 0) and `sharpness` [N]. The camera's path (the motion summed) is cut into equal
    stretches, no shorter than `min_step` (fewer frames from a video that barely moves; one from
    a still one), and each stretch gives the sharpest frame within WINDOW of its middle."""
    path = np.cumsum(motion)
    total = float(path[-1])
    n = max(1, min(count, len(path), int(total / min_step) if min_step > 0 else count))
    step = total / n
    typical = float(np.median(sharpness)) or 1.0
    chosen: list[ChosenFrame] = []
    for k in range(n):
        target = (k + 0.5) * step
        near = np.flatnonzero(np.abs(path - target) <= WINDOW * step)
        if not len(near):  # the camera jumped past the middle between two frames
            near = np.array([int(np.argmin(np.abs(path - target)))])
        best = int(near[np.argmax(sharpness[near])])
        if not chosen or best > chosen[-1].index:
            chosen.append(ChosenFrame(best, int(near[0]), int(near[-1]), float(sharpness[best]) / typical))
    return chosen
