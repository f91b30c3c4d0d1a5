"""Where the exported model sits and how big it is: the similarity from the pipeline's world frame
to the model's frame.

    model_from_world = placement(vertices, pose_source, mode="auto", scale_to=0.0)   # [4, 4]
    vertices_model = apply(model_from_world, vertices)

World frames: with poses from SfM (pose source "colmap") the pipeline's world is its own
normalised frame, centred on the object, radius 1, +Y up, in no real unit. With poses the user
gave (a transforms.json or a COLMAP model) it is the user's frame, kept exactly so the model
overlays their data.
Modes (config export.placement):
  ground  +Y up and the object resting on the ground plane: translated so its lowest point is at
          y = 0, its bounding box centred on x = z = 0 (what AR viewers and engines expect);
  keep    the world frame unchanged;
  auto    ground for SfM poses, keep for the user's own.
Scale (glTF's unit is the metre; USD's metersPerUnit says the same, usdz.py): `scale_to` > 0
makes the longest side of the bounding box that many metres; `scale_points` (two points in the
world frame, e.g. two marks measured on the real object, picked in viewer.html) and
`scale_length` (their true distance in metres) make that distance exact. Scaling is about the
placed frame's origin. Only translation and uniform scale: rotations would turn the learned SH
lights too, and both modes keep +Y up.
"""
from __future__ import annotations

import numpy as np

from stages.errors import NeroicError

MODES = ("auto", "ground", "keep")


def placement(vertices: np.ndarray, pose_source: str | None, mode: str = "auto", scale_to: float = 0.0,
              scale_points=(), scale_length: float = 0.0) -> np.ndarray:
    """The similarity [4, 4] (model <- world) for a mesh with vertices [V, 3] in the world frame
    (see the module docstring); NeroicError for a bad option."""
    if mode not in MODES:
        raise NeroicError(f"export.placement must be one of {', '.join(MODES)}, got {mode!r}")
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    offset = np.zeros(3)
    if mode == "ground" or (mode == "auto" and pose_source == "colmap"):
        offset = np.array([(lo[0] + hi[0]) / 2.0, lo[1], (lo[2] + hi[2]) / 2.0])
    scale = 1.0
    if scale_to > 0.0 and len(scale_points):
        raise NeroicError("export.scale_to and export.scale_points both set a scale; keep one",
                          hint="set scale_to = 0 to use the two points, or scale_points = [] to use the size")
    if scale_to > 0.0:
        scale = scale_to / float((hi - lo).max())
    elif len(scale_points):
        points = np.asarray(scale_points, dtype=np.float64)
        if points.shape != (2, 3) or scale_length <= 0.0:
            raise NeroicError("export.scale_points needs two points [[x, y, z], [x, y, z]] and scale_length > 0 "
                              "(their distance in metres)")
        distance = float(np.linalg.norm(points[1] - points[0]))
        if distance <= 0.0:
            raise NeroicError("export.scale_points are the same point: no length to scale by")
        scale = scale_length / distance
    model_from_world = np.eye(4)
    model_from_world[:3, :3] *= scale
    model_from_world[:3, 3] = -scale * offset
    return model_from_world


def apply(model_from_world: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points [N, 3] world -> model frame."""
    return points @ model_from_world[:3, :3].T + model_from_world[:3, 3]
