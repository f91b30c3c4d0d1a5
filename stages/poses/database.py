"""COLMAP's database for one capture: photos in their camera groups with focal priors, and
keypoints and matches found outside COLMAP (learned features), verified by COLMAP.

    create(database, ingest, groups, camera_model)         # images, cameras, EXIF focal priors
    write_features(database, keypoints, matches)           # learned keypoints and raw matches
    verify(database)                                       # two-view geometry of every matched pair
    pair_inliers(database)                                 # verified matches per photo pair
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap

from stages.poses.camera_groups import group_camera_model
from stages.poses.photos import PhotoInput

SEED = 0  # fixed RANSAC seed: the same photos give the same cameras


def create(database: Path, ingest: Path, groups: list[list[PhotoInput]], camera_model: str) -> None:
    """A fresh database holding every photo, one camera per group (camera_groups.py), the group's
    EXIF focal length (median) as a prior. With a prior focal, COLMAP verifies pairs with the
    essential matrix and initialises from it."""
    database.unlink(missing_ok=True)
    pycolmap.Database.open(database).close()
    for group in groups:
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = group_camera_model(group, camera_model)
        pycolmap.import_images(database, ingest, camera_mode=pycolmap.CameraMode.SINGLE,
                               image_names=[p.image_rel for p in group], options=reader)
    db = pycolmap.Database.open(database)
    try:
        by_name = {im.name: im for im in db.read_all_images()}
        for group in groups:
            focals = [p.focal_px for p in group if p.focal_px]
            if not focals:
                continue
            camera = db.read_camera(by_name[group[0].image_rel].camera_id)
            params = np.array(camera.params, dtype=float)
            params[list(camera.focal_length_idxs())] = float(np.median(focals))
            camera.params = params
            camera.has_prior_focal_length = True
            db.update_camera(camera)
    finally:
        db.close()


def image_ids(database: Path) -> dict[str, int]:
    """COLMAP image name -> image id."""
    db = pycolmap.Database.open(database)
    try:
        return {im.name: im.image_id for im in db.read_all_images()}
    finally:
        db.close()


def write_features(database: Path, keypoints: dict[str, np.ndarray],
                   matches: dict[tuple[str, str], np.ndarray]) -> None:
    """Keypoints [N, 2] (COLMAP pixel coordinates) per image name and matches [M, 2] (keypoint
    indices) per image-name pair, replacing any the database holds."""
    ids = image_ids(database)
    db = pycolmap.Database.open(database)
    try:
        db.clear_keypoints()
        db.clear_descriptors()
        db.clear_matches()
        db.clear_two_view_geometries()
        for name, xy in keypoints.items():
            db.write_keypoints(ids[name], np.ascontiguousarray(xy, dtype=np.float32))
        for (a, b), pairs in matches.items():
            db.write_matches(ids[a], ids[b], np.ascontiguousarray(pairs, dtype=np.uint32))
    finally:
        db.close()


def verification_options() -> "pycolmap.TwoViewGeometryOptions":
    options = pycolmap.TwoViewGeometryOptions()
    options.ransac.random_seed = SEED
    return options


def verify(database: Path, threads: int = 0, token=None) -> None:
    """COLMAP's two-view geometric verification (RANSAC: essential, fundamental, homography) of
    every matched pair; the inliers go to the two_view_geometries table the mapper reads."""
    verifier = pycolmap.GeometricVerifierOptions()
    verifier.num_threads = threads or -1
    pycolmap.geometric_verification(database, verifier_options=verifier,
                                    two_view_geometry_options=verification_options(), cancellation_token=token)


def pair_inliers(database: Path) -> dict[tuple[str, str], int]:
    """(image name, image name) -> verified inlier matches, for pairs with any."""
    db = pycolmap.Database.open(database)
    try:
        names = {im.image_id: im.name for im in db.read_all_images()}
        pair_ids, counts = db.read_two_view_geometry_num_inliers()
    finally:
        db.close()
    out = {}
    for pair_id, count in zip(pair_ids, counts):
        a, b = pycolmap.pair_id_to_image_pair(pair_id)
        if count:
            out[(names[a], names[b])] = int(count)
    return out
