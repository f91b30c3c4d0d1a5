"""The pipeline on "online collection" captures, run as a user would and scored against their truth.

    python -m bench.wild spot-wild-true     # spot-wild with its true cameras (rembg masks)
    python -m bench.wild spot-wild          # spot-wild from the photos alone
    python -m bench.wild dino               # Middlebury dino: poses against the calibration
    python -m bench.wild ethiopian-head     # 66 real photos, light turning with the turntable
    python -m bench.wild skull              # the shipped example, photos to GLB
    python -m bench.wild spot-wild-ceiling  # what the truth itself scores on spot-wild's relit views
    python -m bench.wild CASE --out bench-runs/wild --set geometry.steps=400 ...

Cases live in ../shared/data (see its README) and examples/. Every case runs `neroic run` with
the shipped defaults (plus any --set), then scores what its truth allows; results go to
OUT/CASE/metrics.json and pictures beside it.

Poses (spot-wild, dino, ethiopian-head): photos posed, rotation and centre errors after a
similarity fit of the camera centres (bench/poses_accuracy.py). ethiopian-head also plots the
learned lights' dominant directions against the photo order (lights.png: they should turn with
the turntable) and writes the albedo beside the photos (albedo.png). ethiopian-head and skull
write the GLB rendered from three photos' cameras beside the photos (views.png); skull also the
geometry stage's held-out PSNR.

spot-wild: Spot path-traced in six real environments, each photo its own camera, exposure and
background; held-out cameras lit by two environments no photo saw, with those lights as order-2 SH.
From the photos alone, the truth is first moved into the model's frame (`shape_alignment`).
  masks     IoU of the masks stage's masks against the true coverage (mean, min)
  relit     the held-out views rendered by the material stage under the true SH of their unseen
            environment, against the photos (PSNR after one scale per colour channel, fitted over
            all held-out pixels inside the true mask: albedo times light is all photos fix)
  albedo    the material stage's albedo of those views against the true base colour (same fit)
  glb       the exported GLB under the same lights (bench's ray caster, shadow rays towards each
            light's dominant direction) against the photos (same fit); its texture sharpness as
            the ratio of gradient energy (render / photo) inside the eroded true mask
  chamfer   GLB to the true mesh, % of the true mesh's bounding-box diagonal (100k samples each way)
  normals   median angle between the GLB's smooth surface normals and the true mesh's, over the
            held-out pixels both cover
  blender   the GLB path-traced by Blender under the held-out environments themselves (sunrise,
            sunset: real skies with a sun), scored against test/ (bench/blender_relit.py; the truth
            scores 33.0 dB), when $NEROIC_BLENDER_PYTHON names a Python with bpy; from the photos
            alone, the GLB is first moved into the capture's frame by the same alignment
  ceiling   the relit score of the truth itself (true albedo and mesh) under the given SH, with
            and without cast shadows, and under the best order-2 SH fitted to each held-out photo
            (`relighting_ceiling`): no diffuse SH-lit model can be expected above these
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench import SHARED_DATA
from bench.spot_quality import stage_costs



def run_neroic(photos: Path, out: Path, extra: list[str], overrides: list[str]) -> float:
    """`neroic run` as a user runs it (a subprocess); returns the wall time in seconds."""
    command = [sys.executable, "-m", "pipeline", "run", str(photos), "--out", str(out / "model.glb"),
               "--workdir", str(out / "work"), "-q", *extra]
    for item in overrides:
        command += ["--set", item]
    started = time.perf_counter()
    done = subprocess.run(command)
    if done.returncode != 0:
        raise SystemExit(f"neroic run failed with exit code {done.returncode}")
    return time.perf_counter() - started


def mask_iou(workdir: Path, true_masks: Path) -> dict:
    """IoU of each usable mask against the true coverage (both at 0.5)."""
    from stages.common.images import read_mask
    from stages.common.inputs import MaskSet

    masks = MaskSet.load(workdir / "masks")
    ious = {}
    for stem in sorted(masks.files):
        truth = read_mask(true_masks / f"{stem}.png") >= 128
        mine = masks.binary(stem, (truth.shape[1], truth.shape[0]))
        ious[stem] = float((mine & truth).sum() / max((mine | truth).sum(), 1))
    values = list(ious.values())
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "per_photo": ious}


def raycasting_scene(mesh):
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(mesh.vertices.astype(np.float32)), o3d.core.Tensor(mesh.faces.astype(np.uint32)))
    return scene


def cast(scene, origins: np.ndarray, dirs: np.ndarray) -> dict:
    import open3d as o3d

    return scene.cast_rays(o3d.core.Tensor(np.concatenate([origins, dirs], axis=1).astype(np.float32)))


def true_surface(mesh, frame, scene=None, points: bool = False):
    """The mesh seen by `frame`: hit [H, W] bool, smooth unit normals [H, W, 3] (and, with
    points=True, the hit points [H, W, 3]); `scene`: the mesh's raycasting_scene, when one serves
    many frames."""
    from stages.export.preview import pixel_rays

    origins, dirs = pixel_rays(frame)
    hits = cast(raycasting_scene(mesh) if scene is None else scene, origins, dirs)
    t = hits["t_hit"].numpy()
    hit = np.isfinite(t)
    normals = np.zeros((hit.size, 3))
    face = hits["primitive_ids"].numpy()[hit].astype(np.int64)
    uv = hits["primitive_uvs"].numpy()[hit].astype(np.float64)
    bary = np.stack([1 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=1)
    n = np.einsum("nk,nkc->nc", bary, mesh.vertex_normals[mesh.faces[face]])
    normals[hit] = n / np.linalg.norm(n, axis=1, keepdims=True)
    hit, normals = hit.reshape(frame.h, frame.w), normals.reshape(frame.h, frame.w, 3)
    if not points:
        return hit, normals
    return hit, normals, (origins + dirs * np.where(hit.reshape(-1), t, 0.0)[:, None]).reshape(frame.h, frame.w, 3)


def relighting_ceiling(data: Path, n_directions: int = 256) -> dict:
    """What any diffuse model lit by order-2 SH can score on spot-wild's held-out views: the TRUE
    albedo and TRUE mesh, lit (a) by the given SH of each view's environment, (b) the same with
    each point's visibility of the sky through the true mesh (cast shadows, `n_directions` rays a
    point), (c) by the order-2 SH fitted to that very held-out photo's unclipped pixels (27 free
    numbers a view).
    Scored as `relit` is (PSNR after one scale per colour channel, inside the true mask)."""
    from bench.relighting import fit_channel_scale, srgb_psnr
    from stages.common.cameras import read_transforms
    from stages.common.colour import srgb_to_linear
    from stages.common.images import read_rgb
    from stages.common.sh import fibonacci_sphere, read_lighting, sh_irradiance, sh_radiance
    import trimesh

    frames = read_transforms(data / "test_transforms.json")
    lights = {Path(fp).stem: c for fp, c in read_lighting(data / "gt" / "lighting_test.json")}
    mesh = trimesh.load(data / "gt" / "mesh.ply", process=False)
    scene = raycasting_scene(mesh)
    sky = fibonacci_sphere(n_directions)
    unit_lights = torch.eye(9, dtype=torch.float64)[:, :, None].expand(9, 9, 3)  # light k: basis function k
    photos, given, shadowed, fitted = [], [], [], []
    for frame in frames:
        with Image.open(data / frame.file_path) as im:
            inside = np.asarray(im.convert("RGBA"))[..., 3] > 127
        hit, normals, points = true_surface(mesh, frame, scene, points=True)
        m = inside & hit
        n, x = normals[m], points[m]
        albedo = srgb_to_linear(read_rgb(data / "gt" / "albedo" / Path(frame.file_path).name) / 255.0)[m]
        photo = srgb_to_linear(read_rgb(data / frame.file_path) / 255.0)[m]
        light = torch.as_tensor(lights[frame.stem], dtype=torch.float64)
        given.append(albedo * sh_irradiance(light, torch.from_numpy(n)).numpy())
        radiance = sh_radiance(light, torch.from_numpy(sky)).numpy().clip(0, None)  # [K, 3]
        origins = (x + 1e-3 * n).astype(np.float32)
        visible = np.stack([~np.isfinite(cast(scene, origins, np.broadcast_to(d, origins.shape))["t_hit"].numpy())
                            for d in sky.astype(np.float32)], axis=1)
        shadowed.append(albedo * (((n @ sky.T).clip(0, None) * visible) @ radiance) * (4 * np.pi / len(sky)))
        basis = sh_irradiance(unit_lights, torch.from_numpy(n)[:, None, :])[..., 0].numpy()  # [P, 9]
        best = np.empty_like(photo)
        for c in range(3):
            design = basis * albedo[:, c:c + 1]
            unclipped = photo[:, c] < 0.99  # a clipped pixel says only "at least this bright"
            best[:, c] = design @ np.linalg.lstsq(design[unclipped], photo[unclipped, c], rcond=None)[0]
        fitted.append(best)
        photos.append(photo)
    truth = torch.from_numpy(np.concatenate(photos))
    scores = {}
    for name, parts in (("given_sh", given), ("given_sh_with_shadows", shadowed), ("best_sh_per_view", fitted)):
        lit = torch.from_numpy(np.concatenate(parts))
        scores[name] = round(srgb_psnr(lit * fit_channel_scale(lit, truth), truth), 2)
    return scores


def gradient_energy(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared finite-difference gradient of an image's luminance [H, W, 3] over mask [H, W]."""
    lum = image @ np.array([0.2126, 0.7152, 0.0722])
    gx, gy = np.zeros_like(lum), np.zeros_like(lum)
    gx[:, :-1], gy[:-1] = np.diff(lum, axis=1), np.diff(lum, axis=0)
    return float((gx ** 2 + gy ** 2)[mask].mean())


def exported_model(workdir: Path):
    """The workdir's GLB moved back into the pipeline's world: the export places the model (on the
    ground, scaled) by model_from_world, so cameras and lights of the workdir see it there."""
    from dataclasses import replace

    from stages.export.gltf import read_glb

    model = read_glb(workdir / "export" / "model.glb")
    world_from_model = np.linalg.inv(np.asarray(
        json.loads((workdir / "export" / "export.json").read_text())["model_from_world"], dtype=np.float64))
    linear = world_from_model[:3, :3]
    rotation = linear / np.cbrt(np.linalg.det(linear))

    def turned(vectors):
        return None if vectors is None else (vectors.astype(np.float64) @ rotation.T).astype(vectors.dtype)

    tangents = model.tangents
    if tangents is not None:
        tangents = np.concatenate([turned(tangents[:, :3]), tangents[:, 3:]], axis=1)
    positions = model.positions.astype(np.float64) @ linear.T + world_from_model[:3, 3]
    return replace(model, positions=positions.astype(model.positions.dtype), normals=turned(model.normals),
                   tangents=tangents)


def score_spot_wild(workdir: Path, data: Path, world_from_truth: np.ndarray | None = None) -> dict:
    """The held-out scores of a finished spot-wild workdir (world_from_truth: a similarity [4, 4]
    from the capture's frame to the workdir's, when the poses came from SfM)."""
    from dataclasses import replace

    import trimesh
    from scipy.ndimage import binary_erosion

    from bench.relighting import fit_channel_scale, srgb_psnr
    from stages.common.cameras import read_transforms, transform_c2w
    from stages.common.colour import srgb_to_linear
    from stages.common.images import read_rgb
    from stages.common.sh import read_lighting, rotate_sh
    from stages.export.mesh import chamfer_distance
    from stages.export.preview import render_mesh_sh
    from stages.render import Renderer, needed_stages

    frames = read_transforms(data / "test_transforms.json")
    lights = {Path(fp).stem: c for fp, c in read_lighting(data / "gt" / "lighting_test.json")}
    truth_mesh = trimesh.load(data / "gt" / "mesh.ply", process=False)
    scale = 1.0
    if world_from_truth is not None:
        rotation = world_from_truth[:3, :3] / np.cbrt(np.linalg.det(world_from_truth[:3, :3]))
        scale = float(np.cbrt(np.linalg.det(world_from_truth[:3, :3])))
        frames = [replace(f, c2w=transform_c2w(world_from_truth, f.c2w)) for f in frames]
        lights = {k: rotate_sh(v, rotation) for k, v in lights.items()}
        truth_mesh.apply_transform(world_from_truth)
    kinds = ("rgb", "albedo")
    renderer = Renderer({n: workdir / n for n in needed_stages(kinds, True, False)}, kinds, None, "cpu")
    model = exported_model(workdir)
    glb_mesh = trimesh.Trimesh(model.positions.astype(np.float64), model.faces, process=False)
    truth_scene, glb_scene = raycasting_scene(truth_mesh), raycasting_scene(glb_mesh)
    columns = {k: [] for k in ("photo", "relit", "albedo", "true_albedo", "glb")}
    angles, sharp_glb, sharp_photo, sheet = [], [], [], []
    for frame in frames:
        rgba = read_rgb(data / frame.file_path) / 255.0
        with Image.open(data / frame.file_path) as im:
            alpha = np.asarray(im.convert("RGBA"))[..., 3] / 255.0
        inside = alpha > 0.5
        photo = srgb_to_linear(rgba)
        renderer.light = torch.as_tensor(lights[frame.stem], dtype=torch.float32)
        pictures = renderer.render(frame)
        relit = srgb_to_linear(pictures["rgb"][..., :3] / 255.0)
        albedo = srgb_to_linear(pictures["albedo"][..., :3] / 255.0)
        true_albedo = srgb_to_linear(read_rgb(data / "gt" / "albedo" / Path(frame.file_path).name) / 255.0)
        glb, _ = render_mesh_sh(model, frame, lights[frame.stem], shadows=True)
        for name, image in (("photo", photo), ("relit", relit), ("albedo", albedo), ("true_albedo", true_albedo),
                            ("glb", glb)):
            columns[name].append(torch.from_numpy(np.ascontiguousarray(image[inside])).double())
        hit_true, n_true = true_surface(truth_mesh, frame, truth_scene)
        hit_glb, n_glb = true_surface(glb_mesh, frame, glb_scene)
        both = hit_true & hit_glb & inside
        angles.append(np.degrees(np.arccos(np.clip((n_true[both] * n_glb[both]).sum(-1), -1, 1))))
        core = binary_erosion(inside, iterations=3)
        sharp_glb.append(gradient_energy(glb, core))
        sharp_photo.append(gradient_energy(photo, core))
        sheet.append((rgba, relit, albedo, true_albedo, glb, inside))
    cat = {k: torch.cat(v) for k, v in columns.items()}
    relit_scale = fit_channel_scale(cat["relit"], cat["photo"])
    albedo_scale = fit_channel_scale(cat["albedo"], cat["true_albedo"])
    glb_scale = fit_channel_scale(cat["glb"], cat["photo"])
    diagonal = float(np.linalg.norm(truth_mesh.bounds[1] - truth_mesh.bounds[0]))
    _write_sheet(workdir.parent / "heldout.png", sheet, relit_scale, albedo_scale, glb_scale)
    return {
        "relit_psnr": srgb_psnr(cat["relit"] * relit_scale, cat["photo"]),
        "albedo_psnr": srgb_psnr(cat["albedo"] * albedo_scale, cat["true_albedo"]),
        "glb_relit_psnr": srgb_psnr(cat["glb"] * glb_scale, cat["photo"]),
        "glb_sharpness": float(np.mean(sharp_glb) / np.mean(sharp_photo)),
        "chamfer_percent_of_diagonal": 100.0 * chamfer_distance(glb_mesh, truth_mesh) / diagonal,
        "normal_angle_median_deg": float(np.median(np.concatenate(angles))),
        "glb_faces": int(len(model.faces)), "units_per_truth_unit": scale,
    }


def _write_sheet(path: Path, rows, relit_scale, albedo_scale, glb_scale) -> None:
    """photo | relit | albedo | true albedo | GLB relit, one row per held-out view (sRGB)."""
    from stages.common.colour import linear_to_srgb
    from stages.common.images import write_png

    lines = []
    for photo, relit, albedo, true_albedo, glb, inside in rows:
        tiles = [photo, linear_to_srgb(relit * relit_scale.numpy()), linear_to_srgb(albedo * albedo_scale.numpy()),
                 linear_to_srgb(true_albedo), linear_to_srgb(glb * glb_scale.numpy())]
        tiles = [np.clip(t, 0, 1) * (inside[..., None] if k else 1.0) for k, t in enumerate(tiles)]
        lines.append(np.concatenate(tiles, axis=1))
    width = max(line.shape[1] for line in lines)
    lines = [np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0))) for line in lines]
    write_png(path, (np.concatenate(lines, axis=0) * 255).round().astype(np.uint8))


def spot_wild_true(out: Path, overrides: list[str]) -> dict:
    data = SHARED_DATA / "spot-wild"
    seconds = run_neroic(data / "images", out, ["--poses", str(data / "transforms.json")], overrides)
    workdir = out / "work"
    return {"wall_seconds": round(seconds, 1), "costs": stage_costs(workdir),
            "masks": {k: v for k, v in mask_iou(workdir, data / "gt" / "masks").items() if k != "per_photo"},
            "heldout": score_spot_wild(workdir, data), "heldout_ceiling": relighting_ceiling(data),
            **blender_relit(out, workdir, data, np.eye(4))}


def blender_relit(out: Path, workdir: Path, data: Path, world_from_truth: np.ndarray) -> dict:
    """{"blender": ...}: the GLB path-traced by Blender under the held-out environments, scored
    (bench/blender_relit.py), when a Python with bpy is named by $NEROIC_BLENDER_PYTHON; else {}."""
    import os

    from bench.blender_relit import blender_figure, write_in_frame

    python = os.environ.get("NEROIC_BLENDER_PYTHON", "")
    if not python:
        print("NEROIC_BLENDER_PYTHON is not set: no Blender relighting figure", file=sys.stderr)
        return {}
    glb = out / "model_in_capture_frame.glb"
    write_in_frame(exported_model(workdir), np.linalg.inv(world_from_truth), glb)
    return {"blender": blender_figure(glb, data, out, python)}


def shape_alignment(truth, model, initial: np.ndarray, samples: int = 30000) -> np.ndarray:
    """The similarity [4, 4] that lays the true mesh onto the model's (trimesh meshes), by
    point-to-point ICP with scale from `initial`, in three shrinking radii. A model posed from the
    photos alone lives in a frame of its own; the similarity of its camera centres inherits their
    errors (spot-wild: 5 % of the cameras' spread in the median, the scale 7 % off), which shifts
    every held-out view by pixels. Aligning the shapes is how reconstructions are registered to
    their truth for scoring (as the DTU and Tanks and Temples benchmarks do)."""
    import open3d as o3d

    def cloud(mesh) -> "o3d.geometry.PointCloud":
        points = o3d.geometry.PointCloud()
        points.points = o3d.utility.Vector3dVector(np.asarray(mesh.sample(samples, seed=0), dtype=np.float64))
        return points

    source, target = cloud(truth), cloud(model)
    diagonal = float(np.linalg.norm(model.bounds[1] - model.bounds[0]))
    transform = np.asarray(initial, dtype=np.float64)
    for radius in (0.05, 0.02, 0.01):
        transform = o3d.pipelines.registration.registration_icp(
            source, target, radius * diagonal, transform,
            o3d.pipelines.registration.TransformationEstimationPointToPoint(with_scaling=True),
            o3d.pipelines.registration.ICPConvergenceCriteria(max_iteration=100)).transformation
    return np.asarray(transform)


def spot_wild(out: Path, overrides: list[str]) -> dict:
    """From the photos alone: poses and masks scored; held-out views scored in the workdir's frame
    (the truth mapped there by the similarity of the camera centres, refined by ICP of the true mesh
    onto the GLB: `shape_alignment`) when enough photos are posed; the scores under the centres'
    similarity alone are kept beside them."""
    from bench.poses_accuracy import score_workdir
    from stages.common.cameras import robust_similarity
    from stages.common.cameras import read_transforms

    data = SHARED_DATA / "spot-wild"
    try:
        seconds = run_neroic(data / "images", out, [], overrides)
    except SystemExit as failure:  # too few registered is a clear message, and a result to report
        return {"failed": str(failure), "costs": stage_costs(out / "work")}
    workdir = out / "work"
    poses = score_workdir(workdir, data / "transforms.json")
    result = {"wall_seconds": round(seconds, 1), "costs": stage_costs(workdir),
              "poses": {k: v for k, v in poses.items() if k != "per_photo"},
              "masks": {k: v for k, v in mask_iou(workdir, data / "gt" / "masks").items() if k != "per_photo"}}
    mine = {f.stem: f for f in read_transforms(workdir / "poses" / "transforms.json", roots=[workdir])}
    truth = {f.stem: f for f in read_transforms(data / "transforms.json")}
    common = sorted(set(mine) & set(truth))
    if len(common) >= 3:
        T, _ = robust_similarity(np.array([truth[s].centre for s in common]), np.array([mine[s].centre for s in common]))
        import trimesh

        model = exported_model(workdir)
        aligned = shape_alignment(trimesh.load(data / "gt" / "mesh.ply", process=False),
                                  trimesh.Trimesh(model.positions.astype(np.float64), model.faces, process=False), T)
        result["heldout_camera_centres_aligned"] = score_spot_wild(workdir, data, world_from_truth=T)
        result["heldout"] = score_spot_wild(workdir, data, world_from_truth=aligned)  # its sheet is written last
        result.update(blender_relit(out, workdir, data, aligned))
    return result


def dino(out: Path, overrides: list[str]) -> dict:
    from bench.poses_accuracy import score_workdir

    data = SHARED_DATA / "dino"
    photos = out / "photos"
    if not photos.exists():  # the photos only (the folder also holds the calibration files)
        photos.mkdir(parents=True)
        for p in sorted(data.glob("*.png")):
            (photos / p.name).symlink_to(p.resolve())
    seconds = run_neroic(photos, out, ["--until", "poses"], overrides)
    result = score_workdir(out / "work", data / "dinoSR_par.txt")
    return {"wall_seconds": round(seconds, 1), "costs": stage_costs(out / "work"),
            "poses": {k: v for k, v in result.items() if k != "per_photo"}}


def ethiopian_head(out: Path, overrides: list[str]) -> dict:
    from bench.poses_accuracy import score_workdir

    data = SHARED_DATA / "ethiopian_head"
    seconds = run_neroic(data / "images", out, [], overrides)
    workdir = out / "work"
    poses = score_workdir(workdir, data / "poses_bounds.npy")
    turning = _plot_light_directions(workdir, out / "lights.png")
    _albedo_sheet(workdir, out / "albedo.png")
    sharp = _glb_views(workdir, out / "views.png")
    return {"wall_seconds": round(seconds, 1), "costs": stage_costs(workdir),
            "poses": {k: v for k, v in poses.items() if k != "per_photo"}, "lights": turning,
            "glb_sharpness": sharp}


def skull(out: Path, overrides: list[str]) -> dict:
    examples = Path(__file__).resolve().parent.parent / "examples" / "skull" / "images"
    seconds = run_neroic(examples, out, [], overrides)
    workdir = out / "work"
    geometry = json.loads((workdir / "geometry" / "metrics.json").read_text())
    sharp = _glb_views(workdir, out / "views.png")
    return {"wall_seconds": round(seconds, 1), "costs": stage_costs(workdir),
            "geometry": {k: geometry[k] for k in ("heldout_psnr_masked", "steps", "train_seconds")},
            "glb_sharpness": sharp}


def _plot_light_directions(workdir: Path, path: Path) -> dict:
    """The learned lights' dominant directions (azimuth about +Y, elevation) against the photos'
    order; returns how far the azimuth turns over the set and how smoothly (median step)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stages.common.sh import read_lighting, sh_dominant_direction

    lights = sorted(read_lighting(workdir / "material" / "lighting.json"), key=lambda e: Path(e[0]).stem)
    dirs = np.stack([sh_dominant_direction(c) for _, c in lights])
    azimuth = np.degrees(np.unwrap(np.arctan2(dirs[:, 0], dirs[:, 2])))
    elevation = np.degrees(np.arcsin(np.clip(dirs[:, 1], -1, 1)))
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(azimuth, "o-", label="azimuth about +Y (deg, unwrapped)")
    ax.plot(elevation, "s-", label="elevation (deg)")
    ax.set(xlabel="photo (file-name order)", ylabel="degrees", title="learned lights' dominant directions")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    steps = np.abs(np.diff(azimuth))
    return {"azimuth_span_deg": float(azimuth.max() - azimuth.min()), "median_step_deg": float(np.median(steps)),
            "elevation_median_deg": float(np.median(elevation))}


def _albedo_sheet(workdir: Path, path: Path, views: int = 4) -> None:
    """A few training photos beside the model's albedo seen from the same cameras."""
    from stages.common.cameras import read_transforms
    from stages.common.images import read_rgb, shrink_view, write_png
    from stages.common.sheets import contact_sheet
    from stages.render import Renderer, needed_stages

    frames = read_transforms(workdir / "geometry" / "cameras.json", roots=[workdir])
    kinds = ("albedo",)
    renderer = Renderer({n: workdir / n for n in needed_stages(kinds, False, False)}, kinds, None, "cpu")
    tiles, labels = [], []
    for k in np.linspace(0, len(frames) - 1, views).round().astype(int):
        frame, photo = shrink_view(frames[k], 320, read_rgb(workdir / "ingest" / "images" / f"{frames[k].stem}.png"))
        albedo = renderer.render(frame)["albedo"]
        tiles += [photo, albedo[..., :3]]
        labels += [frame.stem, "albedo"]
    write_png(path, contact_sheet(tiles, labels, tile_height=240, columns=4))


def _glb_views(workdir: Path, path: Path, views: int = 3) -> float:
    """The exported GLB ray cast from three photos' cameras under each photo's learned light,
    beside the photos; returns the renders' gradient energy relative to the photos'."""
    from stages.common.cameras import read_transforms
    from stages.common.colour import linear_to_srgb
    from stages.common.images import read_rgb, shrink_view, write_png
    from stages.common.sheets import contact_sheet
    from stages.common.sh import read_lighting
    from stages.export.preview import render_mesh_sh

    frames = {f.stem: f for f in read_transforms(workdir / "geometry" / "cameras.json", roots=[workdir])}
    lights = {Path(fp).stem: c for fp, c in read_lighting(workdir / "material" / "lighting.json")}
    stems = [s for s in frames if s in lights]
    model = exported_model(workdir)
    tiles, labels, energy = [], [], []
    for stem in [stems[k] for k in np.linspace(0, len(stems) - 1, views).round().astype(int)]:
        frame, photo = shrink_view(frames[stem], 512, read_rgb(workdir / "ingest" / "images" / f"{stem}.png"))
        rgb, alpha = render_mesh_sh(model, frame, lights[stem])
        render = (np.clip(linear_to_srgb(rgb), 0, 1) * alpha[..., None] * 255).round().astype(np.uint8)
        tiles += [photo, render]
        labels += [stem, "GLB, its light"]
        inside = alpha > 0.99
        energy.append((gradient_energy(render / 255.0, inside), gradient_energy(photo / 255.0, inside)))
    write_png(path, contact_sheet(tiles, labels, tile_height=360, columns=2))
    return float(np.mean([e[0] for e in energy]) / np.mean([e[1] for e in energy]))


def spot_wild_ceiling(out: Path, overrides: list[str]) -> dict:
    return relighting_ceiling(SHARED_DATA / "spot-wild")


CASES = {"spot-wild-true": spot_wild_true, "spot-wild": spot_wild, "dino": dino, "ethiopian-head": ethiopian_head,
         "skull": skull, "spot-wild-ceiling": spot_wild_ceiling}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--out", type=Path, default=Path("bench-runs/wild"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    out = args.out / args.case
    out.mkdir(parents=True, exist_ok=True)
    metrics = CASES[args.case](out, args.overrides)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
