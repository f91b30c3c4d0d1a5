"""Features and verified matches in COLMAP's database: SIFT (COLMAP's own) or learned features.

    extract_and_match(kind, ingest, photos, threshold, cfg, work, log, progress, device)

Both restrict features to each photo's mask grown by `mask_dilation` px (features on the
background would tie photos by what is behind the object), put photos in camera groups with
their EXIF focal priors (camera_groups.py) and leave two-view-verified matches for the mapper.
- "sift": COLMAP's SIFT, exhaustive matching up to `exhaustive_max` photos, sequential beyond.
- learned ("xfeat", "aliked", "disk"; learned.py): features of the object's crop at
  `feature_size` px, none within `edge_margin` px of the mask's edge (on a silhouette a feature
  is no fixed point of the object: on a rendered capture such features left the cameras 1-2
  degrees off, or built a depth-reversed model), LightGlue on each photo's `match_neighbours`
  most similar photos (pairs.py), COLMAP's verification.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pycolmap
from PIL import Image

from stages.common.images import read_rgb
from stages.poses import database, learned
from stages.poses.camera_groups import camera_groups, describe
from stages.poses.photos import PhotoInput, read_mask
from stages.poses.colmap_calls import interruptible
from stages.poses.pairs import neighbourhood, similar_pairs, similarity, upright_turns

MIN_LEARNED_MATCHES = 15  # LightGlue matches below this are not worth verifying
SEARCH_ANGLES = (0, 90, 180, 270)  # turns tried to find a common up
SEARCH_KEYPOINTS = 256  # per photo and turn, at half the feature size: enough to rank photo pairs
AROUND_FACTOR = 2  # a neighbourhood match takes in twice match_neighbours of each photo's most similar photos


def feature_region(photo: PhotoInput, threshold: int, dilation: int) -> np.ndarray:
    """[H, W] bool: the object mask grown by `dilation` pixels (shrunk when negative; a square)."""
    import cv2

    mask = read_mask(photo, threshold).astype(np.uint8)
    if dilation:
        kernel = np.ones((2 * abs(dilation) + 1,) * 2, np.uint8)
        mask = (cv2.dilate if dilation > 0 else cv2.erode)(mask, kernel, borderType=cv2.BORDER_REPLICATE)
    return mask > 0


def write_sift_masks(photos: list[PhotoInput], threshold: int, dilation: int, folder: Path) -> None:
    """COLMAP masks `<image name>.png` (0 = ignore): the feature regions."""
    for photo in photos:
        target = folder / f"{photo.image_rel}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(feature_region(photo, threshold, dilation).astype(np.uint8) * 255).save(target)


def extract_sift(ingest: Path, photos: list[PhotoInput], threshold: int, cfg: dict, db_path: Path, masks: Path,
                 threads: int, first_octave: int | None = None) -> None:
    """SIFT features of `photos` inside their feature regions (COLMAP masks written to `masks`)
    into the database; `first_octave` None keeps COLMAP's (-1: the photo upsampled twice)."""
    shutil.rmtree(masks, ignore_errors=True)
    write_sift_masks(photos, threshold, int(cfg["mask_dilation"]), masks)
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = cfg["camera_model"]
    reader.mask_path = str(masks)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.sift.max_num_features = int(cfg["max_features"])
    if first_octave is not None:
        extraction.sift.first_octave = first_octave
    extraction.num_threads = threads or -1
    token = pycolmap.CancellationToken()
    interruptible("SIFT extraction", pycolmap.extract_features, db_path, ingest,
                  image_names=[p.image_rel for p in photos], camera_mode=pycolmap.CameraMode.PER_IMAGE,
                  reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu,
                  cancellation_token=token, token=token)


def sift_features_and_matches(ingest: Path, photos: list[PhotoInput], threshold: int, cfg: dict,
                              work: Path, log: logging.Logger, threads: int) -> None:
    db_path = work / "database.db"
    masks = work / "sift_masks"
    extract_sift(ingest, photos, threshold, cfg, db_path, masks, threads)
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = threads or -1
    verification = database.verification_options()
    token = pycolmap.CancellationToken()
    if len(photos) <= int(cfg["exhaustive_max"]):
        interruptible("exhaustive matching", pycolmap.match_exhaustive, db_path, matching_options=matching,
                      verification_options=verification, device=pycolmap.Device.cpu, cancellation_token=token,
                      token=token)
    else:
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = int(cfg["sequential_overlap"])
        log.info("%d photos > exhaustive_max %d: sequential matching (overlap %d), in file-name order",
                 len(photos), cfg["exhaustive_max"], pairing.overlap)
        interruptible("sequential matching", pycolmap.match_sequential, db_path, matching_options=matching,
                      pairing_options=pairing, verification_options=verification, device=pycolmap.Device.cpu,
                      cancellation_token=token, token=token)


def learned_features_and_matches(kind: str, photos: list[PhotoInput], threshold: int, cfg: dict,
                                 work: Path, log: logging.Logger, progress, device: str, threads: int,
                                 around: set[str] | None = None) -> None:
    """`around` (image names): match only those photos and each one's AROUND_FACTOR x
    `match_neighbours` most similar photos (by the quick search descriptors of all photos)."""
    model = learned.load_model(kind, int(cfg["max_keypoints"]), device)
    size = int(cfg["feature_size"])
    regions = []
    for photo in photos:
        regions.append((read_rgb(photo.image), feature_region(photo, threshold, int(cfg["mask_dilation"])),
                        feature_region(photo, threshold, -int(cfg["edge_margin"]))))
    score = None
    degrees = [0.0] * len(photos)
    if cfg["upright"] == "auto" or around:  # each photo small and quick (at 4 turns to find a common up)
        angles = SEARCH_ANGLES if cfg["upright"] == "auto" else SEARCH_ANGLES[:1]
        turned = [[learned.extract(model, rgb, region, size // 2, inside, angle, SEARCH_KEYPOINTS).descriptors
                   for angle in angles]
                  for rgb, region, inside in progress(regions, desc=f"{kind} search", unit="photo")]
        turns, score = upright_turns(turned)
        degrees = [angles[t] for t in turns]
        if any(degrees):
            log.info("%s: photos turned to a common up: %s", kind,
                     ", ".join(f"{p.name} {d:.0f} deg" for p, d in zip(photos, degrees) if d))
    chosen = list(range(len(photos)))
    if around:
        chosen = neighbourhood(score, [i for i, p in enumerate(photos) if p.image_rel in around],
                               AROUND_FACTOR * int(cfg["match_neighbours"]))
    features = [learned.extract(model, regions[i][0], regions[i][1], size=size, inside=regions[i][2],
                                degrees=degrees[i]) for i in progress(chosen, desc=f"{kind} features", unit="photo")]
    if score is None:
        score = similarity([f.descriptors for f in features])
    else:
        score = score[np.ix_(chosen, chosen)]
    pairs = similar_pairs(score, int(cfg["match_neighbours"]))
    scope = f"around {len(around)} photo(s): {len(chosen)} photos, " if around else ""
    log.info("%s: %s%d keypoints per photo (median), LightGlue on %d of %d pairs", kind, scope,
             int(np.median([len(f.keypoints) for f in features])), len(pairs), len(chosen) * (len(chosen) - 1) // 2)
    names = [photos[i].image_rel for i in chosen]
    matches = {}
    for i, j in progress(pairs, desc=f"{kind} matching", unit="pair"):
        found = learned.match(model, features[i], features[j])
        if len(found) >= MIN_LEARNED_MATCHES:
            matches[(names[i], names[j])] = found
    database.write_features(work / "database.db", {name: f.keypoints for name, f in zip(names, features)}, matches)
    token = pycolmap.CancellationToken()
    interruptible("geometric verification", database.verify, work / "database.db", threads, token, token=token)


def extract_and_match(kind: str, ingest: Path, photos: list[PhotoInput], threshold: int, cfg: dict, work: Path,
                      log: logging.Logger, progress, device: str = "cpu", threads: int = 0,
                      around: set[str] | None = None) -> None:
    """Fill work/database.db with the photos (in camera groups), features and verified matches
    (`threads`: COLMAP's CPU threads, 0 = all cores; torch's are set by the runner); `around`
    (learned features only): the photos whose neighbourhood alone is matched."""
    groups = camera_groups(photos, bool(cfg["shared_camera"]))
    log.info("%s", describe(groups))
    database.create(work / "database.db", ingest, groups, cfg["camera_model"])
    if kind == "sift":
        sift_features_and_matches(ingest, photos, threshold, cfg, work, log, threads)
    else:
        learned_features_and_matches(kind, photos, threshold, cfg, work, log, progress, device, threads, around)

