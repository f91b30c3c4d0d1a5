"""Render Keenan Crane's Spot cow into a capture with exact ground truth for every pipeline stage.

The cow is ray traced (open3d RaycastingScene) from known cameras under known per-photo SH
lighting, so tests can compare recovered masks, cameras, geometry, normals, albedo and lighting
with the truth. Shading is in linear RGB: albedo / pi * E(n) + specular * sh_specular(r, s); photos
are written sRGB-encoded. Optional cast shadows (off by default): where the cow blocks the light's
dominant direction, only the ambient part of the light arrives and there is no specular.

World frame: the mesh is centred at its bounding-box centre and scaled to a bounding-sphere
radius of 1; +Y is up (Spot's own up axis) and the cow faces +Z. Cameras follow the shared
transforms.json convention (OpenGL axes: camera looks along -Z, +Y up, +X right; camera-to-world).

Layout written under the output folder:
  images/r_000.png ...          training photos, RGBA sRGB, alpha = coverage
  test/r_NNN.png ...            held-out photos (numbering continues)
  transforms.json, transforms_test.json   cameras (fl_x, fl_y, cx, cy, w, h; frames)
  lighting.json, lighting_test.json       per-photo SH light ([9, 3] linear RGB radiance)
  gt/<stem>.npz                 normal [H,W,3] world, depth [H,W] (along the camera's -Z; 0 where
                                empty), alpha [H,W], albedo [H,W,3] linear, shadow [H,W]
                                (0..1, how much of the directional light is cast-shadowed;
                                0 without --shadows)
  gt/<stem>_normal.png          world normals as (n + 1) / 2, alpha = coverage
  gt/mesh.ply                   the normalised mesh in world coordinates
  capture.json                  the generator's parameters and the mesh normalisation

Usage: python -m tests.synthetic.spot_capture --out DIR [--size 256] [--train 40] [--heldout 8]
       [--lighting ambient|constant|random] [--specular 0] [--glossiness 20] [--shadows] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open3d as o3d
import torch
from PIL import Image

from stages.common.images import sample_bilinear
from stages.common.colour import linear_to_srgb, srgb_to_linear
from stages.common.sh import (
    ambient_sh,
    random_sh_light,
    sh_dominant_direction,
    sh_irradiance,
    sh_specular,
    write_lighting,
)

# Keenan Crane's Spot (public domain, tests/data/spot); NEROIC_SPOT_DIR swaps in another texture.
SPOT_DIR = Path(os.environ.get("NEROIC_SPOT_DIR", Path(__file__).resolve().parent.parent / "data" / "spot"))

LIGHTING_MODES = ("ambient", "constant", "random")


@dataclass
class SpotModel:
    """The normalised textured mesh, split at UV seams for texturing, welded for geometry.

    vertices [V, 3], uvs [V, 2] and normals [V, 3] are per split vertex (one per distinct OBJ
    position/UV pair); faces [F, 3] index them. mesh_vertices [P, 3] with mesh_faces [F, 3] is the
    same surface welded (one vertex per OBJ position: watertight). normals are
    smooth, area-weighted over the welded mesh, so seams do not show in the shading.
    texture [Ht, Wt, 3] is the albedo in linear RGB, row 0 = uv v of 1.
    Normalisation: world = scale * (obj - centre).
    """

    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    normals: np.ndarray
    mesh_vertices: np.ndarray
    mesh_faces: np.ndarray
    texture: np.ndarray
    centre: np.ndarray
    scale: float


def load_spot(spot_dir: Path = SPOT_DIR) -> SpotModel:
    """Parse spot_triangulated.obj (v, vt, triangles 'f v/vt ...') and its sRGB texture."""
    positions, texcoords, face_v, face_vt = [], [], [], []
    with open(spot_dir / "spot_triangulated.obj", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "v":
                positions.append([float(p) for p in parts[1:4]])
            elif parts[0] == "vt":
                texcoords.append([float(p) for p in parts[1:3]])
            elif parts[0] == "f":
                if len(parts) != 4:
                    raise ValueError("spot OBJ: expected triangles")
                corners = [p.split("/") for p in parts[1:]]
                face_v.append([int(c[0]) - 1 for c in corners])
                face_vt.append([int(c[1]) - 1 for c in corners])
    positions = np.asarray(positions, dtype=np.float64)
    texcoords = np.asarray(texcoords, dtype=np.float64)
    face_v = np.asarray(face_v, dtype=np.int64)
    face_vt = np.asarray(face_vt, dtype=np.int64)

    lo, hi = positions.min(axis=0), positions.max(axis=0)
    centre = 0.5 * (lo + hi)
    scale = 1.0 / np.linalg.norm(positions - centre, axis=1).max()
    mesh_vertices = (positions - centre) * scale

    # Area-weighted smooth normals on the welded mesh (cross product length = 2 * area).
    tri = mesh_vertices[face_v]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    welded_normals = np.zeros_like(mesh_vertices)
    for k in range(3):
        np.add.at(welded_normals, face_v[:, k], face_n)
    welded_normals /= np.linalg.norm(welded_normals, axis=1, keepdims=True)

    pairs, inverse = np.unique(np.stack([face_v.ravel(), face_vt.ravel()], axis=1), axis=0, return_inverse=True)
    weld = pairs[:, 0]
    texture = srgb_to_linear(np.asarray(Image.open(spot_dir / "spot_texture.png").convert("RGB"), dtype=np.float32) / 255.0)
    return SpotModel(
        vertices=mesh_vertices[weld],
        faces=inverse.reshape(-1, 3),
        uvs=texcoords[pairs[:, 1]],
        normals=welded_normals[weld],
        mesh_vertices=mesh_vertices,
        mesh_faces=face_v,
        texture=texture,
        centre=centre,
        scale=float(scale),
    )


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of an OBJ texture [Ht, Wt, C] at OBJ UVs [N, 2] (v up) -> [N, C]."""
    return sample_bilinear(texture, np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1))


def look_at(position: np.ndarray, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """OpenGL camera-to-world [4, 4] at `position` whose -Z axis looks at `target`, +Y towards `up`."""
    position = np.asarray(position, dtype=np.float64)
    back = position - np.asarray(target, dtype=np.float64)
    back /= np.linalg.norm(back)
    right = np.cross(np.asarray(up, dtype=np.float64), back)
    right /= np.linalg.norm(right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, np.cross(back, right), back, position
    return c2w


def spiral_cameras(n: int, radius: float, elevation_deg: tuple[float, float], azimuth_offset: float) -> np.ndarray:
    """n camera-to-world matrices [n, 4, 4] on a golden-angle spiral over an elevation band.

    sin(elevation) is evenly spaced, so the cameras cover the band's area evenly; consecutive
    cameras differ in azimuth by the golden angle. All look at the origin from distance `radius`.
    """
    lo, hi = (math.sin(math.radians(e)) for e in elevation_deg)
    k = np.arange(n) + 0.5
    elevation = np.arcsin(lo + (hi - lo) * k / n)
    azimuth = azimuth_offset + k * math.pi * (3.0 - math.sqrt(5.0))
    positions = radius * np.stack(
        [np.cos(elevation) * np.sin(azimuth), np.sin(elevation), np.cos(elevation) * np.cos(azimuth)], axis=-1
    )
    return np.stack([look_at(p) for p in positions])


def heldout_indices(n_total: int, n_heldout: int) -> np.ndarray:
    """Indices of the held-out cameras, spread evenly through the spiral (so across elevations)."""
    return np.floor((np.arange(n_heldout) + 0.5) * n_total / max(n_heldout, 1)).astype(np.int64)


class SpotRenderer:
    """Ray traces the model; holds the open3d scene so many views share one BVH."""

    def __init__(self, model: SpotModel, nthreads: int = 0):
        self.model = model
        self.nthreads = nthreads
        self.scene = o3d.t.geometry.RaycastingScene(nthreads=nthreads)
        self.scene.add_triangles(
            o3d.core.Tensor(model.vertices.astype(np.float32)),
            o3d.core.Tensor(model.faces.astype(np.uint32)),
        )

    def _occluded(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        """Whether rays origins [N, 3] + t dirs [N, 3], t > 0, hit the mesh -> bool [N]."""
        rays = np.concatenate([origins, dirs], axis=1).astype(np.float32)
        return self.scene.test_occlusions(o3d.core.Tensor(rays), nthreads=self.nthreads).numpy()

    def render(
        self,
        c2w: np.ndarray,
        focal: float,
        size: int,
        light: np.ndarray,
        specular: float = 0.0,
        glossiness: float = 20.0,
        shadows: bool = False,
        supersample: int = 2,
        albedo_at=None,
    ) -> dict[str, np.ndarray]:
        """One view of size x size pixels (principal point at the centre, pixel centres at +0.5).
        `albedo_at(points [N, 3], normals [N, 3]) -> [N, 3]` (linear) paints the surface instead of
        the texture.

        Each pixel averages supersample^2 rays. With shadows, a hit facing the light's dominant
        direction whose ray towards it is blocked gets only the ambient irradiance and no specular
        (faded in near the terminator).
        Returns float32 arrays: rgb [H, W, 3] linear (straight, not premultiplied; unclipped),
        alpha, normal [H, W, 3] world unit, depth [H, W] along the camera's -Z, albedo [H, W, 3]
        linear, shadow [H, W] (0..1, how much of the directional light is blocked); all 0 where empty.
        """
        m = self.model
        ss = supersample
        hi = size * ss
        coords = (np.arange(hi) + 0.5) / ss - 0.5 * size  # sub-pixel centres relative to (cx, cy)
        px, py = np.meshgrid(coords, coords)
        # Camera-space directions with z = -1, so the hit distance t is directly the depth along -Z.
        d_cam = np.stack([px / focal, -py / focal, -np.ones_like(px)], axis=-1).reshape(-1, 3)
        d_world = d_cam @ c2w[:3, :3].T
        origins = np.broadcast_to(c2w[:3, 3], d_world.shape)
        rays = np.concatenate([origins, d_world], axis=1).astype(np.float32)
        hits = self.scene.cast_rays(o3d.core.Tensor(rays), nthreads=self.nthreads)
        t = hits["t_hit"].numpy()
        hit = np.isfinite(t)
        prim = hits["primitive_ids"].numpy()[hit].astype(np.int64)
        bary = hits["primitive_uvs"].numpy()[hit].astype(np.float64)
        weights = np.concatenate([1.0 - bary.sum(axis=1, keepdims=True), bary], axis=1)  # [N, 3]
        corners = m.faces[prim]  # [N, 3]

        normal = np.einsum("nk,nkc->nc", weights, m.normals[corners])
        normal /= np.linalg.norm(normal, axis=1, keepdims=True)
        if albedo_at is None:
            albedo = sample_texture(m.texture, np.einsum("nk,nkc->nc", weights, m.uvs[corners])).astype(np.float64)
        else:
            albedo = np.asarray(albedo_at(c2w[:3, 3] + t[hit, None] * d_world[hit], normal), dtype=np.float64)
        view = d_world[hit] / np.linalg.norm(d_world[hit], axis=1, keepdims=True)  # camera -> surface

        light_t = torch.from_numpy(np.asarray(light, dtype=np.float64))
        irradiance = sh_irradiance(light_t, torch.from_numpy(normal)).numpy()
        glossy = np.zeros_like(irradiance)
        if specular > 0.0:
            reflect = view - 2.0 * np.sum(view * normal, axis=1, keepdims=True) * normal
            glossy = specular * sh_specular(light_t, torch.from_numpy(reflect), glossiness).numpy()

        shadow = np.zeros(len(normal))  # how much of the directional light is blocked, 0..1
        if shadows:
            to_light = sh_dominant_direction(light)
            # Start the shadow ray just off the triangle, on the viewer's side, so it misses it.
            face_n = hits["primitive_normals"].numpy()[hit].astype(np.float64)
            face_n *= -np.sign(np.sum(face_n * view, axis=1, keepdims=True))
            start = c2w[:3, 3] + t[hit, None] * d_world[hit] + 1e-3 * face_n
            # Only surfaces facing the light can be in a cast shadow (the SH shading already darkens
            # the others); the shadow fades in over n.l in [0, 0.2] so that the faceted mesh does
            # not draw hard triangle edges along the terminator.
            fade = np.clip((normal @ to_light) / 0.2, 0.0, 1.0) * (face_n @ to_light > 0.0)
            test = fade > 0.0
            shadow[test] = fade[test] * self._occluded(start[test], np.broadcast_to(to_light, start[test].shape))
            # In shadow the directional part is gone and only the ambient (band 0) light arrives.
            ambient_irradiance = math.pi * 0.282095 * np.asarray(light, dtype=np.float64)[0]
            shadowed = np.minimum(irradiance, ambient_irradiance)
            irradiance = irradiance + shadow[:, None] * (shadowed - irradiance)
            glossy *= (1.0 - shadow)[:, None]

        radiance = np.maximum(albedo / math.pi * irradiance + glossy, 0.0)

        fine_row, fine_col = np.divmod(np.flatnonzero(hit), hi)
        pixel = (fine_row // ss) * size + fine_col // ss  # output pixel of each hit

        def pool(values: np.ndarray) -> np.ndarray:
            """Sum per-hit values [N, C] over each output pixel's ss x ss rays -> [H, W, C]."""
            sums = [np.bincount(pixel, weights=values[:, c], minlength=size * size) for c in range(values.shape[1])]
            return np.stack(sums, axis=-1).reshape(size, size, -1)

        count = pool(np.ones((len(normal), 1)))[..., 0]
        denom = np.maximum(count, 1.0)[..., None]
        summed_normal = pool(normal)
        normal_px = summed_normal / np.maximum(np.linalg.norm(summed_normal, axis=-1, keepdims=True), 1e-12)
        return {
            "rgb": (pool(radiance) / denom).astype(np.float32),
            "alpha": (count / ss**2).astype(np.float32),
            "normal": normal_px.astype(np.float32),
            "depth": (pool(t[hit, None]) / denom)[..., 0].astype(np.float32),
            "albedo": (pool(albedo) / denom).astype(np.float32),
            "shadow": (pool(shadow[:, None]) / denom)[..., 0].astype(np.float32),
        }


def _rgba_png(path: Path, rgb01: np.ndarray, alpha: np.ndarray) -> None:
    """Write [H, W, 3] values in [0, 1] plus alpha [H, W] as an 8-bit RGBA PNG."""
    rgba = np.concatenate([rgb01, alpha[..., None]], axis=-1)
    Image.fromarray(np.round(np.clip(rgba, 0.0, 1.0) * 255.0).astype(np.uint8), mode="RGBA").save(path)


def _write_transforms(path: Path, focal: float, size: int, frames: list[tuple[str, np.ndarray]]) -> None:
    data = {
        "fl_x": focal, "fl_y": focal, "cx": size / 2.0, "cy": size / 2.0, "w": size, "h": size,
        "camera_model": "OPENCV",
        "frames": [{"file_path": fp, "transform_matrix": c2w.tolist()} for fp, c2w in frames],
    }
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def make_spot_capture(
    out_dir,
    size: int = 256,
    n_train: int = 40,
    n_heldout: int = 8,
    lighting: str = "constant",
    specular: float = 0.0,
    glossiness: float = 20.0,
    shadows: bool = False,
    seed: int = 0,
    supersample: int = 2,
    radius: float = 3.2,
    fov_deg: float = 45.0,
    elevation_deg: tuple[float, float] = (-20.0, 60.0),
    nthreads: int = 0,
) -> Path:
    """Render a Spot capture into out_dir (layout in the module docstring) and return its path.

    lighting: 'ambient' = uniform white radiance 1 for every photo (the photo then shows the albedo
    exactly); 'constant' = one random_sh_light (from the seed) shared by every photo; 'random' = a
    new random_sh_light per photo, held-out photos included. Cameras and lights come from separate
    seeded streams, so changing the lighting keeps the cameras.
    """
    if lighting not in LIGHTING_MODES:
        raise ValueError(f"lighting must be one of {LIGHTING_MODES}, got {lighting!r}")
    out = Path(out_dir)
    for sub in ("images", "test", "gt"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    model = load_spot()
    renderer = SpotRenderer(model, nthreads=nthreads)
    focal = 0.5 * size / math.tan(math.radians(fov_deg) / 2.0)
    camera_rng = np.random.default_rng([seed, 0])
    light_rng = np.random.default_rng([seed, 1])
    n_total = n_train + n_heldout
    c2ws = spiral_cameras(n_total, radius, elevation_deg, camera_rng.uniform(0.0, 2.0 * math.pi))
    is_heldout = np.zeros(n_total, dtype=bool)
    is_heldout[heldout_indices(n_total, n_heldout)] = True
    order = np.concatenate([np.flatnonzero(~is_heldout), np.flatnonzero(is_heldout)])  # train first

    shared_light = ambient_sh([1.0, 1.0, 1.0]) if lighting == "ambient" else random_sh_light(light_rng)
    splits = {"train": ([], []), "test": ([], [])}  # frames, lights
    for number, index in enumerate(order):
        split, folder = ("test", "test") if is_heldout[index] else ("train", "images")
        stem = f"r_{number:03d}"
        file_path = f"{folder}/{stem}.png"
        light = random_sh_light(light_rng) if lighting == "random" else shared_light
        view = renderer.render(c2ws[index], focal, size, light, specular, glossiness, shadows, supersample)

        _rgba_png(out / file_path, linear_to_srgb(view["rgb"]), view["alpha"])
        _rgba_png(out / "gt" / f"{stem}_normal.png", (view["normal"] + 1.0) / 2.0 * (view["alpha"] > 0)[..., None], view["alpha"])
        np.savez_compressed(out / "gt" / f"{stem}.npz", **{k: v for k, v in view.items() if k != "rgb"})
        splits[split][0].append((file_path, c2ws[index]))
        splits[split][1].append((file_path, light))

    _write_transforms(out / "transforms.json", focal, size, splits["train"][0])
    _write_transforms(out / "transforms_test.json", focal, size, splits["test"][0])
    write_lighting(out / "lighting.json", splits["train"][1])
    write_lighting(out / "lighting_test.json", splits["test"][1])

    mesh = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(model.mesh_vertices), o3d.utility.Vector3iVector(model.mesh_faces.astype(np.int32))
    )
    mesh.compute_vertex_normals()
    o3d.io.write_triangle_mesh(str(out / "gt" / "mesh.ply"), mesh, write_ascii=False)

    world_from_obj = np.diag([model.scale] * 3 + [1.0])
    world_from_obj[:3, 3] = -model.scale * model.centre
    params = {
        "generator": "tests.synthetic.spot_capture",
        "mesh": str(SPOT_DIR / "spot_triangulated.obj"),
        "texture": str(SPOT_DIR / "spot_texture.png"),
        "size": size, "n_train": n_train, "n_heldout": n_heldout, "lighting": lighting,
        "specular": specular, "glossiness": glossiness, "shadows": shadows, "seed": seed,
        "supersample": supersample, "radius": radius, "fov_deg": fov_deg, "elevation_deg": list(elevation_deg),
        "focal": focal,
        "world_from_obj": world_from_obj.tolist(),
        "world_up": [0.0, 1.0, 0.0],
        "notes": "world = scale * (obj - centre), bounding-sphere radius 1; depth in gt/*.npz is along the "
                 "camera's -Z axis, 0 where empty; SH lights are linear RGB radiance (docs/method.md).",
    }
    (out / "capture.json").write_text(json.dumps(params, indent=1) + "\n", encoding="utf-8")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.synthetic.spot_capture", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--size", type=int, default=256, help="image width = height in pixels")
    parser.add_argument("--train", type=int, default=40, help="number of training photos")
    parser.add_argument("--heldout", type=int, default=8, help="number of held-out photos")
    parser.add_argument("--lighting", choices=LIGHTING_MODES, default="constant")
    parser.add_argument("--specular", type=float, default=0.0, help="specular strength (0 = Lambertian)")
    parser.add_argument("--glossiness", type=float, default=20.0)
    parser.add_argument("--shadows", action=argparse.BooleanOptionalAction, default=False, help="cast shadows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--supersample", type=int, default=2, help="rays per pixel along each axis")
    parser.add_argument("--radius", type=float, default=3.2, help="camera distance from the object centre")
    parser.add_argument("--fov", type=float, default=45.0, help="field of view in degrees")
    parser.add_argument("--threads", type=int, default=0, help="ray-tracing threads (0 = all)")
    args = parser.parse_args(argv)
    out = make_spot_capture(
        args.out, size=args.size, n_train=args.train, n_heldout=args.heldout, lighting=args.lighting,
        specular=args.specular, glossiness=args.glossiness, shadows=args.shadows, seed=args.seed,
        supersample=args.supersample, radius=args.radius, fov_deg=args.fov, nthreads=args.threads,
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
