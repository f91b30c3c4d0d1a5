"""Stage 4, geometry: a NeRF-W style neural field of the object from its masked photos.

Inputs   ingest/photos.json + images/ (8-bit sRGB), masks/masks.json + <stem>.png (only status
         "ok"), poses/transforms.json (OpenGL c2w, per-frame intrinsics and distortion) and
         poses/normalization.json {"bounds": {"center", "radius"}} (the object lies in that sphere).
Method   Visual hull carved from the training masks over the bounds' cube -> tight box of the
         hull -> hull re-carved over that box (occupancy grid); a hash-grid NeRF-W field
         (static density + colour with per-photo appearance codes, transient head with per-photo
         codes and uncertainty) trained on the photos' object pixels plus a background band, with
         NeRF-W colour loss, silhouette BCE and (optionally) per-photo camera refinement; the grid
         drops cells the field finds empty. With surface "sdf" (default) the static geometry is a
         signed distance (VolSDF density), started as the hull's own signed distance and kept a
         distance by an eikonal term. See stages/field/.
Held out every `holdout_every`-th usable photo (or `holdout_stems`) is never trained on; PSNR on
         it is measured inside the photo's mask (rendered with the neutral appearance, on black,
         against the photo composited on black by its mask's coverage) and, secondarily, over the
         whole image on black.
Outputs  geometry/field.pt          state dict (plain tensors; torch.load(weights_only=True))
         geometry/field.json        hyper-parameters to rebuild the field, march step, training stems
         geometry/cameras.json      refined cameras of all usable photos (transforms.json format)
         geometry/occupancy.npz     {aabb_min [3], aabb_max [3], hull, occupied [G,G,G] bool, density
                                     [G,G,G] float32 running max} (axis 0 = x; np.load allow_pickle=False)
         geometry/density_grid.npz  {density [D,D,D] float32 per world unit at cell centres, 0 outside
                                     the hull; aabb_min [3], aabb_max [3]} over the field's box
         geometry/curves.png        loss and PSNR against step and against time
         geometry/heldout/<stem>.png  photo | render | opacity, side by side
         geometry/transient.png     a few training photos | static render | transient render |
                                    transient opacity (what only that photo showed)
         geometry/metrics.json      PSNRs per held-out photo, timings, sample counts, curves, and
                                    each mask's verdict against the hull (agrees/repaired/dropped)
         geometry/masks/<stem>.png  repaired masks (masks.json beside them); cameras.json's
                                    mask_path points to them
         Load with `stages.field.load_trained_field(geometry_dir, device)`.
Config   [geometry] (defaults = the preview profile; quality: steps 3000, max_seconds 0,
         target_samples 131072, hash_log2_table 16, steps_across 384, refine_cameras true,
         density_grid_resolution 256):
         surface "sdf"               static geometry: "sdf" (zero level = surface) or "density"
         steps 800                   training steps
         max_seconds 240             training time budget in seconds (0: none); when it runs out before
                                     `steps`, training ends there with its schedules completed
         target_samples 65536        field samples per step (the ray count adapts to it)
         lr 0.01, lr_final_factor 0.1  Adam learning rate, decayed exponentially to lr * factor
         hash_levels 12, hash_features 2, hash_log2_table 15, hash_base_resolution 16,
         hash_max_resolution 0       hash grid (resolutions over the field's box); 0 = automatic:
                                     hash_pixels_factor x the photos' pixels across the box (finer
                                     levels only memorise noise of the training views)
         hash_pixels_factor 1.5
         mlp_width 64, colour_layers 2, geo_feat_dim 15, sh_degree 4 (bands of view-direction SH)
         appearance_dim 16, transient_dim 16 (0: no transient head), beta_min 0.1
         steps_across 256            march step = longest side of the box / this (final)
         coarse_step_factor 4.0, coarse_fraction 0.3  the step starts this much larger and
                                     shrinks to the final one over this fraction of the steps
         coarse_to_fine 0.5          hash levels switch on (from 4) over this share of training
         sharpen_surface 0.8         (sdf) the surface width's bound narrows from 2 march steps to its
                                     minimum (half a step) over this share of training (0: learned)
         occupancy_resolution 128, hull_margin_px 2.0, hull_max_miss_fraction 0.05
         occupancy_update_every 16, occupancy_warmup 64
         repair_masks true           masks checked against the others' visual hull: background pieces
                                     cut (geometry/masks/, named in a warning), photos whose mask
                                     disagrees wholesale left out; user masks are kept as they are
         silhouette_weight 0.1, transient_weight 0.01, appearance_weight 0.01 (L2 on appearance codes)
         eikonal_weight 0.1, eikonal_points 8192   (sdf) (|grad d| - 1)^2 on ray samples and the box
         curvature_weight 0.5        (sdf) 1 - cos of normals a march step apart (against bumps)
         background_fraction 0.2, background_band_px 8 (background rays come from this band)
         refine_cameras false, camera_lr 0.001, camera_weight 1.0
         max_image_size 0            train on photos resized to this longest side (0: as ingested)
         holdout_every 8, holdout_stems []   held-out photos (every n-th usable; 0: none)
         heldout_image_size 320      held-out photos are rendered and scored at this longest side
         eval_every 0                also measure held-out PSNR (first 2 photos) every n steps
         checkpoint_every 250, density_grid_resolution 128, seed 0
Checkpoints  geometry training state every `checkpoint_every` steps and on Ctrl-C in
         ctx.checkpoints/train.pt; a rerun with the same settings resumes from it. A checkpoint
         that cannot be read is set aside as train.corrupt (warning) and training starts over.
Failures NeroicError when the poses stage gave fewer than 3 usable photos with masks, when the
         visual hull is empty (masks and cameras disagree: wrong poses or masks), or when the
         bounds are missing.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from stages.context import StageContext
from stages.errors import NeroicError
from stages.common.cameras import Frame, read_transforms
from stages.common.images import shrink_view, write_png
from stages.common.notes import write_photo_notes
from stages.common.sheets import contact_sheet
from stages.common.inputs import MaskSet, PhotoSet
from stages.common.settings import from_section
from stages.field.grids import evaluate_on_grid
from stages.field.mask_agreement import MaskVerdict, agree_masks, hull_silhouette, hull_surface_cells
from stages.field.nerfw_field import NerfWField
from stages.field.occupancy import OccupancyGrid, carve_visual_hull, hull_signed_distance, mask_distances
from stages.field.rays import CameraRefinement, Cameras
from stages.field.trained import save_trained_field
from stages.field.rendering import render_rays
from stages.field.training import TrainConfig, TrainingPixels, image_psnr, render_view, train_field

MIN_TRAIN_PHOTOS = 3
MIN_PHOTOS_FOR_SPARE_MISS = 6  # from this many photos on, the hull tolerates one mask that misses a cell


def _load_views(ctx: StageContext, max_size: int) -> tuple[list[Frame], list[np.ndarray], list[np.ndarray],
                                                           list[str], int]:
    """Usable frames (in transforms.json order) with their photos [H, W, 3] uint8, their masks'
    coverage [H, W] uint8 (soft at the edges: alpha or rembg), where each mask came from (user,
    alpha, rembg) and the masks' threshold."""
    poses = ctx.input("poses")
    transforms = poses / "transforms.json"
    if not transforms.exists():
        raise NeroicError(f"{transforms} is missing", hint="run the poses stage first")
    photos, masks = PhotoSet.load(ctx.input("ingest")), MaskSet.load(ctx.input("masks"))
    frames, images, coverages, sources = [], [], [], []
    for frame in read_transforms(transforms, roots=[photos.folder, masks.folder]):
        if frame.stem not in photos or not masks.usable(frame.stem):
            continue
        rgb = photos.rgb(frame.stem)
        h, w = rgb.shape[:2]
        mask = masks.coverage(frame.stem, (w, h))
        frame = frame.scaled(w, h) if (frame.w, frame.h) != (w, h) else frame
        frame, rgb, mask = shrink_view(frame, max_size, rgb, mask)
        frames.append(frame)
        images.append(rgb)
        coverages.append(mask)
        sources.append(masks.sources.get(frame.stem, ""))
    return frames, images, coverages, sources, masks.threshold


# Held-out views shorter than this (longest side, px) are rendered with 2x2 rays a pixel: at such
# sizes the silhouette's and texture's aliased pixels are a large share of the score (0.2 dB on a
# 48-px view), while at the default 320 px one ray a pixel scores within 0.01 dB at a quarter of
# the time.
SUPERSAMPLE_BELOW_PX = 128


def _render_heldout(field: NerfWField, grid: OccupancyGrid, full: Frame, small: Frame, appearance: torch.Tensor,
                    step_size: float) -> dict:
    """render_view of `small` (a downsized `full`); a small view that was downsized gets 2x2 rays
    a pixel, so it is filtered like the downsized photo instead of aliasing its edges and texture."""
    shrunk = (full.w, full.h) != (small.w, small.h)
    factor = 2 if shrunk and max(small.w, small.h) < SUPERSAMPLE_BELOW_PX else 1
    device = field.aabb_min.device
    out = render_view(field, grid, Cameras.from_frames([full.scaled(factor * small.w, factor * small.h)]).to(device),
                      0, appearance, step_size)
    if factor == 1:
        return out
    pool = lambda x: torch.nn.functional.avg_pool2d(x.movedim(-1, 0)[None], factor)[0].movedim(0, -1)  # noqa: E731
    return {"rgb": pool(out["rgb"]), "acc": pool(out["acc"][..., None])[..., 0], "depth": pool(out["depth"][..., None])[..., 0]}


def _split(frames: list[Frame], every: int, stems: list[str]) -> tuple[list[int], list[int]]:
    if stems:
        held = [i for i, f in enumerate(frames) if f.stem in set(stems)]
    else:
        held = list(range(0, len(frames), every)) if every and every > 0 else []
    train = [i for i in range(len(frames)) if i not in set(held)]
    return train, held


def _bounds(poses: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        bounds = json.loads((poses / "normalization.json").read_text(encoding="utf-8"))["bounds"]
        centre, radius = torch.tensor(bounds["center"], dtype=torch.float32), float(bounds["radius"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NeroicError(f"cannot read the object bounds from {poses / 'normalization.json'}: {exc}",
                          hint="rerun the poses stage") from None
    return centre - radius, centre + radius


def _hull_box(hull: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, pad_cells: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """The box around the hull's cells, padded, clipped to (lo, hi)."""
    g = hull.shape[0]
    cells = hull.nonzero()
    cell = (hi - lo) / g
    return (lo + (cells.min(0).values - pad_cells).clamp(min=0) * cell,
            lo + (cells.max(0).values + 1 + pad_cells).clamp(max=g) * cell)


def _auto_resolution(cams: Cameras, lo: torch.Tensor, hi: torch.Tensor, factor: float, base: int) -> int:
    """factor x how many pixels of a typical training photo span the box's longest side."""
    distance = (cams.c2w[:, :3, 3] - (lo + hi) / 2).norm(dim=-1)
    footprint = float((distance / cams.intrinsics[:, :2].mean(-1)).median())  # world units per pixel
    return max(2 * base, int(round(factor * float((hi - lo).max()) / footprint)))


def _carve(cameras: Cameras, masks: list[np.ndarray], lo: torch.Tensor, hi: torch.Tensor, cfg: dict):
    """The visual hull of the masks: carved coarsely over the bounds' cube, then at full resolution
    over the coarse hull's own (tighter) box -> (hull [G, G, G] bool, box min, box max)."""
    margin, miss = float(cfg["hull_margin_px"]), float(cfg["hull_max_miss_fraction"])
    res = int(cfg["occupancy_resolution"])
    spare = 1 if len(masks) >= MIN_PHOTOS_FOR_SPARE_MISS else 0  # one bad mask must not carve the object away
    distances = mask_distances(masks, lo.device)
    coarse = carve_visual_hull(cameras, masks, lo, hi, max(16, res // 2), margin, miss, spare, distances)
    if not bool(coarse.any()):
        raise NeroicError("the visual hull is empty: no point of the bounds projects inside the masks of "
                          "the training photos", hint="the cameras and masks disagree; check the poses "
                          "stage's output and the masks' contact sheet")
    lo, hi = _hull_box(coarse, lo, hi)
    return carve_visual_hull(cameras, masks, lo, hi, res, margin, miss, spare, distances), lo, hi


def _agree(ctx: StageContext, frames, coverages, masks, sources, cameras, hull, lo, hi, threshold) -> list[MaskVerdict]:
    """Check every mask against the hull's silhouette; repair in place (masks, coverages) and write
    the repaired masks to OUT/masks/ (the frames' mask_path then points there)."""
    surface = hull_surface_cells(hull)
    silhouettes = [hull_silhouette(surface, lo, hi, cameras, i) for i in range(len(frames))]
    repaired, verdicts = agree_masks(masks, silhouettes, [s != "user" for s in sources])
    folder = Path(ctx.out) / "masks"
    entries = []
    for i, verdict in enumerate(verdicts):
        if verdict.status == "repaired":
            coverages[i] = np.where(repaired[i], coverages[i], 0).astype(np.uint8)
            masks[i] = repaired[i]
            folder.mkdir(exist_ok=True)
            write_png(folder / f"{frames[i].stem}.png", coverages[i])
            entries.append({"stem": frames[i].stem, "mask": f"{frames[i].stem}.png", "source": "repaired",
                            "status": "ok", "removed": round(verdict.removed, 4)})
            frames[i] = replace(frames[i], mask_path=f"masks/{frames[i].stem}.png")
    if entries:
        (folder / "masks.json").write_text(json.dumps({"threshold": threshold, "masks": entries}, indent=1))
    cut = [f"{frames[i].stem} {100 * v.removed:.1f}%" for i, v in enumerate(verdicts) if v.status == "repaired"]
    if cut:
        ctx.log.warning("repaired the masks of %d photo(s) that reached outside the other photos' visual hull "
                        "(share of the mask cut): %s", len(cut), ", ".join(cut))
    dropped = [f"{frames[i].stem} ({v.why})" for i, v in enumerate(verdicts) if v.status == "dropped"]
    if dropped:
        ctx.log.warning("dropped %d photo(s) whose mask disagrees with the other photos: %s",
                        len(dropped), "; ".join(dropped))
    return verdicts


def run(ctx: StageContext) -> dict:
    cfg = ctx.config
    device = torch.device(ctx.device)
    started = time.perf_counter()
    frames, images, coverages, sources, threshold = _load_views(ctx, int(cfg["max_image_size"]))
    masks = [c >= threshold for c in coverages]
    train_idx, held_idx = _split(frames, int(cfg["holdout_every"]), list(cfg["holdout_stems"]))
    if len(train_idx) < MIN_TRAIN_PHOTOS:
        raise NeroicError(f"only {len(train_idx)} photos have both a camera and a usable mask for training "
                          f"(at least {MIN_TRAIN_PHOTOS} needed)",
                          hint="check the poses stage's registered photos and the masks' contact sheet")
    cameras = Cameras.from_frames(frames).to(device)
    lo, hi = (t.to(device) for t in _bounds(ctx.input("poses")))
    hull, lo, hi = _carve(cameras.subset(train_idx), [masks[i] for i in train_idx], lo, hi, cfg)
    verdicts, mask_stems = [], [f.stem for f in frames]
    if cfg["repair_masks"]:
        verdicts = _agree(ctx, frames, coverages, masks, sources, cameras, hull, lo, hi, threshold)
        keep = [i for i, v in enumerate(verdicts) if v.status != "dropped"]
        if len(keep) < len(frames):
            train_stems = {frames[i].stem for i in train_idx}
            frames, images, coverages, masks = ([x[i] for i in keep] for x in (frames, images, coverages, masks))
            train_idx = [j for j, f in enumerate(frames) if f.stem in train_stems]
            held_idx = [j for j in range(len(frames)) if j not in set(train_idx)]
            cameras = Cameras.from_frames(frames).to(device)
            if len(train_idx) < MIN_TRAIN_PHOTOS:
                raise NeroicError(f"only {len(train_idx)} training photos have a mask that agrees with the others "
                                  f"(at least {MIN_TRAIN_PHOTOS} needed)",
                                  hint="check the masks' contact sheet; give masks with --masks DIR, or "
                                       "--set geometry.repair_masks=false")
        if any(v.status != "agrees" for v in verdicts):
            hull, lo, hi = _carve(cameras.subset(train_idx), [masks[i] for i in train_idx],
                                  *(t.to(device) for t in _bounds(ctx.input("poses"))), cfg)
    train_cams = cameras.subset(train_idx)
    train_masks = [masks[i] for i in train_idx]
    res = int(cfg["occupancy_resolution"])
    grid = OccupancyGrid(lo, hi, hull)
    hull_seconds = time.perf_counter() - started
    ctx.log.info("geometry: visual hull %.1f%% of its box (%.1fs)", 100 * float(hull.float().mean()), hull_seconds)

    step_size = float((hi - lo).max()) / int(cfg["steps_across"])
    max_res = int(cfg["hash_max_resolution"]) or _auto_resolution(train_cams, lo, hi, float(cfg["hash_pixels_factor"]),
                                                                   int(cfg["hash_base_resolution"]))
    torch.manual_seed(int(cfg["seed"]))  # the field's initial weights: equal inputs give an equal field
    field = NerfWField(lo.tolist(), hi.tolist(), len(train_idx), n_levels=int(cfg["hash_levels"]),
                       n_features=int(cfg["hash_features"]), log2_table=int(cfg["hash_log2_table"]),
                       base_resolution=int(cfg["hash_base_resolution"]),
                       max_resolution=max_res, width=int(cfg["mlp_width"]),
                       colour_layers=int(cfg["colour_layers"]), geo_feat_dim=int(cfg["geo_feat_dim"]),
                       appearance_dim=int(cfg["appearance_dim"]), transient_dim=int(cfg["transient_dim"]),
                       sh_degree=int(cfg["sh_degree"]), beta_min=float(cfg["beta_min"]), surface=cfg["surface"],
                       prior_resolution=max(32, res // 2), surface_width=2.0 * step_size,
                       min_surface_width=0.5 * step_size).to(device)
    if field.is_sdf:
        field.set_sdf_prior(hull_signed_distance(hull, lo, hi))
    refinement = CameraRefinement(len(train_idx), float((hi - lo).norm()) / 2).to(device) if cfg["refine_cameras"] else None
    train_cfg = from_section(TrainConfig, cfg, step_size=step_size)
    pixels = TrainingPixels.from_photos([images[i] for i in train_idx], train_masks,
                                        int(cfg["background_band_px"])).to(device)

    heldout_views = {v: shrink_view(frames[v], int(cfg["heldout_image_size"]), images[v], coverages[v]) for v in held_idx}

    def evaluate(views: list[int]) -> list[dict]:
        field.eval()
        results = []
        for v in views:
            frame, image, coverage = heldout_views[v]
            out = _render_heldout(field, grid, frames[v], frame, field.appearance.neutral().detach(), step_size)
            photo = torch.from_numpy(image.copy()).to(device).float() / 255.0
            coverage = torch.from_numpy(coverage.copy()).to(device)
            inside, whole = image_psnr(out["rgb"], photo, coverage >= threshold, coverage.float() / 255.0)
            results.append({"stem": frame.stem, "photo": image, "psnr_masked": inside, "psnr_image": whole,
                            "render": out})
        field.train()
        return results

    def evaluate_during(step: int) -> dict:
        res_ = evaluate(held_idx[:2])
        value = float(np.mean([r["psnr_masked"] for r in res_])) if res_ else float("nan")
        ctx.log.info("geometry: step %d held-out PSNR %.2f dB (inside masks)", step, value)
        return {"heldout_psnr": value}

    ckpt_dir = Path(ctx.checkpoints)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    result = train_field(field, grid, train_cams, pixels, train_cfg, checkpoint_path=ckpt_dir / "train.pt",
                         refinement=refinement, progress=lambda total: ctx.progress(total=total, desc="training", unit="step"),
                         evaluate=evaluate_during if held_idx and int(cfg["eval_every"]) > 0 else None,
                         eval_every=int(cfg["eval_every"]),
                         key_extra={"train_stems": [frames[i].stem for i in train_idx],
                                    "hull": int(hull.sum()), "image_size": int(cfg["max_image_size"])})

    # outputs
    out = Path(ctx.out)
    if refinement is not None:
        refined = refinement.apply_to(train_cams)
        for j, i in enumerate(train_idx):
            cameras.c2w[i], cameras.intrinsics[i] = refined.c2w[j], refined.intrinsics[j]
    save_trained_field(out, field, grid, cameras, frames, [frames[i].stem for i in train_idx], step_size)
    _write_density_grid(out / "density_grid.npz", field, grid, int(cfg["density_grid_resolution"]))
    held = evaluate(held_idx)
    (out / "heldout").mkdir()
    for r in held:
        _write_heldout_png(out / "heldout" / f"{r['stem']}.png", r["photo"], r["render"])
    per_photo = [{k: r[k] for k in ("stem", "psnr_masked", "psnr_image")} for r in held]
    mean_masked = float(np.mean([r["psnr_masked"] for r in held])) if held else float("nan")
    mean_image = float(np.mean([r["psnr_image"] for r in held])) if held else float("nan")
    if held and (not result.curves["eval_step"] or result.curves["eval_step"][-1] != result.steps_done):
        result.curves["eval_step"].append(result.steps_done)
        result.curves["eval_seconds"].append(result.seconds)
        result.curves["heldout_psnr"].append(mean_masked)
    _plot_curves(out / "curves.png", result.curves)
    if field.has_transient:
        _transient_sheet(out / "transient.png", field, grid, frames, images, train_idx, step_size)
    held_stems = {frames[i].stem for i in held_idx}
    notes = {f.stem: {"role": "held out" if f.stem in held_stems else "training"} for f in frames}
    for stem, verdict in zip(mask_stems, verdicts):
        if verdict.status == "dropped":
            notes[stem] = {"dropped": verdict.why}
        else:
            notes[stem]["mask check"] = verdict.status + (f": {verdict.why}" if verdict.why else "")
    write_photo_notes(out, notes)
    total = time.perf_counter() - started
    metrics = {
        "heldout_psnr_masked": mean_masked, "heldout_psnr_image": mean_image, "heldout": per_photo,
        "train_photos": len(train_idx), "heldout_photos": len(held_idx), "steps": result.steps_done,
        "resumed_from_step": result.resumed_from, "stopped_early": result.stopped_early,
        "train_seconds": result.seconds, "hull_seconds": hull_seconds, "total_seconds": total,
        "masks": {stem: {"status": v.status, "removed": round(v.removed, 4), "iou": round(v.iou, 4),
                         "why": v.why} for stem, v in zip(mask_stems, verdicts)},
        "hull_fraction": float(hull.float().mean()), "hash_max_resolution": max_res, "occupied_fraction_of_hull": result.curves["occupied"][-1]
        if result.curves["occupied"] else 1.0,
        "final_train_psnr": result.curves["psnr"][-1] if result.curves["psnr"] else float("nan"),
        "psnr_definition": "held-out photos rendered with the neutral appearance on black; 'masked' = inside "
                           "the photo's mask vs the photo, 'image' = whole image vs the photo on black",
        "curves": result.curves,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    minutes, seconds = divmod(int(round(total)), 60)
    figure = (f"held-out PSNR {mean_masked:.1f} dB, {result.steps_done} steps, {minutes}m{seconds:02d}s"
              if held else f"{result.steps_done} steps, {minutes}m{seconds:02d}s (no held-out photos)")
    return {"figure": figure, **{k: v for k, v in metrics.items() if k not in ("curves", "heldout")}}


def _write_density_grid(path: Path, field: NerfWField, grid: OccupancyGrid, res: int) -> None:
    """Density at the centres of a res^3 grid over the field's box; 0 outside the visual hull."""
    def hull_density(points: torch.Tensor) -> torch.Tensor:
        flat, inside = grid.cell_index(points)
        return torch.where(grid.hull[flat] & inside, field.density(points)[0], 0.0)

    lo, hi = field.aabb_min, field.aabb_min + field.aabb_size
    density = evaluate_on_grid(hull_density, lo, hi, res)
    np.savez(path, density=density.cpu().numpy(), aabb_min=lo.cpu().numpy(), aabb_max=hi.cpu().numpy())


@torch.no_grad()
def _transient_sheet(path: Path, field: NerfWField, grid: OccupancyGrid, frames: list[Frame], images: list[np.ndarray],
                     train_idx: list[int], step_size: float, photos: int = 4, size: int = 240) -> None:
    """What the transient part took from a few training photos: photo | static render | transient
    render | transient opacity. Occluders, cast shadows and highlights that only one photo shows
    belong in the transient column, not in the shape or its colour."""
    tiles, labels = [], []
    device = field.aabb_min.device
    for j in np.linspace(0, len(train_idx) - 1, min(photos, len(train_idx))).round().astype(int):
        i = train_idx[j]
        frame, photo = shrink_view(frames[i], size, images[i])
        cams = Cameras.from_frames([frame]).to(device)
        py, px = torch.meshgrid(torch.arange(frame.h, device=device), torch.arange(frame.w, device=device), indexing="ij")
        origins, dirs = cams.rays(torch.zeros(px.numel(), dtype=torch.long, device=device), px.reshape(-1), py.reshape(-1))
        code = torch.full((px.numel(),), j, dtype=torch.long, device=device)
        parts = [render_rays(field, grid, origins[k:k + 8192], dirs[k:k + 8192], field.appearance(code[k:k + 8192]),
                             step_size, transient_codes=field.transient_codes(code[k:k + 8192]))
                 for k in range(0, px.numel(), 8192)]
        static = torch.cat([p["rgb"] for p in parts]).view(frame.h, frame.w, 3)
        transient = torch.cat([p["rgb_transient"] for p in parts]).view(frame.h, frame.w, 3)
        opacity = torch.cat([p["acc_transient"] for p in parts]).view(frame.h, frame.w, 1).expand(-1, -1, 3)
        tiles += [photo] + [(t.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8) for t in (static, transient, opacity)]
        labels += [frame.stem, "static", "transient", "transient opacity"]
    write_png(path, contact_sheet(tiles, labels, tile_height=size, columns=4))


def _write_heldout_png(path: Path, photo: np.ndarray, render: dict) -> None:
    """photo | render (on black) | opacity, one row."""
    rgb = (render["rgb"].cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    acc = (render["acc"].clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    write_png(path, np.concatenate([photo, rgb, np.repeat(acc[..., None], 3, axis=2)], axis=1))


def _plot_curves(path: Path, curves: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(curves["step"], curves["loss"])
    axes[0].set(xlabel="step", ylabel="loss", title="training loss")
    axes[1].plot(curves["step"], curves["psnr"], label="training batch (object pixels)")
    axes[1].plot(curves["eval_step"], curves["heldout_psnr"], "o-", label="held-out, first 2 photos (inside masks)")
    axes[1].set(xlabel="step", ylabel="PSNR (dB)", title="PSNR vs step")
    axes[2].plot(curves["seconds"], curves["psnr"], label="training batch")
    axes[2].plot(curves["eval_seconds"], curves["heldout_psnr"], "o-", label="held-out")
    axes[2].set(xlabel="training time (s)", ylabel="PSNR (dB)", title="PSNR vs time")
    for ax in axes[1:]:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
