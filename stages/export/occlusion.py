"""Ambient occlusion baked from the mesh: how much of the sky each surface point sees.

    occlusion = vertex_occlusion(mesh, rays=64)      # [V] in [0, 1], 1 = nothing in the way

Each vertex casts `rays` cosine-weighted rays over the hemisphere of its smooth normal, from a
point nudged off the surface; its occlusion value is the fraction that leave without hitting the
mesh (open3d's BVH tests them). Cosine weighting makes that fraction the vertex's irradiance
under a uniform sky relative to an unoccluded point, which is what renderers multiply into
their ambient light (glTF's occlusionTexture, UsdPreviewSurface's occlusion). The directions
are one Fibonacci pattern on the cosine-weighted hemisphere, turned by a random angle about
each normal (seeded: no banding, and the same answer every run). Values are per vertex of the
welded mesh, so both copies of a UV-seam vertex agree; the bake interpolates them across faces.
"""
from __future__ import annotations

import math

import numpy as np
import trimesh


def cosine_hemisphere(n: int) -> np.ndarray:
    """n directions [n, 3] around +Z, spread evenly by the cosine-weighted measure (a Fibonacci
    spiral on the unit disc, lifted onto the hemisphere: Malley's method)."""
    k = np.arange(n) + 0.5
    r = np.sqrt(k / n)
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), np.sqrt(np.clip(1.0 - r * r, 0.0, None))], axis=1)


def vertex_occlusion(mesh: trimesh.Trimesh, rays: int = 64, seed: int = 0, max_rays: int = 1 << 20) -> np.ndarray:
    """Fraction [V] of each vertex's cosine-weighted hemisphere that is open (see the module docstring).

    Rays start 1e-3 of the mesh's bounding-box diagonal off the surface, so a smooth normal
    that dips below a neighbouring face does not count that face; `max_rays` bounds memory.
    """
    import open3d as o3d

    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    normals = np.array(mesh.vertex_normals, dtype=np.float64)
    normals[np.linalg.norm(normals, axis=1) < 0.5] = (0.0, 1.0, 0.0)  # unreferenced vertices: any direction
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(mesh.faces.astype(np.uint32)))
    offset = 1e-3 * float(np.linalg.norm(vertices.max(0) - vertices.min(0)))
    # Per-vertex frame: t, b perpendicular to n; the pattern turned by a random angle about n.
    helper = np.where(np.abs(normals[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    t = np.cross(normals, helper)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    b = np.cross(normals, t)
    angle = np.random.default_rng(seed).uniform(0.0, 2.0 * math.pi, len(vertices))
    t, b = (np.cos(angle)[:, None] * t + np.sin(angle)[:, None] * b,
            -np.sin(angle)[:, None] * t + np.cos(angle)[:, None] * b)
    pattern = cosine_hemisphere(rays)  # [R, 3]
    open_fraction = np.empty(len(vertices))
    step = max(1, max_rays // rays)
    for start in range(0, len(vertices), step):
        sl = slice(start, start + step)
        dirs = (pattern[None, :, :1] * t[sl, None] + pattern[None, :, 1:2] * b[sl, None]
                + pattern[None, :, 2:] * normals[sl, None])  # [v, R, 3]
        origins = np.broadcast_to((vertices[sl] + offset * normals[sl])[:, None], dirs.shape)
        batch = np.concatenate([origins, dirs], axis=2).reshape(-1, 6).astype(np.float32)
        blocked = scene.test_occlusions(o3d.core.Tensor(batch), tnear=offset).numpy().reshape(-1, rays)
        open_fraction[sl] = 1.0 - blocked.mean(axis=1)
    return open_fraction
