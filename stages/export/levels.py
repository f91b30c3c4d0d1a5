"""Detail levels: one clean mesh, decimated to each level's triangle limit, its textures carried over.

    levels = parse_levels(["preview", "medium"])          # most detailed first
    mesh = level_mesh(clean_mesh, levels[1])               # quadric decimation below the limit
    maps = transfer_maps(reference, reference_atlas, atlas, rasterize_uv(atlas, size))

The names and triangle limits are those of Apple's Object Capture (preview < 25k, reduced < 50k,
medium < 100k, full < 250k triangles); each level also caps its texture size, so the small ones
stay small enough for the web and AR Quick Look (about 10 MB). The most detailed level is baked
from the material field and the photos (bake.py); every other level has its own UV atlas (a
decimated mesh cannot keep the reference's charts) and takes its maps from the reference by
closest point: each of its texels' surface points finds the nearest point on the reference mesh,
and the reference's maps are read there (world normals, so the other level's own tangent frames
encode them). Texture transfer, as games bake a detailed mesh onto a light one: no second pass
over the photos.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

from stages.common.images import sample_bilinear
from stages.export.bake import SurfaceMaps, UVRaster, dilate
from stages.export.uv_atlas import UVMesh


@dataclass(frozen=True)
class Level:
    """A detail level: its name, fewer than `max_triangles` triangles, textures at most `max_texture` texels across."""

    name: str
    max_triangles: int
    max_texture: int


LEVELS = {level.name: level for level in (
    Level("preview", 25_000, 1024),
    Level("reduced", 50_000, 2048),
    Level("medium", 100_000, 2048),
    Level("full", 250_000, 4096),
)}


def parse_levels(names) -> list[Level]:
    """Level names (config export.levels) -> Levels, most detailed first; ValueError naming a bad one."""
    if isinstance(names, str) or not names:
        raise ValueError(f"export.levels must be a non-empty list of level names ({', '.join(LEVELS)})")
    unknown = [n for n in names if n not in LEVELS]
    if unknown:
        raise ValueError(f"unknown detail level(s) {', '.join(map(str, unknown))}; choose from {', '.join(LEVELS)}")
    return sorted({LEVELS[n] for n in names}, key=lambda level: -level.max_triangles)


def level_file(level: Level, main: Level, stem: str = "model", suffix: str = ".glb") -> str:
    """model.glb for the main (most detailed) level, model.NAME.glb for the others."""
    return f"{stem}{suffix}" if level == main else f"{stem}.{level.name}{suffix}"


def level_mesh(mesh: trimesh.Trimesh, level: Level) -> trimesh.Trimesh:
    """The mesh with fewer than level.max_triangles triangles (quadric decimation; unchanged if already)."""
    from stages.export.mesh import simplify

    if len(mesh.faces) < level.max_triangles:
        return mesh
    return simplify(mesh, level.max_triangles - 1)


def transfer_maps(reference: SurfaceMaps, reference_atlas: UVMesh, atlas: UVMesh, raster: UVRaster) -> SurfaceMaps:
    """The reference's maps read at the closest reference point to every covered texel of `raster`
    (an atlas of another mesh of the same surface) -> SurfaceMaps of that atlas, islands dilated."""
    import open3d as o3d

    size = raster.face.shape[0]
    idx = np.flatnonzero(raster.covered.ravel())
    face, bary = raster.face.ravel()[idx], raster.bary.reshape(-1, 3)[idx]
    points = np.einsum("nk,nkc->nc", bary, atlas.vertices[atlas.faces[face]])
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(reference_atlas.vertices.astype(np.float32)),
                        o3d.core.Tensor(reference_atlas.faces.astype(np.uint32)))
    hit = scene.compute_closest_points(o3d.core.Tensor(points.astype(np.float32)))
    ref_face = hit["primitive_ids"].numpy().astype(np.int64)
    w = hit["primitive_uvs"].numpy().astype(np.float64)
    ref_bary = np.stack([1.0 - w[:, 0] - w[:, 1], w[:, 0], w[:, 1]], axis=1)
    uv = np.einsum("nk,nkc->nc", ref_bary, reference_atlas.uvs[reference_atlas.faces[ref_face]])

    def carried(image: np.ndarray) -> np.ndarray:
        channels = image.shape[2] if image.ndim == 3 else 1
        values = np.zeros((size * size, channels), dtype=np.float32)
        values[idx] = sample_bilinear(image.reshape(*image.shape[:2], channels), uv)
        shape = (size, size, channels) if channels > 1 else (size, size)
        return dilate(values.reshape(shape), raster.covered)

    normal = carried(reference.normal)
    normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
    return SurfaceMaps(carried(reference.albedo), carried(reference.roughness), carried(reference.specular),
                       carried(reference.occlusion), normal, raster.covered, carried(reference.photo_confidence))
