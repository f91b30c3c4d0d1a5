"""Finer tracks for a model built on learned features: each observation aligned to its track's
best view by patch correlation, then one more adjustment.

    model, note = align_tracks(model, ingest, refine)

Learned keypoints carry about 1.4 px of noise on small photos (spot-wild's 480-px JPEGs: its
tracks, triangulated with the true cameras, reproject at 1.42 px median), and for a small object
seen through a narrow view a turn of the camera and a shift of it look alike up to that noise, so
the cameras absorb it (0.87 deg median there). Here every track's observations are moved to where
their image best matches the track's reference view (the one that sees the point largest): the
reference's (2 PATCH_RADIUS + 1)^2 pixels, laid on the plane through the 3-D point facing its
camera, are projected into each photo (so the views' differences in scale and turn are undone) and
shifted within SEARCH_PX to the best normalised cross-correlation (which ignores the photos'
differences in light and exposure), coarse then fine, a parabola giving the last fraction. An
observation moves only where the correlation is MIN_CORRELATION or more and the best shift lies
inside the search. The model is kept as it was when the adjustment that follows raises its
reprojection error or turns its cameras far.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.common.cameras import rotation_angle
from stages.common.images import read_rgb

PATCH_RADIUS = 5  # the pattern is (2 * 5 + 1)^2 reference pixels
SEARCH_PX = 2.0  # an observation moves at most this far (pixels, each axis)
COARSE_STEP, FINE_STEP = 0.5, 0.25  # search steps (pixels): the whole window, then around the best
MIN_CORRELATION = 0.6
MAX_TURN_DEG = 1.0  # the adjustment may turn the cameras this much (median): more is a different model
MAX_ERROR_GROWTH = 1.1  # nor raise the mean reprojection error more than this
CHUNK = 512  # observations sampled at once (memory: CHUNK x 81 x 121 points)


def _gray(ingest: Path, name: str):
    import torch

    rgb = read_rgb(ingest / name).astype(np.float32) / 255.0
    return torch.from_numpy(rgb @ np.array([0.299, 0.587, 0.114], np.float32))[None, None]


def _sample(image, xy):
    """Bilinear samples of image [1, 1, H, W] at COLMAP pixel coordinates xy [..., 2] (pixel
    centres at +0.5; numpy or a float32 tensor), as a tensor of xy's leading shape; NaN outside.
    (Not stages.common.images.sample_bilinear: that one clamps at the border and gathers in float64
    numpy, too slow for the hundreds of millions of samples a capture's search takes.)"""
    import torch
    import torch.nn.functional as F

    height, width = image.shape[-2:]
    xy = torch.as_tensor(xy, dtype=torch.float32)
    scale = torch.tensor([2.0 / width, 2.0 / height])
    grid = (xy.reshape(1, -1, 1, 2) * scale - 1.0)
    values = F.grid_sample(image, grid, align_corners=False).view(xy.shape[:-1])
    outside = ((grid.abs() > 1.0 - scale / 2).any(-1)).view(xy.shape[:-1])
    return values.masked_fill(outside, float("nan"))


def _correlation(candidates, reference):
    """Normalised cross-correlation of candidates [N, K, P] with reference [N, P]: [N, K] (the
    reference centred once; the candidates' means and norms from their sums, without copies)."""
    import torch

    size = candidates.shape[-1]
    centred = reference - reference.mean(-1, keepdim=True)
    dot = torch.einsum("nkp,np->nk", candidates, centred)
    total, squares = candidates.sum(-1), candidates.square().sum(-1)
    spread = (squares - total.square() / size).clamp_min(0.0).sqrt()
    return dot / (spread * centred.norm(dim=-1, keepdim=True) + 1e-6)


def _parabola(left, centre, right) -> np.ndarray:
    """The fractional offset (in steps, within +-0.5) of a parabola's peak through three values."""
    curve = left - 2 * centre + right
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(curve < 0, 0.5 * (left - right) / curve, 0.0)
    return np.clip(np.nan_to_num(shift), -0.5, 0.5)


def _scores(image, pattern, reference, shifts: np.ndarray) -> np.ndarray:
    """Correlations [N, K] of the patterns [N, P, 2] (float32 tensor) moved by shifts [N, K, 2]
    with the reference [N, P]."""
    import torch

    moved = pattern[:, None] + torch.as_tensor(shifts, dtype=torch.float32)[:, :, None]  # [N, K, P, 2]
    return torch.nan_to_num(_correlation(_sample(image, moved), reference), nan=-1.0).numpy()


def _best_shift(image, pattern: np.ndarray, reference) -> tuple[np.ndarray, np.ndarray]:
    """For patterns [N, P, 2] (image points) and reference values [N, P]: the shift [N, 2] that
    correlates best (COARSE_STEP over the search window, then FINE_STEP around the best, then a
    parabola) and its correlation [N] (-1 where the coarse best is at the edge of the window)."""
    coarse = np.arange(-SEARCH_PX, SEARCH_PX + 1e-9, COARSE_STEP)
    grid = np.stack(np.meshgrid(coarse, coarse, indexing="xy"), -1).reshape(-1, 2)  # [K, 2]
    n = len(pattern)
    first = grid[_scores(image, pattern, reference, np.tile(grid, (n, 1, 1))).argmax(1)]
    local = np.stack(np.meshgrid(*(np.array([-FINE_STEP, 0.0, FINE_STEP]),) * 2, indexing="xy"), -1).reshape(-1, 2)
    score = _scores(image, pattern, reference, first[:, None] + local[None])  # [N, 9], centre at 4
    best = score.argmax(1)
    shift = first + local[best]
    rows, k = score.reshape(-1, 3, 3), np.arange(n)  # [N, y, x]
    by, bx = best // 3, best % 3
    shift[:, 0] += np.where(bx == 1, FINE_STEP * _parabola(rows[k, by, np.maximum(bx - 1, 0)], rows[k, by, bx],
                                                           rows[k, by, np.minimum(bx + 1, 2)]), 0.0)
    shift[:, 1] += np.where(by == 1, FINE_STEP * _parabola(rows[k, np.maximum(by - 1, 0), bx], rows[k, by, bx],
                                                           rows[k, np.minimum(by + 1, 2), bx]), 0.0)
    inside = np.all(np.abs(first) < SEARCH_PX, axis=1)
    return shift, np.where(inside, score[k, best], -1.0)


def align_tracks(model, ingest: Path, refine) -> tuple["pycolmap.Reconstruction", str]:
    """The model with its observations aligned and adjusted (`refine`: the stage's robust bundle
    adjustment), or the model unchanged when that does not hold up, and a sentence on what was done."""
    import pycolmap
    import torch

    aligned = pycolmap.Reconstruction(model)
    ids = list(aligned.reg_image_ids())
    images = {i: aligned.image(i) for i in ids}
    cameras = {i: aligned.camera(images[i].camera_id) for i in ids}
    centres = {i: images[i].projection_center() for i in ids}
    rotations = {i: images[i].cam_from_world().rotation.matrix() for i in ids}
    offsets = np.arange(-PATCH_RADIUS, PATCH_RADIUS + 1, dtype=np.float64)
    gx, gy = (a.reshape(-1) for a in np.meshgrid(offsets, offsets, indexing="xy"))  # [P]

    jobs: dict[int, list] = {}  # target image -> [(point xyz, pattern on the plane [P, 3], track, obs index)]
    wanted: dict[int, list] = {}  # reference image -> [(track, reference xy)]
    for track, point in enumerate(aligned.points3D.values()):
        elements = [(e.image_id, e.point2D_idx) for e in point.track.elements]
        if len(elements) < 2:
            continue
        x = point.xyz
        reach = [cameras[i].mean_focal_length() / np.linalg.norm(centres[i] - x) for i, _ in elements]
        ref = elements[int(np.argmax(reach))]
        pixel = 1.0 / max(reach)  # world size of one reference pixel at the point
        u, v = rotations[ref[0]][0], rotations[ref[0]][1]  # the reference camera's x, y axes
        plane = x + pixel * (gx[:, None] * u + gy[:, None] * v)  # [P, 3]
        wanted.setdefault(ref[0], []).append((track, np.asarray(images[ref[0]].points2D[ref[1]].xy)))
        for image_id, index in elements:
            if (image_id, index) != ref:
                jobs.setdefault(image_id, []).append((x, plane, track, index))

    gray = {i: _gray(ingest, images[i].name) for i in ids}
    patch = np.stack([gx, gy], -1)  # [P, 2]
    references = {}
    for image_id, items in wanted.items():
        values = _sample(gray[image_id], np.stack([xy for _, xy in items])[:, None] + patch[None])
        references.update({track: values[k] for k, (track, _) in enumerate(items)})
    moved, tried = [], 0
    for target, items in jobs.items():
        image, camera = images[target], cameras[target]
        pose = image.cam_from_world()
        for start in range(0, len(items), CHUNK):
            chunk = items[start:start + CHUNK]
            tried += len(chunk)
            world = np.stack([plane for _, plane, _, _ in chunk])  # [N, P, 3]
            points = np.stack([x for x, _, _, _ in chunk])  # [N, 3]
            in_cam = np.einsum("ij,npj->npi", rotations[target], world) + pose.translation
            projected = np.asarray(camera.img_from_cam(in_cam.reshape(-1, 3))).reshape(world.shape[:2] + (2,))
            centre = np.asarray(camera.img_from_cam(points @ rotations[target].T + pose.translation))  # [N, 2]
            observed = np.stack([np.asarray(image.points2D[index].xy) for *_, index in chunk])
            pattern = projected - centre[:, None] + observed[:, None]  # the pattern around the observation
            reference = torch.stack([references[track] for _, _, track, _ in chunk])
            shift, score = _best_shift(gray[target], torch.from_numpy(pattern).float(), reference)
            good = score >= MIN_CORRELATION
            for k in np.flatnonzero(good):
                image.points2D[chunk[k][3]].xy = observed[k] + shift[k]
            moved.extend(np.hypot(*shift[good].T).tolist())
    before = model.compute_mean_reprojection_error()
    refine(aligned)
    after = aligned.compute_mean_reprojection_error()
    turned = float(np.median([rotation_angle(model.image(i).cam_from_world().rotation.matrix()
                                             @ aligned.image(i).cam_from_world().rotation.matrix().T) for i in ids]))
    note = (f"tracks aligned by patch correlation: {len(moved)} of {tried} observations moved "
            f"({np.median(moved) if moved else 0.0:.2f} px median), mean reprojection error {before:.2f} -> "
            f"{after:.2f} px, cameras turned {turned:.2f} deg (median)")
    if not moved or after > MAX_ERROR_GROWTH * before or turned > MAX_TURN_DEG:
        return model, note + ": not kept"
    return aligned, note
