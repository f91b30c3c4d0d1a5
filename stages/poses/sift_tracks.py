"""Finer cameras for a model built on learned features: SIFT tracks added with its cameras held.

    model = add_sift_tracks(model, learned_folder, work, ingest, photos, threshold, cfg, log, threads)

Learned features find the right cameras where SIFT fails (changing light, repeated print), but
place keypoints less precisely: on ethiopian_head XFeat's cameras were 0.43 deg off the dataset's
in the median, SIFT's 0.19. Here SIFT features are matched only on the photo pairs the learned
model already ties (no exhaustive matching, and no false SIFT match can choose a pair), their
tracks are triangulated with the model's cameras fixed (a false match does not fit them and is
left out), and one robust bundle adjustment refines the cameras on both kinds of tracks. The model
is kept as it was when the adjustment does not lower its SIFT error or its cameras move far.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pycolmap

from stages.common.cameras import rotation_angle
from stages.poses import database
from stages.poses.camera_groups import camera_groups
from stages.poses.colmap_calls import interruptible
from stages.poses.matching import extract_sift
from stages.poses.photos import PhotoInput

MIN_SHARED_POINTS = 15  # a pair of posed photos is SIFT-matched when the model ties them by this many points
MAX_TURN_DEG = 1.0  # the adjustment may turn the cameras this much (median): more is a different model
FIRST_OCTAVE = 0  # SIFT at the photo's own scale: the tracks add precision, not reach (4x faster than -1)


def tied_pairs(model, matched: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """The `matched` image-name pairs (those the learned features verified) that share
    MIN_SHARED_POINTS or more of the model's 3-D points."""
    counts: dict[tuple[int, int], int] = {}
    for point in model.points3D.values():
        ids = sorted({element.image_id for element in point.track.elements})
        for a in range(len(ids)):
            for b in range(a + 1, len(ids)):
                counts[(ids[a], ids[b])] = counts.get((ids[a], ids[b]), 0) + 1
    pairs = [(model.image(a).name, model.image(b).name) for (a, b), n in counts.items() if n >= MIN_SHARED_POINTS]
    return [(a, b) for a, b in pairs if (a, b) in matched or (b, a) in matched]


def sift_matches(ingest: Path, photos: list[PhotoInput], threshold: int, cfg: dict, pairs: list[tuple[str, str]],
                 folder: Path, threads: int) -> None:
    """folder/database.db: SIFT features inside the masks and verified matches on `pairs` only."""
    folder.mkdir(parents=True, exist_ok=True)
    db_path = folder / "database.db"
    database.create(db_path, ingest, camera_groups(photos, bool(cfg["shared_camera"])), cfg["camera_model"])
    extract_sift(ingest, photos, threshold, cfg, db_path, folder / "sift_masks", threads, first_octave=FIRST_OCTAVE)
    (folder / "pairs.txt").write_text("\n".join(f"{a} {b}" for a, b in pairs) + "\n")
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = threads or -1
    pairing = pycolmap.ImportedPairingOptions()
    pairing.match_list_path = folder / "pairs.txt"
    token = pycolmap.CancellationToken()
    interruptible("SIFT matching", pycolmap.match_image_pairs, db_path, matching_options=matching,
                  pairing_options=pairing, verification_options=database.verification_options(),
                  device=pycolmap.Device.cpu, cancellation_token=token, token=token)


def combine(learned_db: Path, sift_db: Path, pairs: list[tuple[str, str]], target: Path, ingest: Path,
            photos: list[PhotoInput], cfg: dict, threads: int) -> None:
    """target: a database whose keypoints are the learned ones followed by SIFT's, holding the
    learned matches and SIFT's verified ones on `pairs` (offset past the learned keypoints),
    verified together. The image and
    camera ids are those of the learned database (created the same way), so the learned model's
    observations keep their keypoint indices."""
    keypoints, matches = {}, {}
    with pycolmap.Database.open(learned_db) as learned_data, pycolmap.Database.open(sift_db) as sift_data:
        names = {image.image_id: image.name for image in learned_data.read_all_images()}
        sift_ids = {image.name: image.image_id for image in sift_data.read_all_images()}
        offset = {}
        for image_id, name in names.items():
            mine = learned_data.read_keypoints(image_id)[:, :2]
            theirs = sift_data.read_keypoints(sift_ids[name])[:, :2] if sift_data.exists_keypoints(
                sift_ids[name]) else np.zeros((0, 2), np.float32)
            keypoints[name], offset[name] = np.concatenate([mine, theirs]), len(mine)
        pair_ids, found = learned_data.read_all_matches()
        for pair_id, pair_matches in zip(pair_ids, found):
            a, b = pycolmap.pair_id_to_image_pair(pair_id)
            matches[(names[a], names[b])] = np.asarray(pair_matches)
        sift_names = {v: k for k, v in sift_ids.items()}
        wanted = set(pairs) | {(b, a) for a, b in pairs}
        pair_ids, geometries = sift_data.read_two_view_geometries()
        for pair_id, geometry in zip(pair_ids, geometries):
            a, b = (sift_names[i] for i in pycolmap.pair_id_to_image_pair(pair_id))
            inliers = np.asarray(geometry.inlier_matches, dtype=np.int64).reshape(-1, 2)
            if not len(inliers) or (a, b) not in wanted:
                continue
            inliers = inliers + np.array([offset[a], offset[b]])
            if (b, a) in matches:
                a, b, inliers = b, a, inliers[:, ::-1]
            matches[(a, b)] = np.concatenate([matches.get((a, b), np.zeros((0, 2), np.int64)), inliers])
    database.create(target, ingest, camera_groups(photos, bool(cfg["shared_camera"])), cfg["camera_model"])
    database.write_features(target, keypoints, matches)
    token = pycolmap.CancellationToken()
    interruptible("geometric verification", database.verify, target, threads, token, token=token)


def add_sift_tracks(model, matched: set[tuple[str, str]], learned_folder: Path, work: Path, ingest: Path,
                    photos: list[PhotoInput], threshold: int, cfg: dict, log: logging.Logger, threads: int,
                    refine, sift_db: Path | None = None) -> tuple["pycolmap.Reconstruction", str]:
    """The model with SIFT tracks triangulated into it and adjusted (`refine`: the stage's robust
    bundle adjustment), or the model unchanged when that does not hold up, and a sentence on what
    was done. `matched`: the pairs
    the learned features verified (SIFT is matched on those the model ties); `sift_db`: a SIFT
    database already holding features and verified matches (a SIFT attempt's), reused."""
    folder = work / "sift-tracks"
    pairs = tied_pairs(model, matched)
    if sift_db is None:
        sift_db = folder / "sift" / "database.db"
        sift_matches(ingest, photos, threshold, cfg, pairs, sift_db.parent, threads)
    combine(learned_folder / "database.db", sift_db, pairs, folder / "database.db", ingest, photos, cfg, threads)
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = threads or -1
    token = pycolmap.CancellationToken()
    (folder / "model").mkdir(exist_ok=True)
    joined = interruptible("triangulation", pycolmap.triangulate_points, pycolmap.Reconstruction(model),
                           folder / "database.db", ingest, folder / "model", clear_points=True, options=options,
                           cancellation_token=token, token=token)
    before = model.compute_mean_reprojection_error()
    refine(joined)
    after = joined.compute_mean_reprojection_error()
    moved = float(np.median([rotation_angle(model.image(i).cam_from_world().rotation.matrix()
                                            @ joined.image(i).cam_from_world().rotation.matrix().T)
                             for i in joined.reg_image_ids()]))
    note = (f"SIFT tracks on {len(pairs)} photo pairs: {len(joined.points3D)} points ({len(model.points3D)} before), "
            f"mean reprojection error {before:.2f} -> {after:.2f} px, cameras turned {moved:.2f} deg (median)")
    if not after < before or moved > MAX_TURN_DEG:
        return model, note + ": not kept, they do not fit the model"
    return joined, note
