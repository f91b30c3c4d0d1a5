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

# xatlas charts a mesh in time that grows faster than its size (the skull's 100k-face level: 106 s
# in one piece; cut into pieces of at most 2,000 faces, 20 s, with fewer charts and the same use
# of the texture), and charts separate meshes on separate threads; all pieces share one atlas.
PIECE_FACES = 2000


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
    pieces = _pieces(mesh.triangles_center, np.arange(len(mesh.faces)), PIECE_FACES)
    used_vertices = []
    for faces in pieces:
        used, local = np.unique(mesh.faces[faces], return_inverse=True)
        atlas.add_mesh(mesh.vertices[used].astype(np.float32), local.reshape(-1, 3).astype(np.uint32))
        used_vertices.append(used)
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = int(padding_px)
    pack.bilinear = True
    pack.rotate_charts = True
    atlas.generate(xatlas.ChartOptions(), pack)
    if atlas.atlas_count != 1:
        raise RuntimeError(f"xatlas packed the charts into {atlas.atlas_count} atlases; expected one")
    sources, uvs, offset = [], [], 0
    faces = np.zeros((len(mesh.faces), 3), dtype=np.int64)  # in the input's order
    for k, (piece, used) in enumerate(zip(pieces, used_vertices)):
        piece_vertex, piece_faces, piece_uvs = atlas[k]
        sources.append(used[piece_vertex])
        faces[piece] = piece_faces.astype(np.int64) + offset
        uvs.append(piece_uvs)
        offset += len(piece_vertex)
    source_vertex = np.concatenate(sources).astype(np.int64)
    return UVMesh(
        vertices=mesh.vertices[source_vertex].astype(np.float64),
        faces=faces,
        uvs=np.concatenate(uvs).astype(np.float64),
        source_vertex=source_vertex,
        utilization=float(atlas.utilization),
    )


def _pieces(centres: np.ndarray, faces: np.ndarray, most: int) -> list[np.ndarray]:
    """The faces cut into spatially compact groups of at most `most`: halved at the median of
    their centres along the longest side, again and again."""
    if len(faces) <= most:
        return [faces]
    c = centres[faces]
    order = faces[np.argsort(c[:, np.argmax(c.max(0) - c.min(0))], kind="stable")]
    half = len(order) // 2
    return _pieces(centres, order[:half], most) + _pieces(centres, order[half:], most)
