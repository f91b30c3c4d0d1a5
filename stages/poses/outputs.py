"""Writing the poses stage's published files."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from stages.common.cameras import Frame, transform_c2w, write_transforms


def write_points_ply(path: Path, points: np.ndarray, colors: np.ndarray) -> None:
    """Binary little-endian PLY of points [N, 3] (float32) with colours [N, 3] (uint8)."""
    vertex = np.zeros(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                          ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for i, axis in enumerate("xyz"):
        vertex[axis] = points[:, i]
    for i, channel in enumerate(("red", "green", "blue")):
        vertex[channel] = colors[:, i]
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(points)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(vertex.tobytes())


def apply_similarity(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points [N, 3] mapped by a 4x4 similarity."""
    return points @ T[:3, :3].T + T[:3, 3]


def write_outputs(out: Path, frames: list[Frame], camera_model: str, points: np.ndarray, colors: np.ndarray,
                  world_from_sfm: np.ndarray, normalization: dict, reconstruction) -> None:
    """transforms.json and points.ply in the world frame, sparse/ (SfM frame) and normalization.json.

    `frames` carry their cameras in the SfM (or given) frame and their final file/mask paths.
    """
    world_frames = [replace(f, c2w=transform_c2w(world_from_sfm, f.c2w)) for f in frames]
    write_transforms(out / "transforms.json", world_frames, camera_model)
    write_points_ply(out / "points.ply", apply_similarity(world_from_sfm, points), colors)
    if reconstruction is not None:
        (out / "sparse").mkdir()
        reconstruction.write_binary(str(out / "sparse"))
    (out / "normalization.json").write_text(json.dumps(
        {"world_from_sfm": np.asarray(world_from_sfm).tolist(), **normalization}, indent=1) + "\n")
