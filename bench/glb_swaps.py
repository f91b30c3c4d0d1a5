"""Where a GLB's relighting error comes from: copies of it with one part swapped for spot-wild's truth.

    python -m bench.glb_swaps MODEL.glb OUT [--blender-python PY]

MODEL.glb must be in spot-wild's frame (a true-camera run's GLB, or bench.wild's
model_in_capture_frame.glb). Writes OUT/NAME.glb for
  as_exported    the GLB rewritten unchanged (the baseline the others are compared with)
  true_colour    base colour from Spot's own texture, looked up at the nearest point of the true
                 mesh (../shared/data/spot: the mesh and texture spot-wild was rendered from)
  true_lobe      roughness 0.45 and F0 0.04 everywhere (what spot-wild's material is)
  true_material  both
  smooth         both, on the mesh smoothed by 30 Taubin steps, without the normal map
and, with a Python that has bpy, scores each through bench/blender_relit.py (OUT/NAME/...),
printing one JSON line {NAME: dB}. What the true material on neroic's mesh scores is the ceiling
the shape leaves; what the true colour adds alone is the base colour's share of the error.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import trimesh
from PIL import Image

from bench import SHARED_DATA
from bench.blender_relit import blender_figure
from stages.export.bake import dilate, rasterize_uv, specular_colour_texture
from stages.export.gltf import TexturedMesh, png_bytes, read_glb, write_glb

TRUE_ROUGHNESS, TRUE_F0 = 0.45, 0.04  # spot-wild's material (its README): Principled, no metal


def spot_from_capture(capture_mesh: trimesh.Trimesh, spot: trimesh.Trimesh) -> tuple[float, np.ndarray, np.ndarray]:
    """The similarity (scale, rotation [3, 3], translation [3]) taking the capture's true mesh onto
    Spot's own file: the two share their triangles in order, so their centroids fit it exactly."""
    a, b = capture_mesh.triangles_center, spot.triangles_center
    ca, cb = a.mean(0), b.mean(0)
    scale = np.sqrt(((b - cb) ** 2).sum() / ((a - ca) ** 2).sum())
    u, _, vt = np.linalg.svd((b - cb).T @ (a - ca))
    rotation = u @ vt
    return scale, rotation, cb - scale * rotation @ ca


def true_base_colour(model, capture: Path) -> np.ndarray:
    """[H, W, 3] uint8 sRGB: for each texel of the GLB's atlas, Spot's texture at the nearest
    point of the true surface."""
    import open3d as o3d

    spot = trimesh.load(SHARED_DATA / "spot" / "spot_triangulated.obj", process=False)
    texture = np.asarray(Image.open(SHARED_DATA / "spot" / "spot_texture.png").convert("RGB"))
    scale, rotation, shift = spot_from_capture(trimesh.load(capture / "gt" / "mesh.ply", process=False), spot)
    size = model.base_colour.shape[0]
    raster = rasterize_uv(SimpleNamespace(uvs=model.uvs, faces=model.faces), size)
    covered = raster.covered
    points = (model.positions[model.faces[raster.face[covered]]] * raster.bary[covered][..., None]).sum(1)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(spot.vertices.astype(np.float32)), o3d.core.Tensor(spot.faces.astype(np.uint32)))
    nearest = scene.compute_closest_points(o3d.core.Tensor((scale * points @ rotation.T + shift).astype(np.float32)))
    triangle = nearest["primitive_ids"].numpy().astype(np.int64)
    uv = nearest["primitive_uvs"].numpy().astype(np.float64)
    weights = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=1)
    tex_uv = (spot.visual.uv[spot.faces[triangle]] * weights[..., None]).sum(1)
    h, w = texture.shape[:2]
    cols = np.clip((tex_uv[:, 0] * w).astype(int), 0, w - 1)
    rows = np.clip(((1.0 - tex_uv[:, 1]) * h).astype(int), 0, h - 1)
    base = np.array(model.base_colour[..., :3])
    base[covered] = texture[rows, cols]
    return dilate(base, covered)


def write_swaps(glb: Path, capture: Path, out: Path) -> list[str]:
    """The five GLBs of the module docstring; their names."""
    model = read_glb(glb)
    orm = np.array(model.metallic_roughness[..., :3])
    true_orm = orm.copy()
    true_orm[..., 1], true_orm[..., 2] = round(TRUE_ROUGHNESS * 255), 0
    specular = np.asarray(model.specular_colour)[..., :3]
    true_specular = np.full_like(specular, round(float(specular_colour_texture(np.array(TRUE_F0))) * 255))
    colour, true_colour = np.asarray(model.base_colour)[..., :3], true_base_colour(model, capture)
    normal_map = None if model.normal is None else np.asarray(model.normal)[..., :3]

    def save(name, base, orm_map, specular_map, positions=model.positions, normals=model.normals, normal=normal_map):
        write_glb(out / f"{name}.glb", TexturedMesh(
            positions.astype(np.float32), normals.astype(np.float32), model.tangents.astype(np.float32),
            model.uvs.astype(np.float32), model.faces, png_bytes(base), png_bytes(orm_map),
            None if normal is None else png_bytes(normal), png_bytes(specular_map)))

    out.mkdir(parents=True, exist_ok=True)
    save("as_exported", colour, orm, specular)
    save("true_colour", true_colour, orm, specular)
    save("true_lobe", colour, true_orm, true_specular)
    save("true_material", true_colour, true_orm, true_specular)
    # the atlas splits vertices along its seams: weld them so smoothing keeps the mesh closed
    welded_vertices, index = np.unique(np.round(model.positions, 6), axis=0, return_inverse=True)
    index = index.ravel()
    mesh = trimesh.Trimesh(welded_vertices, index[model.faces], process=False)
    trimesh.smoothing.filter_taubin(mesh, iterations=30)
    save("smooth", true_colour, true_orm, true_specular, mesh.vertices[index], mesh.vertex_normals[index], None)
    return ["as_exported", "true_colour", "true_lobe", "true_material", "smooth"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("glb", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--capture", type=Path, default=SHARED_DATA / "spot-wild")
    parser.add_argument("--blender-python", default=os.environ.get("NEROIC_BLENDER_PYTHON", ""))
    args = parser.parse_args(argv)
    names = write_swaps(args.glb, args.capture, args.out)
    if not args.blender_python:
        print(f"wrote {', '.join(names)} to {args.out}; no Python with bpy given, so nothing scored")
        return
    print(json.dumps({name: blender_figure(args.out / f"{name}.glb", args.capture, args.out / name,
                                           args.blender_python)["blender_relit_psnr"] for name in names}))


if __name__ == "__main__":
    main()
