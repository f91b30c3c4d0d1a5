"""Exact geometry from a synthetic capture (tests/synthetic/spot_capture.py layout), for tests and evaluation.

    surface = surface_from_capture(capture_dir, "train")          # SurfacePixels from gt/<stem>.npz
    density = density_grid_from_mesh(capture_dir / "gt" / "mesh.ply")

With these the material stage's decomposition can be trained and judged without a trained
geometry field: the capture stores, for every photo, the true per-pixel depth (along the
camera's -Z), world normal and coverage, and the true mesh.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stages.common.cameras import read_transforms
from stages.field.rays import Cameras
from stages.material.surface import SurfacePixels, pixel_rays
from stages.material.visibility import DensityGrid

SPLITS = {"train": ("transforms.json", "lighting.json"), "test": ("transforms_test.json", "lighting_test.json")}


def capture_frames(capture_dir: Path, split: str) -> tuple[Cameras, list[str]]:
    """The split's cameras and its photos' file_path entries (relative to the capture)."""
    frames = read_transforms(Path(capture_dir) / SPLITS[split][0])
    return Cameras.from_frames(frames), [f.file_path for f in frames]


def surface_from_capture(capture_dir: str | Path, split: str = "train", min_alpha: float = 0.999,
                         device: str | torch.device = "cpu") -> SurfacePixels:
    """True surface pixels of a capture's split: pixels covered at least `min_alpha`, their hit
    point (unprojected true depth), true normal and the photo's sRGB colour."""
    capture_dir = Path(capture_dir)
    cameras, file_paths = capture_frames(capture_dir, split)
    cameras = cameras.to(device)
    parts = []
    for view, file_path in enumerate(file_paths):
        stem = Path(file_path).stem
        with np.load(capture_dir / "gt" / f"{stem}.npz", allow_pickle=False) as gt:
            alpha, depth, normal = gt["alpha"], gt["depth"], gt["normal"]
        py, px = np.nonzero(alpha >= min_alpha)
        photo = np.asarray(Image.open(capture_dir / file_path).convert("RGB"))
        px_t, py_t = torch.from_numpy(px).long().to(device), torch.from_numpy(py).long().to(device)
        origins, dirs = pixel_rays(cameras, view, px_t, py_t)
        forward = -cameras.c2w[view, :3, 2]
        t = torch.from_numpy(depth[py, px]).to(device) / (dirs @ forward)  # depth is along -Z
        parts.append(SurfacePixels(
            image=torch.full((len(px),), view, dtype=torch.long, device=device), px=px_t, py=py_t,
            positions=origins + t[:, None] * dirs, view_dirs=dirs,
            normals=torch.nn.functional.normalize(torch.from_numpy(normal[py, px]).to(device), dim=-1),
            rgb=torch.from_numpy(photo[py, px]).to(device).float() / 255.0, sizes=cameras.size))
    return SurfacePixels.concatenate(parts, cameras.size)


def read_gt_albedo(capture_dir: str | Path, split: str = "test") -> list[np.ndarray]:
    """True albedo [H, W, 3] (linear RGB, 0 where empty) of every photo of the split."""
    _, file_paths = capture_frames(Path(capture_dir), split)
    out = []
    for file_path in file_paths:
        with np.load(Path(capture_dir) / "gt" / f"{Path(file_path).stem}.npz", allow_pickle=False) as gt:
            out.append(gt["albedo"])
    return out


def density_grid_from_mesh(mesh_path: str | Path, resolution: int = 96, margin: float = 0.05,
                           opaque_per_voxel: float = 4.0) -> DensityGrid:
    """A density grid of a closed mesh: opaque_per_voxel / voxel inside, 0 outside, blended over a
    voxel at the surface (a stand-in for the geometry field's density when the truth is known)."""
    import open3d as o3d  # only the ground-truth path needs it

    mesh = o3d.t.io.read_triangle_mesh(str(mesh_path))
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(mesh)
    vertices = mesh.vertex.positions.numpy()
    lo, hi = vertices.min(0) - margin, vertices.max(0) + margin
    axes = [lo[a] + (np.arange(resolution) + 0.5) * (hi[a] - lo[a]) / resolution for a in range(3)]
    centres = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)
    sdf = scene.compute_signed_distance(o3d.core.Tensor(centres)).numpy()
    voxel = float((hi - lo).max()) / resolution
    inside = np.clip(0.5 - sdf / voxel, 0.0, 1.0)
    density = (opaque_per_voxel / voxel * inside).reshape(resolution, resolution, resolution)
    return DensityGrid(torch.from_numpy(density.astype(np.float32)), torch.from_numpy(lo.astype(np.float32)),
                       torch.from_numpy(hi.astype(np.float32)))
