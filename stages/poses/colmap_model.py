"""COLMAP reconstructions (pycolmap) -> the shared camera convention and plain arrays."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pycolmap

from stages.errors import NeroicError
from stages.common.cameras import PERSPECTIVE_MODELS, Frame, c2w_from_w2c


@dataclass
class Solution:
    """Cameras and sparse points in the frame they were solved or given in (SfM or user world)."""

    frames: dict[str, Frame]  # stem -> camera (OpenGL c2w) at the photo's working size
    camera_model: str
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # [N, 3], the cameras' frame
    colors: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.uint8))  # [N, 3] uint8 sRGB
    track_lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [N] photos per point
    mean_reproj_error: float | None = None  # pixels; None without observed points
    reconstruction: "pycolmap.Reconstruction | None" = None  # written to poses/sparse when present


def _intrinsics(camera) -> dict:
    """COLMAP camera parameters -> fl_x fl_y cx cy k1 k2 p1 p2 (0 where the model lacks them)."""
    name, p = camera.model.name, [float(v) for v in camera.params]
    if name not in PERSPECTIVE_MODELS:
        raise NeroicError(f"camera model {name} is not supported",
                          hint=f"use one of {', '.join(PERSPECTIVE_MODELS)}")
    out = {"k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0}
    if name == "SIMPLE_PINHOLE":
        out.update(fl_x=p[0], fl_y=p[0], cx=p[1], cy=p[2])
    elif name == "PINHOLE":
        out.update(fl_x=p[0], fl_y=p[1], cx=p[2], cy=p[3])
    elif name == "SIMPLE_RADIAL":
        out.update(fl_x=p[0], fl_y=p[0], cx=p[1], cy=p[2], k1=p[3])
    elif name == "RADIAL":
        out.update(fl_x=p[0], fl_y=p[0], cx=p[1], cy=p[2], k1=p[3], k2=p[4])
    else:  # OPENCV
        out.update(fl_x=p[0], fl_y=p[1], cx=p[2], cy=p[3], k1=p[4], k2=p[5], p1=p[6], p2=p[7])
    return out


def frame_from_image(image, camera, stem: str) -> Frame:
    """A registered pycolmap Image and its Camera -> Frame (OpenGL c2w, COLMAP's pixel size)."""
    pose = image.cam_from_world()
    c2w = c2w_from_w2c(pose.rotation.matrix(), np.asarray(pose.translation))
    return Frame(stem=stem, c2w=c2w, w=int(camera.width), h=int(camera.height), **_intrinsics(camera))


def camera_model_of(reconstruction) -> str:
    """The reconstruction's camera model name; models that differ are stored as OPENCV."""
    names = {c.model.name for c in reconstruction.cameras.values()}
    return names.pop() if len(names) == 1 else "OPENCV"


def solution_of(reconstruction, frames: dict[str, Frame]) -> Solution:
    """A Solution holding the reconstruction's points (with colours and track lengths)."""
    pts = list(reconstruction.points3D.values())
    if not pts:
        return Solution(frames=frames, camera_model=camera_model_of(reconstruction), reconstruction=reconstruction)
    return Solution(
        frames=frames, camera_model=camera_model_of(reconstruction),
        points=np.array([p.xyz for p in pts], dtype=float),
        colors=np.array([p.color for p in pts], dtype=np.uint8),
        track_lengths=np.array([p.track.length() for p in pts], dtype=np.int64),
        mean_reproj_error=float(reconstruction.compute_mean_reprojection_error()),
        reconstruction=reconstruction)
