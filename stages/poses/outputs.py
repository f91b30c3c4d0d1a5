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


def plot_cameras(path: Path, frames: list[Frame], points: np.ndarray) -> None:
    """cameras.png: a 3-D plot of the camera frusta (world frame) around the sparse points [N, 3]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = np.array([f.centre for f in frames])
    everything = np.vstack([centres, points]) if len(points) else centres
    scale = 0.12 * float(np.ptp(everything, axis=0).max() or 1.0)
    fig = plt.figure(figsize=(7, 7), dpi=110)
    ax = fig.add_subplot(projection="3d")
    if len(points):
        keep = points[np.random.default_rng(0).permutation(len(points))[:20000]]
        ax.scatter(keep[:, 0], keep[:, 2], keep[:, 1], s=0.3, c="0.3")
    for f in frames:  # a frustum: the OpenGL camera looks along -Z
        corners = np.array([[sx * f.w / (2 * f.fl_x), sy * f.h / (2 * f.fl_y), -1] for sx, sy in
                            ((-1, -1), (1, -1), (1, 1), (-1, 1))]) * scale
        c2w = np.asarray(f.c2w, dtype=float)
        world = corners @ c2w[:3, :3].T + c2w[:3, 3]
        for a in range(4):
            seg = np.array([c2w[:3, 3], world[a], world[(a + 1) % 4]])
            ax.plot(seg[:, 0], seg[:, 2], seg[:, 1], color="tab:blue", lw=0.6)
    ax.set_xlabel("x")
    ax.set_ylabel("z")
    ax.set_zlabel("y (up)")
    mid, half = everything.mean(0), 0.55 * float(np.ptp(everything, axis=0).max() or 1.0)
    ax.set_xlim(mid[0] - half, mid[0] + half)
    ax.set_ylim(mid[2] - half, mid[2] + half)
    ax.set_zlim(mid[1] - half, mid[1] + half)
    ax.set_title(f"{len(frames)} cameras, {len(points)} sparse points")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(out: Path, frames: list[Frame], camera_model: str, points: np.ndarray, colors: np.ndarray,
                  world_from_sfm: np.ndarray, normalization: dict, reconstruction) -> None:
    """transforms.json, points.ply and cameras.png in the world frame, sparse/ (SfM frame) and
    normalization.json.

    `frames` carry their cameras in the SfM (or given) frame and their final file/mask paths.
    """
    world_frames = [replace(f, c2w=transform_c2w(world_from_sfm, f.c2w)) for f in frames]
    write_transforms(out / "transforms.json", world_frames, camera_model)
    world_points = apply_similarity(world_from_sfm, points)
    write_points_ply(out / "points.ply", world_points, colors)
    plot_cameras(out / "cameras.png", world_frames, world_points)
    if reconstruction is not None:
        (out / "sparse").mkdir()
        reconstruction.write_binary(str(out / "sparse"))
    (out / "normalization.json").write_text(json.dumps(
        {"world_from_sfm": np.asarray(world_from_sfm).tolist(), **normalization}, indent=1) + "\n")


def write_attempt(folder: Path, label: str, cameras: dict[str, Frame], record: dict) -> None:
    """folder/LABEL.json: the cameras of one model SfM built (kept or rejected), in its own SfM
    frame, as a transforms.json (file paths name the working-size photos), with its record."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{label}.json"
    write_transforms(path, [replace(frame, file_path=f"../../ingest/{name}") for name, frame in cameras.items()],
                     "OPENCV")
    data = json.loads(path.read_text())
    path.write_text(json.dumps({"record": record, **data}, indent=1) + "\n")
