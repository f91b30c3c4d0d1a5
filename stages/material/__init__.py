"""Stage 6, material: albedo, specular, glossiness and a per-photo SH light, geometry frozen.

Inputs   geometry/ (the trained field, refined cameras, density_grid.npz; loaded with
         stages.field.trained.load_trained_field), normals/views/<stem>.npz (per-pixel normal
         targets {normal [H,W,3] float16 world, alpha [H,W]}), ingest/ photos (8-bit sRGB),
         the masks the geometry stage used (its cameras.json mask_path: the masks stage's, or the
         repaired ones). Photos used: the geometry stage's training photos.
Method   Every object pixel whose geometry ray is opaque (acc >= min_acc; silhouette edges are
         left out) gets one surface point at the field's expected depth, found once up front
         (surface.py). Training then shades each pixel with ONE material query (linear RGB):
         albedo / pi * E(n) + k_s * sh_specular(reflect(v, n), s) under the photo's own order-2 SH
         light, where cast shadows remove the light's directional part along the ray towards its
         dominant direction through the density grid (visibility.py), so shadows never enter the
         albedo; then the photo's camera response (its gamma, lighting.py). Losses: sRGB colour (squared up to 0.05, linear beyond), normals vs the normals stage (20), normal smoothness (0.5),
         L1 albedo smoothness (0.1), a specular regulariser against spatial variation of the
         lobe (0.02; it acts, unlike NeROIC's release, and does not shrink the lobe), light
         positivity (5), response (0.1: gammas near 1, the lights' mean colour grey). Learning
         rates warm up over 20 steps, then decay (cosine).
Outputs  material/lighting.json   one light per training photo (method.md format: file_path of the
                                  photo, "sh" [[r, g, b] x 9] linear RGB radiance; its colour
                                  channels carry the photo's exposure and white balance)
         material/camera_response.json  [{file_path, gamma}]: each photo's tone curve, recorded
                                  linear = shaded linear ^ gamma (lighting.py)
         material/material.pt     state dict of the material field (plain tensors)
         material/material.json   its hyper-parameters; load both with
                                  stages.material.material_field.load_material(folder, device), then
                                  field.query(positions [N,3] world, normals [N,3]) -> albedo [N,3]
                                  linear RGB, specular [N], glossiness [N], refined normal [N,3]
         material/losses.png      loss terms and training PSNR against step
         material/spheres/<stem>.png  each photo's light on a sphere (one exposure for all)
         material/photo_notes.json  per photo: light, exposure (stops from the median), white
                                  balance (the light's ambient colour), gamma (for the report)
         material/contact_sheet.png  per photo: original, re-rendered, albedo, shading (irradiance /
                                  pi), refined normals, a sphere lit by the photo's light and
                                  seen from its camera (shading and sphere exposure-normalised;
                                  all tiles sRGB)
         material/metrics.json    timings, pixel counts, final losses, curves
Config   [material] (defaults; `preview` / `quality` profile values in brackets):
         steps 500 [500 / 1000]          training steps (more fit the photos, and the albedo worse)
         batch_size 8192 [8192 / 16384]  surface pixels per step
         max_pixels_per_photo 10000 [10000 / 0]  surface pixels per photo (0: all)
         max_seconds 0                   stop training after this long (0: no limit)
         lr 0.01, light_lr 0.05, lr_final_factor 0.05  Adam rates (field, lights), cosine decay;
                                         the lights need the higher rate, or the albedo absorbs
                                         shading before the lights have moved
         coarse_to_fine 0.5              hash levels switch on (from 4) over this share of the steps
         hash_levels 12, hash_features 2, hash_log2_table 15, hash_base_resolution 16
         hash_max_resolution 0           finest grid resolution over the box; 0: one cell per pixel
                                         footprint at the typical surface depth (a finer albedo than
                                         the photos resolve would fit each photo on its own)
         mlp_width 64, mlp_layers 2
         normal_weight 20.0, smoothness_weight 0.5, albedo_smoothness_weight 0.1,
         specular_weight 0.02, positivity_weight 5.0
         response_weight 0.1             L2 on the photos' log-gammas + the lights' mean colour grey
         colour_huber 0.05               sRGB colour residuals beyond this count linearly (0: squared)
         shadows true, shadow_steps 32   cast shadows from the density grid
         min_acc 0.98                    opacity a pixel's ray needs to count as on the surface
         contact_sheet_photos 8, checkpoint_every 250, seed 0
Checkpoints  training state every `checkpoint_every` steps and on Ctrl-C in ctx.checkpoints/train.pt
         (plain tensors, loaded with weights_only=True); a rerun with the same settings resumes.
Failures NeroicError when the geometry or normals outputs are missing or unreadable, when fewer
         than 3 training photos have a photo, mask and normal target, or when no pixel is opaque.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from stages.context import StageContext
from stages.errors import NeroicError
from stages.common.images import shrink_view, write_png
from stages.common.inputs import PhotoSet
from stages.common.sh import render_lit_sphere
from stages.common.notes import write_photo_notes
from stages.common.settings import from_section
from stages.common.sheets import contact_sheet
from stages.field.rays import Cameras
from stages.field.trained import frame_masks, load_trained_field
from stages.material.lighting import PhotoLighting
from stages.material.material_field import MaterialField, save_material
from stages.common.colour import linear_to_srgb
from stages.material.surface import SurfacePixels, surface_from_field
from stages.material.training import (MaterialTrainConfig, mean_linear_colour, render_surface,
                                      train_material)
from stages.material.visibility import DensityGrid

MIN_PHOTOS = 3
SHEET_TILE_PX = 320  # contact-sheet photos are rendered at most this many pixels across


def auto_max_resolution(surface: SurfacePixels, cameras: Cameras, box_extent: float) -> int:
    """Finest hash-grid resolution over the box whose cell is one pixel's footprint on the surface
    (median over the surface pixels), as a power of two from 64 to 2048."""
    centres = cameras.c2w[surface.image, :3, 3]
    footprint = (surface.positions - centres).norm(dim=-1) / cameras.intrinsics[surface.image, 0]
    cells = box_extent / float(footprint.median())
    return int(2 ** round(math.log2(min(max(cells, 64.0), 2048.0))))


def _load_photos(ctx: StageContext, frames: list) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Photos [H, W, 3] uint8 sRGB and masks [H, W] bool of the frames, at the cameras' (w, h); the
    masks as the geometry stage used them (after its agreement check)."""
    photos = PhotoSet.load(ctx.input("ingest"))
    missing = [f.stem for f in frames if f.stem not in photos]
    if missing:
        raise NeroicError(f"photos {', '.join(missing)} were trained on by the geometry stage but are not ingested",
                          hint="rerun the geometry stage (neroic stage geometry --force)")
    return [photos.rgb(f.stem, (f.w, f.h)) for f in frames], frame_masks(ctx.input("geometry"), frames)


def _load_normal_targets(folder: Path, stems: list[str]) -> list[np.ndarray]:
    """The normals stage's per-pixel targets [H, W, 3] (world, unit; zero where it has none)."""
    targets = []
    for stem in stems:
        path = folder / "views" / f"{stem}.npz"
        try:
            with np.load(path, allow_pickle=False) as data:
                targets.append(data["normal"].astype(np.float32))
        except (OSError, ValueError, KeyError) as exc:
            raise NeroicError(f"cannot read the normal targets {path}: {exc}", hint="rerun the normals stage") from None
    return targets


def _srgb_u8(linear: torch.Tensor) -> np.ndarray:
    """Linear RGB tensor [..., 3] -> sRGB uint8 numpy."""
    return (linear_to_srgb(linear).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def _exposed(linear: torch.Tensor) -> torch.Tensor:
    """Linear RGB [..., 3] scaled so its 99th-percentile non-zero value is 1 (shading and lights
    are only known up to the albedo's scale, and would otherwise clip to white)."""
    values = linear[linear > 0]
    return linear / values.quantile(0.99).clamp(min=1e-6) if values.numel() else linear


@torch.no_grad()
def photo_tiles(field: MaterialField, coeffs: torch.Tensor, direction: torch.Tensor, surface: SurfacePixels,
                photo: np.ndarray, density: DensityGrid | None, shadow_steps: int,
                rotation: np.ndarray | None = None) -> list[np.ndarray]:
    """Contact-sheet tiles [H, W, 3] uint8 of one photo: original, re-rendered, albedo, shading,
    normals, lit sphere. coeffs [9, 3]: the photo's light; direction [3]: its dominant direction;
    `surface` holds that photo's pixels only (image index 0); rotation [3, 3]: the photo's
    camera-to-world rotation, so the sphere is seen as the object is in the photo."""
    index = torch.arange(len(surface), device=surface.positions.device)
    material, shading, _ = render_surface(field, None, surface, index, density, shadow_steps,
                                          directions=direction[None], coeffs=coeffs.expand(len(surface), 9, 3))
    normals_u8 = (surface.paint(0, (material.normal + 1.0) / 2.0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    sphere, alpha = render_lit_sphere(coeffs, photo.shape[0], rotation=rotation)
    return [photo, _srgb_u8(surface.paint(0, shading.rgb)), _srgb_u8(surface.paint(0, material.albedo)),
            _srgb_u8(_exposed(surface.paint(0, shading.irradiance / math.pi))), normals_u8,
            _srgb_u8(_exposed(torch.from_numpy(sphere * alpha[..., None])))]


def _photo_notes(out: Path, lights: PhotoLighting, stems: list[str], frames: list) -> None:
    """Per photo for the report: its learned light as a sphere seen from its camera (one exposure
    for all photos, so their brightness compares), its exposure and white balance (the light's
    ambient level and colour) and its camera's gamma."""
    coeffs = lights.coeffs.detach().cpu().double()
    spheres = [render_lit_sphere(c, 64, rotation=f.c2w[:3, :3]) for c, f in zip(coeffs, frames)]
    scale = float(np.quantile(np.concatenate([img[a > 0].ravel() for img, a in spheres]), 0.99)) or 1.0
    ambient = coeffs[:, 0, :].numpy()
    level = ambient @ np.array([0.2126, 0.7152, 0.0722])
    typical = float(np.median(level)) or 1.0
    (out / "spheres").mkdir()
    notes = {}
    for stem, (image, alpha), rgb, lum, gamma in zip(stems, spheres, ambient, level, lights.gamma().tolist()):
        write_png(out / "spheres" / f"{stem}.png", _srgb_u8(torch.from_numpy(image * alpha[..., None] / scale)))
        balance = rgb / max(float(rgb.mean()), 1e-9)
        notes[stem] = {"light": {"image": f"spheres/{stem}.png"},
                       "exposure": f"{np.log2(max(lum, 1e-9) / typical):+.1f} stops",
                       "white balance": " : ".join(f"{v:.2f}" for v in balance), "gamma": f"{gamma:.2f}"}
    write_photo_notes(out, notes)


def _plot_losses(path: Path, curves: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for name in ("loss", "colour", "normal", "smoothness", "albedo_smoothness", "specular", "positivity", "response"):
        values = np.maximum(np.asarray(curves[name], dtype=np.float64), 1e-12)
        axes[0].plot(curves["step"], values, label=name)
    axes[0].set(xlabel="step", ylabel="value (unweighted terms)", yscale="log", title="material losses")
    axes[0].legend(fontsize=8)
    axes[1].plot(curves["step"], curves["psnr"])
    axes[1].set(xlabel="step", ylabel="PSNR (dB, sRGB)", title="training batch PSNR")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(ctx: StageContext) -> dict:
    cfg = ctx.config
    device = torch.device(ctx.device)
    started = time.perf_counter()
    geometry = load_trained_field(ctx.input("geometry"), device)
    density_path = ctx.input("geometry") / "density_grid.npz"
    if not density_path.exists():
        raise NeroicError(f"{density_path} is missing", hint="rerun the geometry stage")
    density = DensityGrid.load_npz(density_path, device)
    frame_of = {f.stem: i for i, f in enumerate(geometry.frames)}
    stems = [s for s in geometry.train_stems if s in frame_of]
    if len(stems) < MIN_PHOTOS:
        raise NeroicError(f"only {len(stems)} training photos have a camera (at least {MIN_PHOTOS} needed)",
                          hint="rerun the geometry stage")
    views = [frame_of[s] for s in stems]
    cameras = geometry.cameras.subset(views)
    images, masks = _load_photos(ctx, [geometry.frames[v] for v in views])
    normal_targets = _load_normal_targets(ctx.input("normals"), stems)

    progress = lambda it, desc: ctx.progress(it, desc=desc, unit="photo")  # noqa: E731
    surface = surface_from_field(geometry.field, geometry.grid, cameras, geometry.step_size, masks, images,
                                 normal_targets, float(cfg["min_acc"]), int(cfg["max_pixels_per_photo"]),
                                 int(cfg["seed"]), progress=progress)
    if len(surface) == 0:
        raise NeroicError("no photo pixel has an opaque geometry ray", hint="check the geometry stage's held-out renders")
    surface_seconds = time.perf_counter() - started
    ctx.log.info("material: %d surface pixels from %d photos (%.1fs)", len(surface), len(stems), surface_seconds)

    lo, hi = geometry.field.aabb_min, geometry.field.aabb_min + geometry.field.aabb_size
    max_res = int(cfg["hash_max_resolution"]) or auto_max_resolution(surface, cameras, float((hi - lo).max()))
    torch.manual_seed(int(cfg["seed"]))  # the field's initial weights: equal inputs give an equal material
    field = MaterialField(lo.tolist(), hi.tolist(), n_levels=int(cfg["hash_levels"]),
                          n_features=int(cfg["hash_features"]), log2_table=int(cfg["hash_log2_table"]),
                          base_resolution=min(int(cfg["hash_base_resolution"]), max_res), max_resolution=max_res,
                          width=int(cfg["mlp_width"]), n_hidden=int(cfg["mlp_layers"])).to(device)
    lights = PhotoLighting(len(stems), ambient_radiance=mean_linear_colour(surface) / 0.5).to(device)
    ckpt_dir = Path(ctx.checkpoints)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    result = train_material(field, lights, surface, from_section(MaterialTrainConfig, cfg), density=density,
                            checkpoint_path=ckpt_dir / "train.pt",
                            progress=lambda total: ctx.progress(total=total, desc="training", unit="step"))

    out = Path(ctx.out)
    file_paths = [geometry.frames[v].file_path for v in views]
    lights.save(out / "lighting.json", out / "camera_response.json", file_paths)
    save_material(field, out)
    _plot_losses(out / "losses.png", result.curves)
    shadow_grid = density if cfg["shadows"] else None
    tiles, labels = [], []
    directions = lights.dominant_directions()
    sheet_views = np.linspace(0, len(stems) - 1, min(int(cfg["contact_sheet_photos"]), len(stems))).round().astype(int)
    for j in sorted(set(sheet_views.tolist())):
        # contact-sheet tiles are shown small, and rendering large photos whole costs minutes
        frame, photo, mask, target = shrink_view(geometry.frames[views[j]], SHEET_TILE_PX, images[j], masks[j],
                                                 normal_targets[j])
        whole = surface_from_field(geometry.field, geometry.grid, Cameras.from_frames([frame]).to(device),
                                   geometry.step_size, [mask], [photo], [target], float(cfg["min_acc"]))
        tiles += photo_tiles(field, lights.coeffs.detach()[j], directions[j], whole, photo, shadow_grid,
                             int(cfg["shadow_steps"]), rotation=frame.c2w[:3, :3])
        labels += [f"{stems[j]} photo", "re-rendered", "albedo", "shading", "normals", "light"]
    write_png(out / "contact_sheet.png", contact_sheet(tiles, labels, columns=6))
    _photo_notes(out, lights, stems, [geometry.frames[v] for v in views])

    total = time.perf_counter() - started
    last = {k: v[-1] for k, v in result.curves.items() if v}
    metrics = {
        "photos": len(stems), "surface_pixels": len(surface), "hash_max_resolution": max_res,
        "steps": result.steps_done, "resumed_from_step": result.resumed_from, "stopped_early": result.stopped_early,
        "train_seconds": result.seconds, "surface_seconds": surface_seconds, "total_seconds": total,
        "final": last, "curves": result.curves,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    minutes, seconds = divmod(int(round(total)), 60)
    figure = (f"train PSNR {last.get('psnr', float('nan')):.1f} dB, {len(stems)} lights, "
              f"{result.steps_done} steps, {minutes}m{seconds:02d}s")
    return {"figure": figure, **{k: v for k, v in metrics.items() if k != "curves"}}
