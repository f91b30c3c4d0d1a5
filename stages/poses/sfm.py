"""Structure from motion with pycolmap: masked SIFT, focal priors, matching, mapping.

COLMAP's working files (database, SIFT masks, models) live in a folder the caller gives (the
stage's checkpoint folder), so an interrupted run resumes after the slow feature matching.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pycolmap
from PIL import Image, ImageFilter

from stages.errors import NeroicError
from stages.common.cameras import PERSPECTIVE_MODELS
from stages.poses.colmap_model import Solution, frame_from_image, solution_of
from stages.poses.photos import PhotoInput, read_mask

MAPPERS = ("incremental", "global")
MATCHED_MARK = "matched.ok"  # written once features and matches are complete in the database
SEED = 0  # fixed RANSAC and mapper seeds: the same photos give the same cameras
STRAY_DISTANCE = 10.0  # a camera this many times farther from the others than usual is a failure


def check_config(cfg: dict) -> None:
    """Refuse unknown camera models and mappers before any work."""
    if cfg["camera_model"] not in PERSPECTIVE_MODELS:
        raise NeroicError(f"poses.camera_model {cfg['camera_model']!r} is not supported",
                          hint=f"use one of {', '.join(PERSPECTIVE_MODELS)}")
    if cfg["mapper"] not in MAPPERS:
        raise NeroicError(f"poses.mapper {cfg['mapper']!r} is unknown", hint="use incremental or global")


@contextlib.contextmanager
def colmap_log(folder: Path, log: logging.Logger):
    """Send COLMAP's (glog) chatter to a file while inside, then into `log` (errors as warnings)."""
    flags = pycolmap.logging
    saved = (flags.logtostderr, flags.alsologtostderr, flags.stderrthreshold)
    folder.mkdir(parents=True, exist_ok=True)
    prefix = folder / "colmap."
    flags.logtostderr, flags.alsologtostderr, flags.stderrthreshold = False, False, 3
    flags.set_log_destination(flags.INFO, str(prefix))
    finished = False
    try:
        yield
        finished = True
    finally:
        flags.set_log_destination(flags.INFO, "")  # closes (and so flushes) the file
        if finished:  # after Ctrl-C a cancelled COLMAP thread may still be winding down: keep it quiet
            flags.logtostderr, flags.alsologtostderr, flags.stderrthreshold = saved
        for path in sorted(folder.glob("colmap.*")):
            for line in path.read_text(errors="replace").splitlines():
                log.log(logging.WARNING if line.startswith(("E", "F")) else logging.DEBUG, "colmap: %s", line)
            path.unlink()


def interruptible(what: str, fn, *args, token=None, **kwargs):
    """Run a pycolmap call in a worker thread so Ctrl-C is noticed at once (pycolmap releases the
    GIL, but the main thread would only see the signal when the call returns). Errors from
    COLMAP become NeroicError."""
    result, error = {}, {}

    def work():
        try:
            result["value"] = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - re-raised in the caller's thread
            error["value"] = e

    thread = threading.Thread(target=work, name=f"colmap-{what}", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.2)
    except KeyboardInterrupt:
        if token is not None:
            token.cancel()
            thread.join(10.0)
        raise
    if "value" in error:
        raise NeroicError(f"COLMAP failed during {what}: {error['value']}",
                          hint="see the log file for COLMAP's messages") from None
    return result.get("value")


def write_sift_masks(photos: list[PhotoInput], threshold: int, dilation: int, folder: Path) -> None:
    """COLMAP masks: `<image name>.png`, 0 = ignore. The object mask grown by `dilation` pixels,
    so features on the silhouette's edge survive."""
    for photo in photos:
        mask = Image.fromarray(read_mask(photo, threshold).astype(np.uint8) * 255)
        if dilation > 0:
            mask = mask.filter(ImageFilter.MaxFilter(2 * dilation + 1))
        target = folder / f"{photo.image_rel}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        mask.save(target)


def set_focal_priors(database: Path, photos: list[PhotoInput], shared: bool, log: logging.Logger) -> None:
    """Start each camera at its photo's EXIF focal length, marked as a prior.

    With a prior focal, COLMAP verifies pairs with the essential matrix and initialises from it.
    """
    hints = {p.image_rel: p.focal_px for p in photos if p.focal_px}
    if not hints:
        return
    db = pycolmap.Database.open(database)
    try:
        images = db.read_all_images()
        if shared:
            focal = {images[0].camera_id: float(np.median(list(hints.values())))}
        else:
            focal = {im.camera_id: hints[im.name] for im in images if im.name in hints}
        for camera_id, f in focal.items():
            camera = db.read_camera(camera_id)
            params = np.array(camera.params, dtype=float)
            params[list(camera.focal_length_idxs())] = f
            camera.params = params
            camera.has_prior_focal_length = True
            db.update_camera(camera)
    finally:
        db.close()
    log.info("EXIF focal priors for %d camera(s)", len(focal))


def extract_and_match(ingest: Path, photos: list[PhotoInput], threshold: int, cfg: dict,
                      work: Path, log: logging.Logger, bar, threads: int = 0) -> None:
    """Fill work/database.db with masked SIFT features, focal priors and verified matches
    (`bar` advances by one step after each; `threads` 0 = all cores)."""
    database = work / "database.db"
    if (work / MATCHED_MARK).exists() and database.exists():
        log.info("resuming with the features and matches of an interrupted run")
        bar.update(2)
        return
    database.unlink(missing_ok=True)
    masks = work / "sift_masks"
    shutil.rmtree(masks, ignore_errors=True)
    write_sift_masks(photos, threshold, int(cfg["mask_dilation"]), masks)

    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = cfg["camera_model"]
    reader.mask_path = str(masks)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.sift.max_num_features = int(cfg["max_features"])
    extraction.num_threads = threads or -1
    mode = pycolmap.CameraMode.SINGLE if cfg["shared_camera"] else pycolmap.CameraMode.PER_IMAGE
    token = pycolmap.CancellationToken()
    interruptible("feature extraction", pycolmap.extract_features, database, ingest,
                  image_names=[p.image_rel for p in photos], camera_mode=mode, reader_options=reader,
                  extraction_options=extraction, device=pycolmap.Device.cpu, cancellation_token=token,
                  token=token)
    set_focal_priors(database, photos, bool(cfg["shared_camera"]), log)
    bar.update(1)

    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = threads or -1
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = SEED
    token = pycolmap.CancellationToken()
    if len(photos) <= int(cfg["exhaustive_max"]):
        interruptible("exhaustive matching", pycolmap.match_exhaustive, database, matching_options=matching,
                      verification_options=verification, device=pycolmap.Device.cpu, cancellation_token=token,
                      token=token)
    else:
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = int(cfg["sequential_overlap"])
        log.info("%d photos > exhaustive_max %d: sequential matching (overlap %d), in file-name order",
                 len(photos), cfg["exhaustive_max"], pairing.overlap)
        interruptible("sequential matching", pycolmap.match_sequential, database, matching_options=matching,
                      pairing_options=pairing, verification_options=verification, device=pycolmap.Device.cpu,
                      cancellation_token=token, token=token)
    (work / MATCHED_MARK).write_text("features and matches complete\n")
    bar.update(1)


def map_photos(ingest: Path, cfg: dict, work: Path, log: logging.Logger, progress,
               threads: int = 0) -> "pycolmap.Reconstruction | None":
    """Run the mapper; the model with the most registered photos, or None when none was built."""
    database, models = work / "database.db", work / "models"
    shutil.rmtree(models, ignore_errors=True)
    models.mkdir(parents=True)
    if cfg["mapper"] == "incremental":
        options = pycolmap.IncrementalPipelineOptions()
        options.num_threads = threads or -1
        options.mapper.init_min_tri_angle = float(cfg["init_min_tri_angle"])
        options.mapper.abs_pose_min_num_inliers = int(cfg["register_min_inliers"])
        options.random_seed = options.mapper.random_seed = options.triangulation.random_seed = SEED
        token = pycolmap.CancellationToken()

        def next_image():  # called per registration attempt, so it can outnumber the photos
            if progress.n < progress.total:
                progress.update(1)

        found = interruptible("incremental mapping", pycolmap.incremental_mapping, database, ingest, models,
                              options, next_image_callback=next_image, cancellation_token=token, token=token)
    else:
        options = pycolmap.GlobalPipelineOptions()
        options.num_threads = threads or -1
        options.random_seed = options.mapper.random_seed = SEED
        found = interruptible("global mapping", pycolmap.global_mapping, database, ingest, models, options)
    if not found:
        return None
    best = max(found.values(), key=lambda r: r.num_reg_images())
    if cfg["mapper"] == "global":
        best.extract_colors_for_all_images(str(ingest))
    drop_stray_cameras(best, log)
    refine(best)
    return best


def drop_stray_cameras(reconstruction, log: logging.Logger) -> None:
    """Deregister cameras placed absurdly far from the others: the global mapper can leave a
    weakly tied camera hundreds of object radii away (with a right rotation and a low
    reprojection error, so nothing else flags it)."""
    ids = list(reconstruction.reg_image_ids())
    centres = np.array([reconstruction.image(i).projection_center() for i in ids])
    distance = np.linalg.norm(centres - np.median(centres, axis=0), axis=1)
    for i in np.flatnonzero(distance > STRAY_DISTANCE * np.median(distance)):
        image = reconstruction.image(ids[i])
        log.warning("dropping the camera of %s: SfM placed it %.0f times farther out than the others",
                    image.name, distance[i] / np.median(distance))
        reconstruction.deregister_frame(image.frame_id)


def refine(reconstruction) -> None:
    """A last global bundle adjustment with a robust (Cauchy) loss. The mapper's squared loss
    lets a few bad tracks (features across the silhouette, repeated texture) tilt whole cameras:
    on a synthetic capture this cut the worst camera's rotation error from 0.6 to 0.1 degrees.
    (The adjuster is built directly: pycolmap.bundle_adjustment turns glog's stderr echo back on.)"""
    options = pycolmap.BundleAdjustmentOptions()
    options.print_summary = False
    options.ceres.loss_function_type = pycolmap.LossFunctionType.CAUCHY
    options.ceres.solver_options.function_tolerance = 1e-10
    options.ceres.solver_options.max_num_iterations = 100
    config = pycolmap.BundleAdjustmentConfig()
    for image_id in reconstruction.reg_image_ids():
        config.add_image(image_id)
    config.fix_gauge(pycolmap.BundleAdjustmentGauge.TWO_CAMS_FROM_WORLD)
    adjuster = pycolmap.create_default_bundle_adjuster(options, config, reconstruction)
    interruptible("bundle adjustment", adjuster.solve)
    reconstruction.update_point_3d_errors()


def run_sfm(ingest: Path, photos: list[PhotoInput], threshold: int, cfg: dict, work: Path,
            log: logging.Logger, progress, threads: int = 0) -> Solution | None:
    """Cameras and points in COLMAP's (arbitrary) SfM frame; None when no model could be built."""
    check_config(cfg)
    if cfg["shared_camera"] and len({(p.width, p.height) for p in photos}) > 1:
        raise NeroicError("poses.shared_camera needs photos of one size, but these differ",
                          hint="use --set poses.shared_camera=false (one camera per photo)")
    with colmap_log(work / "log", log):
        with progress(total=2, desc="features and matches", unit="step") as bar:
            extract_and_match(ingest, photos, threshold, cfg, work, log, bar, threads)
        with progress(total=len(photos), desc="registering photos", unit="photo") as bar:
            rec = map_photos(ingest, cfg, work, log, bar, threads)
    if rec is None:
        return None
    stems = {p.image_rel: p.stem for p in photos}
    images = [rec.image(i) for i in rec.reg_image_ids()]
    return solution_of(rec, {stems[im.name]: frame_from_image(im, rec.camera(im.camera_id), stems[im.name])
                             for im in images})
