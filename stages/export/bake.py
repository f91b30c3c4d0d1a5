"""Texture baking: every texel of the atlas -> its surface point -> the material there.

    raster = rasterize_uv(atlas, size)                       # which face and where, per texel
    frame = tangent_frames(atlas, vertex_normals)            # per-vertex normal + glTF tangent
    textures = bake_textures(atlas, frame, material_fn, size)
    textures.base_colour [H, W, 3] uint8 sRGB-encoded albedo
    textures.metallic_roughness [H, W, 3] uint8 linear (R 255 unused, G roughness, B metallic 0)
    textures.normal [H, W, 3] uint8 tangent-space normals, (n + 1) / 2

`material_fn(positions [N, 3] world, normals [N, 3] world unit) -> dict(albedo=[N, 3] linear RGB
in [0, 1], roughness=[N] in [0, 1], normal=[N, 3] world unit, specular=[N], glossiness=[N])` is
any callable; the export stage wraps the material stage's field in one. Texels no triangle covers take the value of the nearest
covered texel (island dilation), so bilinear filtering and mip-maps never mix in background.

Tangent frames follow what glTF viewers do with a TANGENT attribute: the shader interpolates the
vertex normal N, tangent T and bitangent B = cross(N, T) * w across the triangle, normalises
each, and maps a texel's tangent-space normal n_ts to world as normalize([T B N] n_ts). The
normal map holds the n_ts that reproduces the material's world normal under exactly that rule.
Axis directions (glTF: "+X is right, +Y is up" in the image): T points along increasing u and
B towards the top of the image, i.e. decreasing v (glTF's v grows downwards); w = +1 when the
chart is laid out unmirrored as seen from outside, -1 when mirrored.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stages.common.colour import linear_to_srgb
from stages.export.uv_atlas import UVMesh

MaterialFn = Callable[[np.ndarray, np.ndarray], dict]


def roughness_from_glossiness(s) -> np.ndarray:
    """NeROIC's Phong glossiness s (>= 1) -> glTF perceptual roughness in [0, 1].

    NeROIC attenuates SH band l by exp(-l^2 / (2 s)), the SH transfer of a Phong lobe
    cos^s(angle to the reflection direction r) (Ramamoorthi & Hanrahan 2001). Near its peak
    that lobe is exp(-s theta_r^2 / 2); since theta_r ~ 2 theta_h (theta_h: half vector to normal),
    it equals a Blinn-Phong lobe cos^n(theta_h) ~ exp(-n theta_h^2 / 2) with n = 4 s. Blinn-Phong
    exponent n matches a Beckmann (~ GGX near the peak) width alpha = sqrt(2 / (n + 2))
    (Walter et al. 2007), so alpha = sqrt(1 / (2 s + 1)). glTF's roughness is perceptual:
    alpha = roughness^2, so roughness = (2 s + 1)^(-1/4). s = 1 -> 0.76, s = 20 -> 0.40, s = 100 -> 0.27.
    """
    s = np.maximum(np.asarray(s, dtype=np.float64), 0.0)
    return (2.0 * s + 1.0) ** -0.25


def to_uint8(x01: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x01, 0.0, 1.0) * 255.0).astype(np.uint8)


@dataclass
class UVRaster:
    """Per texel of a size x size image: face [H, W] (-1 where none covers the centre), bary [H, W, 3]."""

    face: np.ndarray
    bary: np.ndarray

    @property
    def covered(self) -> np.ndarray:
        return self.face >= 0


def rasterize_uv(atlas: UVMesh, size: int) -> UVRaster:
    """Which triangle covers each texel centre in UV space, and the barycentric weights there.

    Done by casting one ray per texel centre, (c + 0.5, r + 0.5), straight down onto the atlas
    laid flat at z = 0 in texel units (open3d's BVH does the point-in-triangle search).
    """
    import open3d as o3d

    flat = np.concatenate([atlas.uvs * size, np.zeros((len(atlas.uvs), 1))], axis=1)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(flat.astype(np.float32)), o3d.core.Tensor(atlas.faces.astype(np.uint32)))
    rows, cols = np.mgrid[0:size, 0:size]
    rays = np.zeros((size * size, 6), dtype=np.float32)
    rays[:, 0], rays[:, 1], rays[:, 2], rays[:, 5] = cols.ravel() + 0.5, rows.ravel() + 0.5, 1.0, -1.0
    hits = scene.cast_rays(o3d.core.Tensor(rays))
    hit = np.isfinite(hits["t_hit"].numpy())
    face = np.where(hit, hits["primitive_ids"].numpy().astype(np.int64), -1)
    uv = hits["primitive_uvs"].numpy().astype(np.float64)
    bary = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=1) * hit[:, None]
    return UVRaster(face.reshape(size, size), bary.reshape(size, size, 3))


@dataclass
class TangentFrames:
    """Per atlas vertex: normals [V, 3] unit and tangents [V, 4] (xyz unit, w = +-1), glTF's TANGENT."""

    normals: np.ndarray
    tangents: np.ndarray


def tangent_frames(atlas: UVMesh, vertex_normals: np.ndarray) -> TangentFrames:
    """Per-vertex tangents from the UV layout (area-weighted dP/du, Gram-Schmidt against N).

    vertex_normals [V, 3] per atlas vertex (give the welded mesh's normals through
    atlas.source_vertex, so shading is continuous across seams). Handedness w is chosen so that
    cross(N, T) * w points along the image's up direction (-dP/dv).
    """
    p = atlas.vertices[atlas.faces]  # [F, 3, 3]
    t = atlas.uvs[atlas.faces]  # [F, 3, 2]
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    d1, d2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    # dP/du and dP/dv of each face, times det's magnitude (= weights by UV area, robust to tiny faces)
    sgn = np.where(det < 0, -1.0, 1.0)[:, None]
    dpdu = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) * sgn
    dpdv = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1]) * sgn
    tan = np.zeros_like(atlas.vertices)
    up = np.zeros_like(atlas.vertices)
    for k in range(3):
        np.add.at(tan, atlas.faces[:, k], dpdu)
        np.add.at(up, atlas.faces[:, k], -dpdv)
    n = vertex_normals / np.maximum(np.linalg.norm(vertex_normals, axis=1, keepdims=True), 1e-20)
    tan -= n * np.sum(tan * n, axis=1, keepdims=True)
    length = np.linalg.norm(tan, axis=1, keepdims=True)
    # A vertex whose faces have degenerate UVs gets any unit vector perpendicular to N.
    fallback = np.cross(n, np.where(np.abs(n[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]))
    tan = np.where(length > 1e-12, tan / np.maximum(length, 1e-20), fallback / np.linalg.norm(fallback, axis=1, keepdims=True))
    w = np.where(np.sum(np.cross(n, tan) * up, axis=1) < 0, -1.0, 1.0)
    return TangentFrames(n, np.concatenate([tan, w[:, None]], axis=1))


def _interpolate(values: np.ndarray, faces: np.ndarray, face: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Barycentric interpolation of per-vertex values [V, C] at points on faces [N] -> [N, C]."""
    return np.einsum("nk,nkc->nc", bary, values[faces[face]])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-20)


def world_to_tangent(normal: np.ndarray, n: np.ndarray, t: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Tangent-space unit normals [N, 3] that the viewer's normalize([T B N] n_ts) turns into `normal`.

    n, t, b [N, 3]: the interpolated, normalised frame at each texel (not necessarily orthogonal,
    so the exact inverse is used, not the transpose).
    """
    tbn = np.stack([t, b, n], axis=2)  # columns T, B, N: [N, 3, 3]
    n_ts = np.linalg.solve(tbn, normal[..., None])[..., 0]
    return _unit(n_ts)


def dilate(values: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Fill every uncovered texel of values [H, W, C] with its nearest covered texel's value."""
    from scipy.ndimage import distance_transform_edt

    if not covered.any():
        return values
    _, (rows, cols) = distance_transform_edt(~covered, return_indices=True)
    return values[rows, cols]


@dataclass
class Textures:
    """Baked images, all [size, size, 3] uint8, row 0 = top (v = 0); coverage [size, size] bool;
    photo_confidence [size, size] in [0, 1]: how much of each texel's albedo came from the photos."""

    base_colour: np.ndarray
    metallic_roughness: np.ndarray
    normal: np.ndarray
    coverage: np.ndarray
    photo_confidence: np.ndarray


def bake_textures(atlas: UVMesh, frames: TangentFrames, material_fn: MaterialFn, size: int,
                  photos=None, chunk: int = 1 << 16, progress: Callable = lambda it, total: it) -> Textures:
    """Query material_fn at the surface point behind every covered texel and fill the three maps.

    The surface normal passed to material_fn is the interpolated (smooth) vertex normal; the
    material's own refined normal goes into the normal map. With `photos` (a
    photo_texture.PhotoAlbedo), the albedo is the photos' de-lit estimate where they see the
    texel, blended into the material's by their confidence. Queries go `chunk` texels at a
    time; `progress` wraps the chunk iterator and gets (iterable, total).
    """
    raster = rasterize_uv(atlas, size)
    idx = np.flatnonzero(raster.covered.ravel())
    face = raster.face.ravel()[idx]
    bary = raster.bary.reshape(-1, 3)[idx]
    albedo = np.zeros((size * size, 3))
    confidence = np.zeros(size * size)
    roughness = np.zeros(size * size)
    normal_ts = np.zeros((size * size, 3))
    bitangents = np.cross(frames.normals, frames.tangents[:, :3]) * frames.tangents[:, 3:]
    for start in progress(range(0, len(idx), chunk), math.ceil(len(idx) / chunk)):
        sl = slice(start, start + chunk)
        f, w = face[sl], bary[sl]
        pos = _interpolate(atlas.vertices, atlas.faces, f, w)
        n = _unit(_interpolate(frames.normals, atlas.faces, f, w))
        t = _unit(_interpolate(frames.tangents[:, :3], atlas.faces, f, w))
        b = _unit(_interpolate(bitangents, atlas.faces, f, w))
        out = material_fn(pos, n)
        texels = idx[sl]
        albedo[texels] = out["albedo"]
        if photos is not None:
            seen, confidence[texels] = photos.estimate(pos, n, out["normal"], out["specular"], out["glossiness"])
            albedo[texels] += confidence[texels, None] * (seen - albedo[texels])
        roughness[texels] = np.asarray(out["roughness"], dtype=np.float64).reshape(-1)
        normal_ts[texels] = world_to_tangent(_unit(np.asarray(out["normal"], dtype=np.float64).reshape(-1, 3)), n, t, b)
    normal_ts[~raster.covered.ravel()] = (0.0, 0.0, 1.0)
    covered = raster.covered
    rgb = to_uint8(linear_to_srgb(albedo.reshape(size, size, 3)))
    mr = np.stack([np.ones(size * size), roughness, np.zeros(size * size)], axis=1).reshape(size, size, 3)
    nrm = to_uint8((normal_ts.reshape(size, size, 3) + 1.0) / 2.0)
    return Textures(dilate(rgb, covered), dilate(to_uint8(mr), covered), dilate(nrm, covered), covered,
                    confidence.reshape(size, size))
