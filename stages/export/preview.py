"""Render the exported model under SH lighting: relit comparisons with photos, turntable previews.

    model = read_glb("model.glb")                    # or any GLBModel
    rgb, alpha = render_mesh_sh(model, frame, sh)    # frame: stages.common.cameras.Frame, sh [9, 3]

A ray tracer (open3d's BVH) shades what the file's maps say, with the material stage's own
model (stages/material/shading.py): the maps are decoded back into the learned material, and
the SH light (the shared convention, stages.common.sh) lights it as the material stage does:
    k_s      = F0 of KHR_materials_specular (bake.specular_from_texture; 0.04 without it)
    s        = glossiness_from_roughness(roughness of the ORM texture's G channel)
    albedo   = base colour (sRGB decoded) * (1 - k_s) * occlusion (R), what a PBR renderer
               gives its diffuse layer under ambient light (bake.encode_textures)
    colour   = shade(albedo, k_s, s, n, view, light): albedo / pi * E(n) + k_s * the Phong lobe
with n the normal-mapped normal under the tangent-frame rule the viewer uses (see bake.py).
Output is linear RGB, like the synthetic captures' renderer, so both can be compared after sRGB
encoding.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stages.common.cameras import Frame, undistort
from stages.common.sh import sh_dominant_direction
from stages.common.colour import srgb_to_linear
from stages.common.images import sample_bilinear
from stages.export.bake import glossiness_from_roughness, specular_from_texture
from stages.export.gltf import GLBModel, read_glb
from stages.material.shading import shade


def pixel_rays(frame: Frame, supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """World rays through supersample^2 sub-pixel centres of every pixel, row-major over the
    (h * ss) x (w * ss) sub-pixel grid: origins [M, 3], unit directions [M, 3]."""
    ss = supersample
    cols = (np.arange(frame.w * ss) + 0.5) / ss
    rows = (np.arange(frame.h * ss) + 0.5) / ss
    px, py = np.meshgrid(cols, rows)
    x, y = undistort((px.ravel() - frame.cx) / frame.fl_x, (py.ravel() - frame.cy) / frame.fl_y,
                     frame.k1, frame.k2, frame.p1, frame.p2)
    d_cam = np.stack([x, -y, -np.ones(len(x))], axis=1)  # OpenCV -> OpenGL camera axes
    c2w = np.asarray(frame.c2w, dtype=np.float64)
    d = d_cam @ c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return np.broadcast_to(c2w[:3, 3], d.shape).copy(), d


def shading_normals(model: GLBModel, face: np.ndarray, bary: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """World normals [N, 3] at hits: vertex normals, bent by the normal map as a viewer does."""
    corners = model.faces[face]

    def interp(values):
        v = np.einsum("nk,nkc->nc", bary, values[corners])
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-20)

    n = interp(model.normals)
    if model.normal is None or model.tangents is None:
        return n
    t = interp(model.tangents[:, :3])
    b = interp(np.cross(model.normals, model.tangents[:, :3]) * model.tangents[:, 3:4])
    n_ts = sample_bilinear(model.normal[..., :3], uv) / 255.0 * 2.0 - 1.0
    out = t * n_ts[:, :1] + b * n_ts[:, 1:2] + n * n_ts[:, 2:3]
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-20)


def surface_material(model: GLBModel, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The learned material decoded from the model's maps at glTF UVs [N, 2] (see the module
    docstring): (diffuse albedo [N, 3] linear, occlusion and 1 - k_s folded in; k_s [N]; glossiness [N])."""
    n = len(uv)
    base = srgb_to_linear(sample_bilinear(model.base_colour[..., :3], uv) / 255.0).astype(np.float64)
    roughness = (sample_bilinear(model.metallic_roughness[..., 1:2], uv)[:, 0] / 255.0
                 if model.metallic_roughness is not None else np.ones(n))
    occlusion = sample_bilinear(model.occlusion[..., :1], uv)[:, 0] / 255.0 if model.occlusion is not None else np.ones(n)
    texel = sample_bilinear(model.specular_colour[..., :1], uv)[:, 0] / 255.0 if model.specular_colour is not None else np.ones(n)
    k_s = specular_from_texture(texel, model.specular_colour_factor, model.specular_factor, model.f0_ior)
    return base * ((1.0 - k_s) * occlusion)[:, None], k_s, glossiness_from_roughness(roughness)


def render_mesh_sh(model: GLBModel | str | Path, frame: Frame, sh_light: np.ndarray,
                   supersample: int = 2, shadows: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The model seen by `frame` under SH light sh_light [9, 3] (linear RGB radiance), shaded with
    the material stage's model from the exported maps (module docstring). With `shadows`, a
    shadow ray from each hit towards the light's dominant direction decides whether the light's
    directional part and the specular lobe arrive (the pipeline's shadow model, shading.py).

    Returns (rgb [H, W, 3] float32 linear, straight (not premultiplied), 0 where empty;
    alpha [H, W] float32 coverage), each pixel the mean of supersample^2 rays.
    """
    import open3d as o3d

    if not isinstance(model, GLBModel):
        model = read_glb(model)
    if model.normals is None or model.uvs is None or model.base_colour is None:
        raise ValueError("render_mesh_sh needs a model with normals, UVs and a base colour texture")
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(model.positions.astype(np.float32)),
                        o3d.core.Tensor(model.faces.astype(np.uint32)))
    origins, dirs = pixel_rays(frame, supersample)
    hits = scene.cast_rays(o3d.core.Tensor(np.concatenate([origins, dirs], axis=1).astype(np.float32)))
    hit = np.isfinite(hits["t_hit"].numpy())
    face = hits["primitive_ids"].numpy()[hit].astype(np.int64)
    buv = hits["primitive_uvs"].numpy()[hit].astype(np.float64)
    bary = np.stack([1.0 - buv[:, 0] - buv[:, 1], buv[:, 0], buv[:, 1]], axis=1)
    uv = np.einsum("nk,nkc->nc", bary, model.uvs[model.faces[face]])
    albedo, k_s, glossiness = surface_material(model, uv)
    normal = shading_normals(model, face, bary, uv)
    coeffs = torch.from_numpy(np.asarray(sh_light, dtype=np.float64))
    visibility = None
    if shadows:
        towards = np.broadcast_to(sh_dominant_direction(np.asarray(sh_light, dtype=np.float64)), normal.shape)
        points = origins[hit] + hits["t_hit"].numpy()[hit, None] * dirs[hit] + 1e-3 * normal
        rays = o3d.core.Tensor(np.concatenate([points, towards], axis=1).astype(np.float32))
        visibility = torch.from_numpy(1.0 - scene.test_occlusions(rays).numpy().astype(np.float64))
    radiance = shade(torch.from_numpy(albedo), torch.from_numpy(k_s), torch.from_numpy(glossiness),
                     torch.from_numpy(normal), torch.from_numpy(dirs[hit].astype(np.float64)), coeffs,
                     visibility).rgb.numpy()

    ss, w, h = supersample, frame.w, frame.h
    rows, cols = np.divmod(np.flatnonzero(hit), w * ss)
    pixel = (rows // ss) * w + cols // ss
    count = np.bincount(pixel, minlength=w * h).astype(np.float64)
    rgb = np.stack([np.bincount(pixel, weights=radiance[:, c], minlength=w * h) for c in range(3)], axis=1)
    rgb /= np.maximum(count, 1.0)[:, None]
    return rgb.reshape(h, w, 3).astype(np.float32), (count / ss**2).reshape(h, w).astype(np.float32)
