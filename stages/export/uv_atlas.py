"""A UV atlas for the exported mesh with xatlas: charts cut along seams, packed into one square.

    atlas = unwrap(mesh, texture_size=1024, padding_px=4)
    atlas.vertices [V', 3], atlas.faces [F, 3], atlas.uvs [V', 2], atlas.source_vertex [V']

Vertices on chart seams are split (one copy per chart), so V' >= V; `source_vertex` maps each
back to the input mesh. UVs follow glTF: (0, 0) is the top-left corner of the image's first
pixel, u grows to the right, v grows downwards; texel (row r, col c) covers
u in [c, c + 1] / W and v in [r, r + 1] / H.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh


@dataclass
class UVMesh:
    """A mesh with per-vertex UVs: vertices [V, 3] world, faces [F, 3], uvs [V, 2] (glTF convention)."""

    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    source_vertex: np.ndarray
    utilization: float


def unwrap(mesh: trimesh.Trimesh, texture_size: int = 1024, padding_px: int = 4) -> UVMesh:
    """Segment the mesh into charts, flatten and pack them for a texture_size^2 image.

    `padding_px` texels separate charts, room for the bake's dilation so that bilinear and
    mip-mapped lookups near a chart's edge do not pick up a neighbouring chart.
    """
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(mesh.vertices.astype(np.float32), mesh.faces.astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = int(padding_px)
    pack.bilinear = True
    pack.rotate_charts = True
    atlas.generate(xatlas.ChartOptions(), pack)
    source_vertex, faces, uvs = atlas[0]
    if atlas.atlas_count != 1:
        raise RuntimeError(f"xatlas packed the charts into {atlas.atlas_count} atlases; expected one")
    return UVMesh(
        vertices=mesh.vertices[source_vertex].astype(np.float64),
        faces=faces.astype(np.int64),
        uvs=uvs.astype(np.float64),
        source_vertex=source_vertex.astype(np.int64),
        utilization=float(atlas.utilization),
    )
