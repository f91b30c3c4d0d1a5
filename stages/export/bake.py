"""Texture baking: every texel of the atlas -> its surface point -> the material there.

    raster = rasterize_uv(atlas, size)                       # which face and where, per texel
    frame = tangent_frames(atlas, vertex_normals)            # per-vertex normal + glTF tangent
    maps = bake_surface_maps(atlas, raster, material_fn, photos, occlusion)   # float maps
    textures = encode_textures(maps, atlas, frame, raster)   # the PNGs' pixels
    textures.base_colour [H, W, 3] uint8 sRGB: albedo / (occlusion (1 - k_s)), see encode_textures
    textures.orm [H, W, 3] uint8 linear: R ambient occlusion, G roughness, B metallic (0)
    textures.specular [H, W, 3] uint8 sRGB-encoded grey: the specular strength k_s (= F0)
    textures.normal [H, W, 3] uint8 tangent-space normals, (n + 1) / 2

`material_fn(positions [N, 3] world, normals [N, 3] world unit) -> dict(albedo=[N, 3] linear RGB
in [0, 1], roughness=[N] in [0, 1], normal=[N, 3] world unit, specular=[N], glossiness=[N])` is
any callable; the export stage wraps the material stage's field in one. Texels no triangle
covers take the value of the nearest covered texel (island dilation), so bilinear filtering and
mip-maps never mix in background.

The learned material maps onto glTF's metallic-roughness model with KHR_materials_specular:
roughness from glossiness (roughness_from_glossiness), metallic 0, and the specular strength k_s
as the dielectric's F0 (specular_colour_texture); glossiness_from_roughness and
specular_from_texture undo both, so a renderer of the exported maps (preview.py) shades with
the material stage's own lobe.

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

from stages.common.colour import linear_to_srgb, srgb_to_linear
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


def glossiness_from_roughness(roughness) -> np.ndarray:
    """The inverse of roughness_from_glossiness: glTF roughness in (0, 1] -> Phong glossiness s."""
    r = np.clip(np.asarray(roughness, dtype=np.float64), 1e-3, 1.0)
    return 0.5 * (r ** -4.0 - 1.0)


# KHR_materials_specular: F0 = min(F0(ior) * specularColorFactor * specularColorTexture, 1) * specularFactor,
# F0(ior) = ((ior - 1) / (ior + 1))^2 = 0.04 at glTF's default ior 1.5.
F0_DEFAULT_IOR = 0.04
SPECULAR_COLOUR_FACTOR = 1.0 / F0_DEFAULT_IOR


def specular_colour_texture(k_s: np.ndarray) -> np.ndarray:
    """NeROIC's specular strength k_s [...] -> KHR_materials_specular's specularColorTexture values
    (sRGB-encoded, in [0, 1]), which with specularColorFactor SPECULAR_COLOUR_FACTOR make F0 = k_s.

    NeROIC's specular radiance is k_s * sum_l exp(-l^2 / (2 s)) sum_m c_lm Y_lm(r): the light
    convolved with a lobe whose band-0 transfer is 1, so a uniform light L gives k_s L whatever
    the glossiness. A microfacet BRDF with Fresnel F0 under a uniform light reflects L (F0 A + B)
    (the split-sum terms of Karis 2013), and near normal incidence at the roughness the lobes
    have here (<= 0.5) A ~ 1 and B ~ 0: the specular strength k_s is the dielectric's F0. With
    KHR_materials_specular at ior 1.5 (F0(ior) = 0.04), specularColorFactor = 1 / 0.04 = 25 and a
    specularColorTexture holding k_s (sRGB-encoded, as the extension's colour textures are) give
    F0 = min(0.04 * 25 * k_s, 1) * specularFactor 1 = k_s. A PBR renderer also takes the light the
    lobe reflects away from the diffuse layer, diffuse * (1 - F) (glTF's fresnel_mix; three.js
    scales its diffuse by 1 - (F0 A + B)); NeROIC's diffuse is not reduced, so the base colour
    carries albedo / (1 - k_s) (encode_textures), exact at normal incidence. What stays
    different: PBR Fresnel brightens the lobe towards grazing angles, where NeROIC's is constant.
    """
    return linear_to_srgb(np.clip(np.asarray(k_s, dtype=np.float64), 0.0, 1.0))


def specular_from_texture(texel_srgb01: np.ndarray, colour_factor: float = SPECULAR_COLOUR_FACTOR,
                          factor: float = 1.0, f0_ior: float = F0_DEFAULT_IOR) -> np.ndarray:
    """The inverse of specular_colour_texture, by the extension's rule: F0 (= NeROIC's k_s) from the
    specular colour texture's sRGB-encoded values in [0, 1] [...] (grey: any channel) -> k_s [...]."""
    return np.minimum(f0_ior * colour_factor * srgb_to_linear(texel_srgb01).astype(np.float64), 1.0) * factor


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
class SurfaceMaps:
    """What the material is at every texel of one atlas (size x size, row 0 = v 0), float32, islands
    dilated: albedo [H, W, 3] linear RGB as the material stage shades it, roughness [H, W] (glTF),
    specular [H, W] (k_s), occlusion [H, W] (1 = open sky), normal [H, W, 3] world unit (the
    material's refined normal); coverage [H, W] bool; photo_confidence [H, W] in [0, 1]: how much
    of the albedo came from the photos."""

    albedo: np.ndarray
    roughness: np.ndarray
    specular: np.ndarray
    occlusion: np.ndarray
    normal: np.ndarray
    coverage: np.ndarray
    photo_confidence: np.ndarray

    @property
    def size(self) -> int:
        return int(self.coverage.shape[0])


def bake_surface_maps(atlas: UVMesh, frames: TangentFrames, raster: UVRaster, material_fn: MaterialFn, photos=None,
                      occlusion: np.ndarray | None = None, chunk: int = 1 << 16,
                      progress: Callable = lambda it, total: it) -> SurfaceMaps:
    """Query material_fn at the surface point behind every covered texel of `raster`.

    The surface normal passed to material_fn is the interpolated (smooth) vertex normal of
    `frames`. With `photos` (a photo_texture.PhotoAlbedo), the albedo is the photos' de-lit
    estimate where they see the texel, blended into the material's by their confidence.
    `occlusion` [V] per atlas vertex (occlusion.py) is interpolated across the faces; None: 1.
    Queries go `chunk` texels at a time; `progress` wraps the chunk iterator and gets (iterable, total).
    """
    size = raster.face.shape[0]
    idx = np.flatnonzero(raster.covered.ravel())
    face = raster.face.ravel()[idx]
    bary = raster.bary.reshape(-1, 3)[idx]
    albedo = np.zeros((size * size, 3), dtype=np.float32)
    confidence = np.zeros(size * size, dtype=np.float32)
    roughness = np.zeros(size * size, dtype=np.float32)
    specular = np.zeros(size * size, dtype=np.float32)
    normal = np.zeros((size * size, 3), dtype=np.float32)
    open_sky = np.ones(size * size, dtype=np.float32)
    for start in progress(range(0, len(idx), chunk), math.ceil(len(idx) / chunk)):
        sl = slice(start, start + chunk)
        f, w = face[sl], bary[sl]
        texels = idx[sl]
        pos = _interpolate(atlas.vertices, atlas.faces, f, w)
        n = _unit(_interpolate(frames.normals, atlas.faces, f, w))
        out = material_fn(pos, n)
        a = np.asarray(out["albedo"], dtype=np.float64)
        k_s = np.asarray(out["specular"], dtype=np.float64).reshape(-1)
        refined = _unit(np.asarray(out["normal"], dtype=np.float64).reshape(-1, 3))
        if photos is not None:
            seen, c = photos.estimate(pos, n, refined, k_s, np.asarray(out["glossiness"], dtype=np.float64))
            a = a + c[:, None] * (seen - a)
            confidence[texels] = c
        albedo[texels] = a
        roughness[texels] = np.asarray(out["roughness"], dtype=np.float64).reshape(-1)
        specular[texels] = k_s
        normal[texels] = refined
        if occlusion is not None:
            open_sky[texels] = _interpolate(np.asarray(occlusion, dtype=np.float64)[:, None], atlas.faces, f, w)[:, 0]
    covered = raster.covered

    def image(values: np.ndarray, channels: int) -> np.ndarray:
        shape = (size, size, channels) if channels > 1 else (size, size)
        return dilate(values.reshape(shape), covered)

    return SurfaceMaps(image(albedo, 3), image(roughness, 1), image(specular, 1), image(open_sky, 1),
                       image(normal, 3), covered, confidence.reshape(size, size))


@dataclass
class Textures:
    """The PNGs' pixels, all [size, size, 3] uint8, row 0 = top (v = 0) (see the module docstring)."""

    base_colour: np.ndarray
    orm: np.ndarray
    specular: np.ndarray
    normal: np.ndarray


# Occlusion below this is not divided out of the albedo any further (8-bit maps, noisy deep cavities);
# a specular strength above MAX_SPECULAR would leave the diffuse nothing (albedo / (1 - k_s)).
MIN_OCCLUSION = 0.05
MAX_SPECULAR = 0.95


def encode_textures(maps: SurfaceMaps, atlas: UVMesh, frames: TangentFrames, raster: UVRaster,
                    chunk: int = 1 << 16) -> Textures:
    """SurfaceMaps -> the glTF textures of one atlas (raster: the same atlas at maps.size).

    Base colour = albedo / (occlusion * (1 - k_s)), sRGB-encoded. The photos' albedo holds the
    ambient occlusion the SH model has no term for, and PBR renderers multiply the occlusion map
    into their ambient light again, so it moves from the albedo into the map; and they take
    1 - F0 from the diffuse (specular_colour_texture). A renderer that does both gives back the
    material's albedo exactly. The occlusion map never darkens a texel further than its albedo
    allows (occlusion >= max over channels of albedo / (1 - k_s)): where the photos show a bright
    surface, the light was evidently not blocked that much, and a base colour above 1 could not
    be stored. A renderer that ignores the occlusion map (Blender's importer) shows cavities a
    little too bright.
    The normal map holds each texel's world normal in the tangent frame a viewer builds there.
    """
    size = maps.size
    k_s = np.clip(maps.specular, 0.0, MAX_SPECULAR)
    brightest = maps.albedo.max(axis=-1) / (1.0 - k_s)
    occlusion = np.clip(np.maximum(maps.occlusion, brightest), MIN_OCCLUSION, 1.0)
    base = maps.albedo / (occlusion * (1.0 - k_s))[..., None]
    orm = np.stack([occlusion, maps.roughness, np.zeros_like(maps.roughness)], axis=-1)
    specular = np.repeat(specular_colour_texture(k_s)[..., None], 3, axis=-1)

    normal_ts = np.zeros((size * size, 3), dtype=np.float32)
    normal_ts[:] = (0.0, 0.0, 1.0)
    idx = np.flatnonzero(raster.covered.ravel())
    bitangents = np.cross(frames.normals, frames.tangents[:, :3]) * frames.tangents[:, 3:]
    for start in range(0, len(idx), chunk):
        texels = idx[start:start + chunk]
        face, bary = raster.face.ravel()[texels], raster.bary.reshape(-1, 3)[texels]
        n = _unit(_interpolate(frames.normals, atlas.faces, face, bary))
        t = _unit(_interpolate(frames.tangents[:, :3], atlas.faces, face, bary))
        b = _unit(_interpolate(bitangents, atlas.faces, face, bary))
        normal_ts[texels] = world_to_tangent(_unit(maps.normal.reshape(-1, 3)[texels].astype(np.float64)), n, t, b)
    nrm = dilate(to_uint8((normal_ts.reshape(size, size, 3) + 1.0) / 2.0), raster.covered)
    return Textures(to_uint8(linear_to_srgb(base)), to_uint8(orm), to_uint8(specular), nrm)
