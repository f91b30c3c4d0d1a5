"""Quality and cost of the whole pipeline on a rendered Spot capture with known ground truth.

    python -m bench.spot_quality --lighting constant --until geometry        # issue 3, first figure
    python -m bench.spot_quality --lighting random --specular 0.15 --shadows # issues 3, 4 and 5
    python -m bench.spot_quality --profile quality --until geometry

Renders a capture (tests/synthetic/spot_capture.py: training photos, plus held-out cameras each
under its own light) and runs `neroic run` on all its photos with their known cameras, exactly as
a user would, naming the held-out photos in geometry.holdout_stems: no stage trains on them (the
geometry stage scores them, every `--eval-every` steps for its PSNR-against-time curve; the
material stage only learns the training photos' lights). Then, on the held-out cameras:
  geometry  masked PSNR of the neutral-appearance render on black against the photo composited on
            black by its true coverage, over the pixels at least half covered;
            silhouette IoU (opacity > 0.5 against coverage > 0.5)
  normals   median angle between the rendered Sobel normals and the true normals
  material  relit / albedo / lit-sphere PSNR after the per-channel scale fit
            (bench/relighting.py), at the surface the geometry stage found
  export    Chamfer distance from the GLB's mesh to the true mesh (% of the bounding-box
            diagonal, 100k samples each way); the GLB ray cast under each held-out light (with
            shadow rays when the photos have cast shadows) against its photo, PSNR after a
            per-channel scale fit over the true mask's pixels
Each stage's wall time and peak memory come from its manifest. Results are printed and saved as
OUT/metrics.json beside the capture and the workdir.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from stages import STAGE_NAMES
from stages.common.cameras import read_transforms
from stages.common.images import read_rgb
from stages.common.sh import read_lighting



def merged_capture(capture: Path) -> tuple[Path, Path, list[str]]:
    """A folder with the training and held-out photos (links), their cameras in one transforms.json,
    and the held-out stems."""
    photos = capture / "all_photos"
    train, test = (json.loads((capture / name).read_text()) for name in ("transforms.json", "transforms_test.json"))
    if not photos.exists():
        photos.mkdir()
        for frame in train["frames"] + test["frames"]:
            (photos / Path(frame["file_path"]).name).symlink_to((capture / frame["file_path"]).resolve())
    merged = capture / "transforms_all.json"
    merged.write_text(json.dumps({**train, "frames": train["frames"] + test["frames"]}, indent=1))
    return photos, merged, [Path(f["file_path"]).stem for f in test["frames"]]


def run_pipeline(capture: Path, workdir: Path, profile: str, until: str, eval_every: int, overrides: list[str]) -> None:
    photos, transforms, held = merged_capture(capture)
    command = [sys.executable, "-m", "pipeline", "run", str(photos), "--poses", str(transforms), "--workdir",
               str(workdir), "--out", str(workdir.parent / "model.glb"), "--profile", profile, "--until", until,
               "--set", f"geometry.holdout_stems={json.dumps(held)}", "--set", f"geometry.eval_every={eval_every}", "-q"]
    for item in overrides:
        command += ["--set", item]
    done = subprocess.run(command)
    if done.returncode != 0:
        raise SystemExit(f"neroic run failed with exit code {done.returncode}")


def stage_costs(workdir: Path) -> dict:
    costs = {}
    for name in STAGE_NAMES:
        manifest = workdir / name / "manifest.json"
        if manifest.exists():
            m = json.loads(manifest.read_text())
            costs[name] = {"seconds": round(m["seconds"], 1), "peak_rss_mb": m["peak_rss_mb"],
                           "figure": m.get("summary", {}).get("figure", "")}
    return costs


def heldout_truth(capture: Path):
    """Held-out frames with their photos (sRGB [H, W, 3] in 0..1), true coverage and normals."""
    frames = read_transforms(capture / "transforms_test.json")
    views = []
    for frame in frames:
        gt = np.load(capture / "gt" / f"{frame.stem}.npz", allow_pickle=False)
        views.append((frame, read_rgb(capture / frame.file_path) / 255.0, gt["alpha"], gt["normal"]))
    return views


def geometry_metrics(workdir: Path, views, with_normals: bool) -> dict:
    from stages.field.losses import psnr
    from stages.render import Renderer, needed_stages

    kinds = ("rgb", "alpha", "normal") if with_normals else ("rgb", "alpha")
    renderer = Renderer({name: workdir / name for name in needed_stages(kinds, False, False)}, kinds, None, "cpu")
    psnrs, ious, angles = [], [], []
    for frame, photo, alpha, normal in views:
        pictures = renderer.render(frame)
        rgba = pictures["rgb"] / 255.0
        rendered = rgba[..., :3] * rgba[..., 3:]
        inside = alpha > 0.5
        psnrs.append(psnr(float(((rendered - photo * alpha[..., None]) ** 2).mean(-1)[inside].mean())))
        mine = pictures["alpha"] / 255.0 > 0.5
        ious.append(float((mine & inside).sum() / max((mine | inside).sum(), 1)))
        if with_normals:
            n = pictures["normal"][..., :3] / 255.0 * 2 - 1
            both = inside & (pictures["normal"][..., 3] / 255.0 > 0.5)
            n = n[both] / np.linalg.norm(n[both], axis=-1, keepdims=True).clip(1e-6)
            cos = (n * normal[both]).sum(-1).clip(-1, 1)
            angles.append(np.degrees(np.arccos(cos)))
    result = {"heldout_psnr_masked": float(np.mean(psnrs)), "heldout_psnr_per_view": [round(p, 2) for p in psnrs],
              "silhouette_iou_mean": float(np.mean(ious)), "silhouette_iou_min": float(np.min(ious))}
    if with_normals:
        result["normal_angle_median_deg"] = float(np.median(np.concatenate(angles)))
    return result


def material_metrics(workdir: Path, capture: Path, views) -> dict:
    from stages.field.rays import Cameras
    from stages.field.trained import load_trained_field
    from bench.relighting import evaluate_capture
    from stages.material.material_field import load_material
    from stages.material.surface import surface_from_field
    from stages.material.visibility import DensityGrid

    trained = load_trained_field(workdir / "geometry", "cpu")
    field = load_material(workdir / "material", "cpu")
    density = DensityGrid.load_npz(workdir / "geometry" / "density_grid.npz")
    frames = [v[0] for v in views]
    cameras = Cameras.from_frames(frames)
    masks = [v[2] > 0.5 for v in views]
    photos = [np.round(v[1] * 255).astype(np.uint8) for v in views]
    # The held-out views' surface from the learned geometry; normals there are not needed for
    # the scores (the material field refines its own), so the true ones stand in as targets.
    heldout = surface_from_field(trained.field, trained.grid, cameras, trained.step_size, masks, photos,
                                 [v[3] for v in views], min_acc=0.5)
    learned = dict(read_lighting(workdir / "material" / "lighting.json"))
    metrics = evaluate_capture(field, learned, capture, heldout=heldout, density=density, keep_images=True)
    _write_material_sheet(workdir.parent / "material_heldout.png", metrics.images)
    return {k: v for k, v in metrics.summary().items()}


def _write_material_sheet(path: Path, images: dict) -> None:
    from stages.common.images import write_png

    rows = [np.concatenate([images[k][v] for k in ("photo", "relit", "albedo", "true_albedo")], axis=1)
            for v in range(len(images["photo"]))]
    write_png(path, (np.concatenate(rows, axis=0).clip(0, 1) * 255).round().astype(np.uint8))


def export_metrics(workdir: Path, capture: Path, views, shadows: bool) -> dict:
    from stages.export.gltf import read_glb
    import trimesh

    from stages.export.mesh import chamfer_distance
    from stages.export.preview import render_mesh_sh
    from stages.common.colour import srgb_to_linear
    from bench.relighting import fit_channel_scale, srgb_psnr
    import open3d as o3d

    model = read_glb(workdir / "export" / "model.glb")
    truth = o3d.io.read_triangle_mesh(str(capture / "gt" / "mesh.ply"))
    true_mesh = trimesh.Trimesh(np.asarray(truth.vertices, dtype=np.float64), np.asarray(truth.triangles), process=False)
    diagonal = float(np.linalg.norm(true_mesh.vertices.max(0) - true_mesh.vertices.min(0)))
    chamfer = chamfer_distance(trimesh.Trimesh(model.positions.astype(np.float64), model.faces, process=False), true_mesh)

    lights = [c for _, c in read_lighting(capture / "lighting_test.json")]
    rendered, photos = [], []
    for (frame, photo, alpha, _), light in zip(views, lights):
        rgb, _ = render_mesh_sh(model, frame, light, shadows=shadows)
        inside = alpha > 0.5
        rendered.append(torch.from_numpy(rgb[inside]).double())
        photos.append(srgb_to_linear(torch.from_numpy(photo[inside]).double()))
    rendered, photos = torch.cat(rendered), torch.cat(photos)
    scale = fit_channel_scale(rendered, photos)
    return {"chamfer_percent_of_diagonal": 100 * chamfer / diagonal, "faces": int(len(model.faces)),
            "relit_glb_psnr": srgb_psnr(rendered * scale, photos)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-runs/spot"))
    parser.add_argument("--lighting", choices=("constant", "random", "ambient"), default="random")
    parser.add_argument("--specular", type=float, default=0.0)
    parser.add_argument("--shadows", action=argparse.BooleanOptionalAction, default=False,
                        help="cast shadows in the rendered photos")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--train", type=int, default=40)
    parser.add_argument("--heldout", type=int, default=8)
    parser.add_argument("--profile", default="preview")
    parser.add_argument("--until", choices=STAGE_NAMES[3:], default="export")
    parser.add_argument("--eval-every", type=int, default=0, help="held-out PSNR every n training steps")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)

    from tests.synthetic.spot_capture import make_spot_capture

    capture = args.out / "capture"
    wanted = {"size": args.size, "n_train": args.train, "n_heldout": args.heldout, "lighting": args.lighting,
              "specular": args.specular, "shadows": args.shadows}
    if (capture / "capture.json").exists():  # reuse a capture rendered with the same parameters
        made = json.loads((capture / "capture.json").read_text())
        if any(made.get(k) != v for k, v in wanted.items()):
            raise SystemExit(f"{capture} was rendered with other parameters; choose another --out")
    else:
        make_spot_capture(capture, **wanted)
    workdir = args.out / "work"
    run_pipeline(capture, workdir, args.profile, args.until, args.eval_every, args.overrides)

    reached = STAGE_NAMES.index(args.until)
    views = heldout_truth(capture)
    metrics = {"capture": {"lighting": args.lighting, "specular": args.specular, "shadows": args.shadows, "size": args.size,
                           "train": args.train, "heldout": args.heldout},
               "profile": args.profile, "costs": stage_costs(workdir),
               "geometry_stage": {k: v for k, v in json.loads((workdir / "geometry" / "metrics.json").read_text()).items()
                                  if k in ("steps", "train_seconds", "total_seconds", "heldout_psnr_masked")},
               "geometry": geometry_metrics(workdir, views, with_normals=reached >= STAGE_NAMES.index("normals"))}
    if reached >= STAGE_NAMES.index("material"):
        metrics["material"] = material_metrics(workdir, capture, views)
    if reached >= STAGE_NAMES.index("export"):
        metrics["export"] = export_metrics(workdir, capture, views, args.shadows)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
