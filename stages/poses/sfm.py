"""Structure from motion with pycolmap: features and matches (matching.py), mapping, checks.

    result = run_sfm(ingest, photos, threshold, cfg, work, log, progress, device, threads)

`poses.features` chooses the features: "sift", a learned kind ("xfeat", "aliked", "disk") or
"auto" (see `feature_order`: SIFT first for one known camera's photos, else the learned features
first, the other kind after them when they fall short; after a first model that is large enough but
placed some cameras wrong, the learned features are matched only around the photos it lacks).
Each kind's COLMAP files (database, masks, models) live in its own folder under `work` (the
stage's checkpoint folder), so an interrupted run resumes after the slow matching and "auto" can
compare kinds. After mapping, the largest model is polished by one robust
bundle adjustment and checked against the masks. When the first model is large enough but placed
cameras wrong (taken out), the next kind is tried too, and the photos the kept model lacks get
their cameras from the other models where those agree (merge.py). Every model built, kept or
rejected, is written to `work/attempts/LABEL.json` with its figures (`Attempt.record`).
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap

from stages.errors import NeroicError
from stages.common.cameras import PERSPECTIVE_MODELS, Frame
from stages.poses import database, learned
from stages.poses.colmap_calls import colmap_log, interruptible
from stages.poses.colmap_model import Solution, frame_from_image, solution_of
from stages.poses.matching import extract_and_match
from stages.poses.merge import cameras_from
from stages.poses.outputs import write_attempt
from stages.poses.normalize import (SPARE_MISS_SHARE, hull_recall_without_each, object_agreement, object_majority,
                                    silhouette_votes, silhouette_with_slack)
from stages.poses.camera_groups import camera_groups, group_key
from stages.poses.photos import PhotoInput, read_mask
from stages.poses.sift_tracks import add_sift_tracks
from stages.poses.track_alignment import align_tracks

MAPPERS = ("incremental", "global")
FEATURES = ("auto", "sift", *learned.KINDS)
AUTO_LEARNED = "xfeat"  # the learned kind "auto" uses: the fastest on a CPU
AUTO_ENOUGH = 0.9  # "auto" stops after the first kind that registered this fraction (and placed none wrong)
MATCHED_MARK = "matched.ok"  # written once features and matches are complete in the database
SEED = 0  # fixed RANSAC and mapper seeds: the same photos give the same cameras
STRAY_DISTANCE = 10.0  # a camera this many times farther from the others than usual is a failure
MIN_FOCAL_RATIO, MAX_FOCAL_RATIO, MAX_DISTORTION = 0.1, 10.0, 1.0  # COLMAP's sanity limits for a camera
# A model whose mean reprojection error the robust adjustment raises this much is built on false
# matches: spot-wild with rembg masks gave a model of 35 photos, 24 degrees off in the median,
# whose error went from 1.1 px to 2.8 px (or diverged); right models went down, 1.22 -> 1.18 px.
REFINE_GROWTH = 1.5
DIVERGED_PX = 1e4  # a mean reprojection error beyond this after the adjustment: it diverged
# A model whose cameras see less of its object's points (`object_agreement`) inside their masks
# (median photo) is false. Counting every point instead rejected a right model of a fox head on
# patterned wallpaper (75-79 % inside); on the registration bench both measures gave the same
# verdicts on 13 models (wrong skull01 thirds: 0.88 / 0.89; right models 0.97-1.00).
MODEL_MIN_AGREEMENT = 0.9
# A model in which the other photos' visual hull covers less of the median photo's mask is false:
# spot-wild from its photos with XFeat's 1024 keypoints gave a model of all 36, 6.7 deg off in the
# median, that passed every other check (0.85); right models of six captures 0.97-1.00.
MODEL_MIN_HULL_RECALL = 0.9
# A posed photo that shares this many times more verified matches with a photo left out of the
# model than with any posed photo belongs to another group: a photo of another object, hung on a
# few chance matches (a skull set with kermit photos in it: kermit000 posed on 24 matches with a
# skull photo while it shared 363 with kermit001; right cameras' best tie to the model: 50-384).
ELSEWHERE_RATIO = 4.0
# A camera is placed wrong when the others' visual hull covers less than MISPLACED_RECALL of the
# median share of its mask and it sees fewer than MISPLACED_POINTS of the median 3-D points.
# Wrong cameras: ethiopian_head DSC_0067-0071 (17-45 deg off: 0.60-0.62 and 0.07-0.15), spot-wild
# img_004 (37 deg: 0.70, 0.25), kermit000 in a skull model (0.71, 0.04). Right ones came nearest
# at 0.66 with 2.5 (a mask with the turntable in it) and 0.90 with 0.16 (kermit006); no right
# camera of skull01 (64 photos), the dino or spot-wild fell below 0.95 of the median.
MISPLACED_RECALL, MISPLACED_POINTS = 0.75, 0.3
# A camera is also placed wrong when under CAMERA_MIN_AGREEMENT of the object's points in its view fall
# inside its mask while the others' hull, tolerant or strict, covers under FLIPPED_RECALL of the
# median share of its mask. The rendered print capture (one print on all sides): four cameras turned
# 96-177 deg the wrong way saw 49-72 % of their points inside their masks, with recall 0.71-0.84
# (typical 1.0), and one tilted 16.6 deg saw 87 % with the strict hull at 0.71 of typical (tolerant
# above 0.95; in the model without the turned four: 85 %, strict 0.93); right cameras 97-99 %. A mask that misses half the object (skull01 and kermit, every
# fourth mask cut) drops the points to 26-67 % but keeps both recalls at 1.0 or above. (The
# fraction of the hull's outline inside the mask, 0.17 for a fifth turned camera, fell as low,
# 0.14, for a cut mask.) A clip of the rendered cow (20 frames) gave a camera 84 deg off with 20 %
# and recall 0.90, and the print capture one 163 deg off with 82 % and 0.89. Over the nine bench
# captures, right cameras with either recall under 0.95 of typical saw 91-100 % (the nearest:
# spot-wild img_008, sky in its mask, 91 % with the strict hull at 0.91); right cameras under
# 88 % (the dino's, kermit's with cut masks) had both recalls at typical or above.
CAMERA_MIN_AGREEMENT, FLIPPED_RECALL = 0.88, 0.95
HULL_BOX = 1.5  # the hull is carved in a cube of this many times the points' 95th-percentile reach


@dataclass
class SfmResult:
    """The best model found, which features gave it, and what each attempt achieved."""

    solution: Solution | None
    features: str
    pair_inliers: dict[tuple[str, str], int] = field(default_factory=dict)  # verified matches per pair (names)
    attempts: list[str] = field(default_factory=list)  # "xfeat: 30/36 registered", ...
    dropped: dict[str, str] = field(default_factory=dict)  # image name -> why its camera was taken out
    records: list[dict] = field(default_factory=list)  # each attempt's Attempt.record(), "chosen" marked


def check_config(cfg: dict) -> None:
    """Refuse unknown camera models, mappers and features before any work."""
    if cfg["camera_model"] not in PERSPECTIVE_MODELS:
        raise NeroicError(f"poses.camera_model {cfg['camera_model']!r} is not supported",
                          hint=f"use one of {', '.join(PERSPECTIVE_MODELS)}")
    if cfg["mapper"] not in MAPPERS:
        raise NeroicError(f"poses.mapper {cfg['mapper']!r} is unknown", hint="use incremental or global")
    if cfg["upright"] not in ("auto", "none"):
        raise NeroicError(f"poses.upright {cfg['upright']!r} is unknown", hint="use auto or none")
    if cfg["features"] not in FEATURES:
        raise NeroicError(f"poses.features {cfg['features']!r} is unknown", hint=f"use one of {', '.join(FEATURES)}")


def feature_order(choice: str, photos: list[PhotoInput], shared: bool, log: logging.Logger) -> list[str]:
    """The kinds of features to try, in order: the chosen one, or for "auto" SIFT then the learned
    features (when their packages are installed) for photos of one known camera (its EXIF, or one
    video: one person's capture, where SIFT is the more precise, 0.19 deg against XFeat's 0.43 on
    ethiopian_head, and the faster), and the learned features first for any other set (several
    cameras, no EXIF: an online collection, where SIFT fails or builds false models on repeated
    print: milk's SIFT model of 42 photos was 23 deg off, XFeat's right to 0.2 deg)."""
    if choice != "auto":
        return [choice]
    missing = learned.missing_packages(AUTO_LEARNED)
    if missing:
        log.info("learned features unavailable (%s): SIFT only", missing)
        return ["sift"]
    groups = camera_groups(photos, shared)
    if len(groups) == 1 and group_key(photos[0]) is not None:
        log.info("one camera (%s): SIFT first", photos[0].camera)
        return ["sift", AUTO_LEARNED]
    return [AUTO_LEARNED, "sift"]


def mapper_options(cfg: dict, threads: int = 0) -> "pycolmap.IncrementalPipelineOptions":
    """The incremental mapper's options. Lens distortion stays at zero while the model grows (it
    is refined once at the end, see `refine`): with a long lens it is barely observable, and a
    k1 that wanders past COLMAP's sanity limit stops every further photo from registering (the
    Middlebury dino: k1 went to 4 after three photos, and 3 of 16 registered; 9 with it fixed).
    Global adjustments skip the points that others already tie down (COLMAP's
    ba_global_ignore_redundant_points3D): faster, and on the rendered print capture the model kept
    33 of 36 photos at 0.30 deg instead of 31 at 0.74 (`refine` adjusts every point at the end)."""
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = threads or -1
    options.mapper.ba_global_ignore_redundant_points3D = True
    options.ba_refine_extra_params = False
    options.mapper.abs_pose_refine_extra_params = False
    options.mapper.init_min_tri_angle = float(cfg["init_min_tri_angle"])
    options.mapper.abs_pose_min_num_inliers = int(cfg["register_min_inliers"])
    options.random_seed = options.mapper.random_seed = options.triangulation.random_seed = SEED
    return options


def map_photos(ingest: Path, cfg: dict, work: Path, log: logging.Logger, progress,
               threads: int = 0) -> "pycolmap.Reconstruction | None":
    """Run the mapper; the model with the most registered photos (not yet refined), or None when
    none was built.
    (Offering the largest model the photos of the others once more, with the mapper's
    `input_path`, registered none of them in the captures measured: not done.)"""
    db_path, models = work / "database.db", work / "models"
    shutil.rmtree(models, ignore_errors=True)
    models.mkdir(parents=True)
    if cfg["mapper"] == "incremental":
        token = pycolmap.CancellationToken()

        def next_image():  # called per registration attempt, so it can outnumber the photos
            if progress.n < progress.total:
                progress.update(1)

        found = interruptible("incremental mapping", pycolmap.incremental_mapping, db_path, ingest, models,
                              mapper_options(cfg, threads), next_image_callback=next_image, cancellation_token=token,
                              token=token)
    else:
        options = pycolmap.GlobalPipelineOptions()
        options.num_threads = threads or -1
        options.random_seed = options.mapper.random_seed = SEED
        found = interruptible("global mapping", pycolmap.global_mapping, db_path, ingest, models, options)
    if not found:
        return None
    best = max(found.values(), key=lambda r: r.num_reg_images())
    if cfg["mapper"] == "global":
        best.extract_colors_for_all_images(str(ingest))
    return best


def stray_cameras(reconstruction) -> dict[str, str]:
    """Image name -> why, for cameras placed absurdly far from the others: the global mapper can
    leave a weakly tied camera hundreds of object radii away (with a right rotation and a low
    reprojection error, so nothing else flags it)."""
    ids = list(reconstruction.reg_image_ids())
    centres = np.array([reconstruction.image(i).projection_center() for i in ids])
    distance = np.linalg.norm(centres - np.median(centres, axis=0), axis=1)
    typical = np.median(distance)
    if typical == 0:
        return {}
    far = np.flatnonzero(distance > STRAY_DISTANCE * typical)
    return {reconstruction.image(ids[i]).name: f"SfM placed it {distance[i] / typical:.0f} times farther out than "
                                               "the others" for i in far}


def tied_elsewhere(posed: set[str], pair_inliers: dict[tuple[str, str], int]) -> dict[str, str]:
    """Image name -> why, for posed photos whose strongest tie is to a photo outside the model
    (ELSEWHERE_RATIO times their strongest tie to a posed one): another object or place."""
    inside: dict[str, int] = {}
    outside: dict[str, tuple[int, str]] = {}
    for (a, b), count in pair_inliers.items():
        for name, other in ((a, b), (b, a)):
            if name not in posed:
                continue
            if other in posed:
                inside[name] = max(inside.get(name, 0), count)
            elif count > outside.get(name, (0, ""))[0]:
                outside[name] = (count, other)
    return {name: (f"its camera rested on {inside.get(name, 0)} verified matches with the posed photos, while it "
                   f"shares {count} with {Path(other).stem}, which got none: another object or place")
            for name, (count, other) in outside.items() if count >= ELSEWHERE_RATIO * max(inside.get(name, 0), 1)}


def drop_cameras(reconstruction, why: dict[str, str], log: logging.Logger) -> None:
    """Deregister the named photos' cameras (the stage's warning about photos left out names them)."""
    for name, reason in why.items():
        image = reconstruction.find_image_with_name(name)
        log.info("dropping the camera of %s: %s", Path(name).name, reason)
        reconstruction.deregister_frame(image.frame_id)


def refine(reconstruction) -> None:
    """A last global bundle adjustment with a robust (Cauchy) loss, lens distortion included. The
    mapper's squared loss lets a few bad tracks (features across the silhouette, repeated
    texture) tilt whole cameras: on a synthetic capture this cut the worst camera's rotation
    error from 0.6 to 0.1 degrees. If distortion drifts to values COLMAP calls bogus (it cannot
    be told from the focal length with a long lens), the adjustment is redone without it.
    (The adjuster is built directly: pycolmap.bundle_adjustment turns glog's stderr echo back on.)"""
    saved = {camera_id: np.array(camera.params) for camera_id, camera in reconstruction.cameras.items()}
    _adjust(reconstruction, refine_distortion=True)
    bogus = [c for c in reconstruction.cameras.values()
             if c.has_bogus_params(MIN_FOCAL_RATIO, MAX_FOCAL_RATIO, MAX_DISTORTION)]
    if bogus:
        for camera in reconstruction.cameras.values():
            params = saved[camera.camera_id].copy()
            params[list(camera.extra_params_idxs())] = 0.0
            camera.params = params
        _adjust(reconstruction, refine_distortion=False)
    reconstruction.update_point_3d_errors()


def _adjust(reconstruction, refine_distortion: bool) -> None:
    options = pycolmap.BundleAdjustmentOptions()
    options.print_summary = False
    options.refine_extra_params = refine_distortion
    options.ceres.loss_function_type = pycolmap.LossFunctionType.CAUCHY
    options.ceres.solver_options.function_tolerance = 1e-10
    options.ceres.solver_options.max_num_iterations = 100
    config = pycolmap.BundleAdjustmentConfig()
    for image_id in reconstruction.reg_image_ids():
        config.add_image(image_id)
    config.fix_gauge(pycolmap.BundleAdjustmentGauge.TWO_CAMS_FROM_WORLD)
    adjuster = pycolmap.create_default_bundle_adjuster(options, config, reconstruction)
    interruptible("bundle adjustment", adjuster.solve)


@dataclass
class Attempt:
    """What one kind of features achieved."""

    kind: str
    model: "pycolmap.Reconstruction | None"
    pair_inliers: dict[tuple[str, str], int]  # verified matches per pair (image names)
    rejected: str = ""  # why the mapper's model was rejected, "" if it was not
    dropped: dict[str, str] = field(default_factory=dict)  # image name -> why its camera was taken out
    misplaced: list[str] = field(default_factory=list)  # the image names among those placed wrong
    figures: dict = field(default_factory=dict)  # what the checks measured, for the record
    built: dict[str, Frame] = field(default_factory=dict)  # image name -> camera, as the model was checked
    folder: Path | None = None  # its COLMAP files (database, models)
    around: int = 0  # the photos whose neighbourhood alone it matched (0: every photo)

    def reject(self, why: str, log: logging.Logger) -> None:
        """Throw the model away, saying why (it becomes part of the attempt's summary); its cameras
        stay in `built`, for the record."""
        self.rejected = f"its model of {self.registered} photos was rejected: {why}"
        log.warning("%s: %s", self.kind, self.rejected)
        self.model = None

    @property
    def registered(self) -> int:
        return self.model.num_reg_images() if self.model is not None else 0

    @property
    def label(self) -> str:
        return f"{self.kind}-around" if self.around else self.kind

    def summary(self, total: int) -> str:
        scope = f" around the {self.around} photo(s) the first model lacked" if self.around else ""
        return (f"{self.kind}{scope}: {self.registered}/{total} registered"
                + (f" ({self.rejected})" if self.rejected else ""))

    def record(self) -> dict:
        """The attempt for normalization.json and the report: what it built, its checks' figures,
        and whether (why) it was rejected."""
        return {"attempt": self.label, "built": len(self.built), "rejected": self.rejected,
                "dropped": sorted(Path(name).stem for name in self.dropped), **self.figures}


def check_against_masks(found: Attempt, photos: list[PhotoInput], threshold: int, log: logging.Logger) -> None:
    """Reject the model when it contradicts the masks: false matches can build a consistent but
    wrong model (a model of 15 of the dino's 16 photos, 57 degrees off in the median, saw 72 % of
    its points inside the masks in the median photo; right models 95-100 %). Then take out single
    cameras that are both weakly tied and at odds with the others' visual hull (`misplaced`), after
    rejecting the model if the median camera is at odds with it."""
    model = found.model
    by_name = {p.image_rel: p for p in photos}
    xyz = object_points_of(model)
    if not len(xyz):
        return
    images = [model.image(i) for i in model.reg_image_ids()]
    frames = [frame_from_image(im, model.camera(im.camera_id), im.name) for im in images]
    silhouettes = [silhouette_with_slack(read_mask(by_name[im.name], threshold)) for im in images]
    inside, seen = silhouette_votes(xyz, frames, silhouettes)
    agreement = object_agreement(inside, seen)
    recall, strict_recall = hull_recall(frames, silhouettes, xyz)
    found.figures.update(points_inside_masks=round(float(np.median(inside.mean(1))), 3),
                         points_in_view=round(float(np.median(seen.mean(1))), 3),
                         object_points=round(float(np.mean(object_majority(inside, seen))), 3),
                         object_points_inside_masks=round(float(np.median(agreement)), 3),
                         hull_covers_mask=round(float(np.median(recall)), 3))
    if np.median(agreement) < MODEL_MIN_AGREEMENT:
        found.reject(f"the points of its object fall outside the masks ({100 * np.median(agreement):.0f} % inside "
                     "in the median photo), false matches", log)
        return
    if np.median(recall) < MODEL_MIN_HULL_RECALL:
        found.reject(f"the other photos' visual hull covers {100 * np.median(recall):.0f} % of the median photo's "
                     "mask, so its cameras disagree (false matches)", log)
        return
    observed = np.array([im.num_points3D for im in images], dtype=float)
    why = misplaced([im.name for im in images], recall, strict_recall, agreement, observed)
    found.dropped.update(why)
    found.misplaced = sorted(why)
    drop_cameras(model, why, log)


def object_points_of(model) -> np.ndarray:
    """[N, 3] the model's points seen by 3 or more photos (all of them when fewer than 20 are)."""
    points = list(model.points3D.values())
    if not points:
        return np.zeros((0, 3))
    tracks = np.array([p.track.length() for p in points])
    return np.array([p.xyz for p in points])[tracks >= 3 if (tracks >= 3).sum() >= 20 else slice(None)]


def hull_recall(frames: list, silhouettes: list[np.ndarray], xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([F], [F]) the share of each frame's silhouette the others' visual hull covers, the hull
    tolerant (a cell outside SPARE_MISS_SHARE of the silhouettes kept: rough masks) and strict (one
    miss forgiven), carved in a cube of HULL_BOX times the sparse points' [N, 3] 95th-percentile
    reach around their median (`hull_recall_without_each`)."""
    centre = np.median(xyz, axis=0)
    reach = HULL_BOX * np.percentile(np.linalg.norm(xyz - centre, axis=1), 95)
    tolerant, strict = hull_recall_without_each(frames, silhouettes, centre - reach, centre + reach,
                                                (SPARE_MISS_SHARE, 0.0))
    return tolerant, strict


def misplaced(names: list[str], recall: np.ndarray, strict_recall: np.ndarray, agreement: np.ndarray,
              observed: np.ndarray) -> dict[str, str]:
    """Image name -> why, for cameras placed wrong: whose mask the others' strict visual hull
    (`strict_recall`: only one miss forgiven; the tolerant hull, `recall`, kept five neighbouring
    wrong cameras of ethiopian_head, 17-45 deg off) covers less
    than MISPLACED_RECALL of the median photo's share while they see fewer than MISPLACED_POINTS of
    the median photo's 3-D points (either alone also marks right cameras: a mask that takes in the
    turntable, a photo of a plain side; together they marked the wrong cameras of three captures
    and none of the right ones of five); or that see few of the points in their view inside their
    mask (`agreement`) while the others' hull, tolerant or strict, is beside it (CAMERA_MIN_AGREEMENT,
    FLIPPED_RECALL: a mask that misses part of the object lowers the first only, a turned or tilted
    camera both)."""
    typical_recall, typical_points, typical_strict = np.median(recall), np.median(observed), np.median(strict_recall)
    why = {}
    for name, r, strict, a, n in zip(names, recall, strict_recall, agreement, observed):
        if strict < MISPLACED_RECALL * typical_strict and n < MISPLACED_POINTS * typical_points:
            why[name] = (f"its camera disagrees with the others: their visual hull covers {100 * strict:.0f} % of its "
                         f"mask (typical {100 * typical_strict:.0f} %) and it sees {int(n)} of the model's points "
                         f"(typical {int(typical_points)}): a camera placed wrong")
            continue
        hull, typical = (r, typical_recall) if r < FLIPPED_RECALL * typical_recall else (strict, typical_strict)
        if a < CAMERA_MIN_AGREEMENT and hull < FLIPPED_RECALL * typical:
            why[name] = (f"its camera disagrees with the others: {100 * a:.0f} % of the model's points in its view "
                         f"fall inside its mask, and their visual hull covers {100 * hull:.0f} % of it (typical "
                         f"{100 * typical:.0f} %): a camera placed wrong (false matches)")
    return why


def attempt(kind: str, ingest: Path, photos: list[PhotoInput], threshold: int, cfg: dict, work: Path,
            log: logging.Logger, progress, device: str, threads: int, around: set[str] | None = None) -> Attempt:
    """Features, matches, the mapper and the masks' check with one kind of features (`around`: on
    the neighbourhood of those image names only, see matching.py)."""
    folder = work / (f"{kind}-around" if around else kind)
    folder.mkdir(parents=True, exist_ok=True)
    with colmap_log(folder / "log", log):
        if (folder / MATCHED_MARK).exists() and (folder / "database.db").exists():
            log.info("resuming with the %s features and matches of an interrupted run", kind)
        else:
            (folder / MATCHED_MARK).unlink(missing_ok=True)
            extract_and_match(kind, ingest, photos, threshold, cfg, folder, log, progress, device, threads, around)
            (folder / MATCHED_MARK).write_text("features and matches complete\n")
        with progress(total=len(photos), desc=f"registering photos ({kind})", unit="photo") as bar:
            model = map_photos(ingest, cfg, folder, log, bar, threads)
    found = Attempt(kind, model, database.pair_inliers(folder / "database.db"), folder=folder,
                    around=len(around or ()))
    if model is not None:
        found.figures["mapped"] = model.num_reg_images()
        found.dropped = stray_cameras(model)
        posed = {model.image(i).name for i in model.reg_image_ids()} - set(found.dropped)
        found.dropped.update(tied_elsewhere(posed, found.pair_inliers))
        drop_cameras(model, found.dropped, log)
        before = model.compute_mean_reprojection_error()
        with colmap_log(folder / "log", log):  # a failing solver step is chatter, not news
            refine(model)
        after = model.compute_mean_reprojection_error()
        found.built = cameras_of(model)
        found.figures.update(reprojection_px=round(float(before), 3), reprojection_adjusted_px=round(float(after), 3))
        if not after < DIVERGED_PX:
            found.reject(f"its robust adjustment diverged (mean reprojection error {before:.2f} px before it), so "
                         "its matches disagree among themselves (false matches)", log)
        else:
            check_against_masks(found, photos, threshold, log)
        if found.model is not None and after > REFINE_GROWTH * before and after > 1.0:
            found.reject(f"a robust adjustment raised its mean reprojection error from {before:.2f} to {after:.2f} px, "
                         "so its matches disagree among themselves (false matches)", log)
    return found


def lacked(found: Attempt, photos: list[PhotoInput]) -> set[str]:
    """The image names of the photos an attempt's model did not pose (or whose cameras it took out)."""
    posed = {found.model.image(i).name for i in found.model.reg_image_ids()} if found.model is not None else set()
    return {p.image_rel for p in photos} - posed


def cameras_of(model) -> dict[str, Frame]:
    """Image name -> camera, for every photo the model registered."""
    images = [model.image(i) for i in model.reg_image_ids()]
    return {im.name: frame_from_image(im, model.camera(im.camera_id), Path(im.name).stem) for im in images}


def run_sfm(ingest: Path, photos: list[PhotoInput], threshold: int, cfg: dict, work: Path,
            log: logging.Logger, progress, device: str = "cpu", threads: int = 0) -> SfmResult:
    """Cameras and points in COLMAP's (arbitrary) SfM frame, from the first kind of features that
    registers AUTO_ENOUGH of the photos (a first kind that placed cameras wrong is followed by the
    next all the same: a learned kind then matches only around the photos the first lacks), else
    from the attempt that registered the most (when none did, the matches reported are those of
    the kind that verified the most pairs); the photos it lacks get the cameras the other attempts
    found for them (fill_in)."""
    check_config(cfg)
    if cfg["shared_camera"] and len({(p.width, p.height) for p in photos}) > 1:
        raise NeroicError("poses.shared_camera needs photos of one size, but these differ",
                          hint="use --set poses.shared_camera=false (cameras grouped by EXIF)")
    tried: list[Attempt] = []
    shutil.rmtree(work / "attempts", ignore_errors=True)  # a resumed run writes its own
    kinds = feature_order(cfg["features"], photos, bool(cfg["shared_camera"]), log)
    for kind in kinds:
        around = None
        if tried and kind in learned.KINDS and tried[0].registered >= AUTO_ENOUGH * len(photos):
            around = lacked(tried[0], photos)
        tried.append(attempt(kind, ingest, photos, threshold, cfg, work, log, progress, device, threads, around))
        log.info("%s", tried[-1].summary(len(photos)))
        if tried[-1].built:
            write_attempt(work / "attempts", tried[-1].label, tried[-1].built, tried[-1].record())
        if tried[-1].registered >= AUTO_ENOUGH * len(photos) and not (tried[-1].misplaced and len(tried) == 1):
            break
    enough = [a for a in tried if a.registered >= AUTO_ENOUGH * len(photos)]
    best = enough[0] if enough else max(tried, key=lambda a: a.registered)  # the first on a tie
    if best.registered == 0:  # report the matches of the kind that verified the most pairs
        best = max(tried, key=lambda a: len(a.pair_inliers))
    result = SfmResult(solution=None, features=best.kind, pair_inliers=best.pair_inliers,
                       attempts=[a.summary(len(photos)) for a in tried], dropped=best.dropped,
                       records=[{**a.record(), "chosen": a is best and a.model is not None} for a in tried])
    if best.registered == 0:
        return result
    if best.kind in learned.KINDS and cfg["sift_tracks"]:
        sift = next((a.folder / "database.db" for a in tried if a.kind == "sift"), None)
        with colmap_log(work / "sift-tracks" / "log", log):
            best.model, note = add_sift_tracks(best.model, set(best.pair_inliers), best.folder, work, ingest, photos,
                                               threshold, cfg, log, threads, refine, sift)
        log.info("%s", note)
        result.attempts.append(note)
    if best.kind in learned.KINDS and cfg["track_alignment"]:
        with colmap_log(work / "track-alignment", log):
            best.model, note = align_tracks(best.model, ingest, refine)
        log.info("%s", note)
        result.attempts.append(note)
    frames = frames_of(best.model, photos)
    for other in tried:
        if other is not best and other.model is not None:
            note = fill_in(frames, best.model, other.model, photos, threshold, log)
            if note:
                result.attempts.append(f"{note} from {other.label}")
    result.dropped = {name: why for name, why in best.dropped.items() if Path(name).stem not in frames}
    result.solution = solution_of(best.model, frames)
    return result


def frames_of(model, photos: list[PhotoInput]) -> dict[str, Frame]:
    """stem -> Frame for the model's registered photos."""
    stems = {p.image_rel: p.stem for p in photos}
    images = [model.image(i) for i in model.reg_image_ids()]
    return {stems[im.name]: frame_from_image(im, model.camera(im.camera_id), stems[im.name]) for im in images}


def seen_points(model, photos: list[PhotoInput]) -> dict[str, float]:
    """stem -> how many of the model's 3-D points its photo sees."""
    stems = {p.image_rel: p.stem for p in photos}
    return {stems[model.image(i).name]: float(model.image(i).num_points3D) for i in model.reg_image_ids()}


def fill_in(frames: dict[str, Frame], model, other_model, photos: list[PhotoInput], threshold: int,
            log: logging.Logger) -> str:
    """Add to `frames` (those of `model`, the kept one) the cameras of photos it lacks from
    `other_model` (merge.py), unless `misplaced` marks them among all the cameras (each judged by
    the points it sees in its own model); a sentence on what was added, "" if nothing."""
    xyz = object_points_of(model)
    if not len(xyz):
        return ""
    added, how = cameras_from(frames, frames_of(other_model, photos))
    if not added:
        if how != "nothing to add":
            log.info("no cameras merged from the other model: %s", how)
        return ""
    by_stem = {p.stem: p for p in photos}
    stems = [*frames, *added]
    silhouettes = [silhouette_with_slack(read_mask(by_stem[s], threshold)) for s in stems]
    cameras = [*frames.values(), *added.values()]
    recall, strict_recall = hull_recall(cameras, silhouettes, xyz)
    inside, in_image = silhouette_votes(xyz, cameras, silhouettes)
    seen, theirs = seen_points(model, photos), seen_points(other_model, photos)
    to_ours = np.median(list(seen.values())) / max(np.median(list(theirs.values())), 1.0)  # the models' scales
    seen.update({stem: theirs[stem] * to_ours for stem in added})
    wrong = misplaced(stems, recall, strict_recall, object_agreement(inside, in_image),
                      np.array([seen[s] for s in stems]))
    for stem in added:
        log.info("%s the camera of %s from the other model%s", "did not merge" if stem in wrong else "merged", stem,
                 f": {wrong[stem]}" if stem in wrong else "")
    kept = [stem for stem in added if stem not in wrong]
    frames.update({stem: added[stem] for stem in kept})
    return f"{len(kept)} camera(s) merged in ({how}): {', '.join(kept)}" if kept else ""
