"""Where the object is: scene normalisation for SfM results, bounds for imported cameras.

SfM's frame is arbitrary (position, scale, rotation). The pipeline's world puts the object at the
origin with unit radius and +Y up (glTF), so downstream grids and the exported model need no
further conversion. Imported cameras keep their own world; only the object's bounds are found.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from stages.errors import NeroicError
from stages.common.cameras import Frame, project

CARVE_RESOLUTION = 48  # voxels per side of each visual-hull pass
SPARE_MISS_FRAMES = 6  # from this many frames on, a hull cell may fall outside one silhouette
# ... and outside this share of the silhouettes that see it: masks that miss part of the object in
# a quarter of the photos (skull01 with every fourth mask cut in half) carved the others' hull to
# nothing and a right model was rejected.
SPARE_MISS_SHARE = 1 / 3
MAX_OUTSIDE = 0.2  # a sparse point outside the silhouettes in more of its photos is not the object


def geometric_median(points: np.ndarray, iterations: int = 50) -> np.ndarray:
    """[3] the point minimising the summed distance to points [N, 3] (Weiszfeld). Unlike the
    per-axis median it does not depend on how the SfM frame happens to be rotated."""
    centre = points.mean(0)
    for _ in range(iterations):
        weights = 1.0 / np.maximum(np.linalg.norm(points - centre, axis=1), 1e-12)
        centre = (points * weights[:, None]).sum(0) / weights.sum()
    return centre


def inlier_points(points: np.ndarray) -> np.ndarray:
    """[N] bool: all but the max(5, N/500) points farthest from the geometric median (as the
    paper trims SfM outliers), never more than a tenth of them."""
    n = len(points)
    drop = min(max(5, n // 500), n // 10)
    keep = np.ones(n, dtype=bool)
    if drop:
        dist = np.linalg.norm(points - geometric_median(points), axis=1)
        keep[np.argsort(dist)[n - drop:]] = False
    return keep


def enclosing_sphere(points: np.ndarray, iterations: int = 1000) -> tuple[np.ndarray, float]:
    """Centre [3] and radius of a near-minimal sphere around points [N, 3] (Badoiu-Clarkson:
    step towards the farthest point by 1/(k+1)); it contains every point, and like the points
    it does not depend on how the SfM frame is rotated."""
    centre = points[0].astype(float)
    for k in range(1, iterations + 1):
        far = points[np.argmax(((points - centre) ** 2).sum(1))]
        centre = centre + (far - centre) / (k + 1)
    return centre, float(np.linalg.norm(points - centre, axis=1).max())


def sphere_of_points(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre [3] and radius of the object: the sphere around the sparse points minus outliers."""
    if len(points) < 4:
        raise NeroicError(f"only {len(points)} sparse point(s): cannot tell where the object is",
                          hint="add photos with more overlap, or check the masks")
    centre, radius = enclosing_sphere(points[inlier_points(points)])
    if radius <= 0:
        raise NeroicError("all sparse points coincide: cannot tell the object's size")
    return centre, radius


def up_from_cameras(frames: list[Frame]) -> tuple[np.ndarray, str]:
    """World up [3] from the cameras, and which evidence gave it.

    People hold cameras upright, so the average camera up (+Y of an OpenGL camera, -Y of an
    OpenCV one) points up; when the cameras circle the object, the normal of the plane through
    their centres is a steadier estimate, oriented by that average.
    """
    ups = np.array([np.asarray(f.c2w)[:3, 1] for f in frames])
    mean_up = ups.mean(0)
    centres = np.array([f.centre for f in frames])
    _, s, vt = np.linalg.svd(centres - centres.mean(0))
    planar = len(frames) >= 3 and s[1] > 0.2 * s[0] and s[2] < 0.5 * s[1]
    if planar:
        normal = vt[2] if vt[2] @ mean_up >= 0 else -vt[2]
        if np.linalg.norm(mean_up) < 0.3 or normal @ mean_up > 0.5 * np.linalg.norm(mean_up):
            return normal, "plane of the camera centres"
    if np.linalg.norm(mean_up) < 1e-6:
        raise NeroicError("the cameras' up directions cancel out: cannot tell which way is up")
    return mean_up / np.linalg.norm(mean_up), "average camera up vector"


def world_from_sfm(frames: list[Frame], points: np.ndarray) -> tuple[np.ndarray, dict]:
    """Similarity [4, 4] world <- SfM: object centre to the origin, radius 1, up to +Y, and the
    first camera on the +Z side (so the first photo shows the model's glTF front)."""
    centre, radius = sphere_of_points(points)
    y, up_source = up_from_cameras(frames)
    z = frames[0].centre - centre
    z -= (z @ y) * y
    if np.linalg.norm(z) < 1e-9 * radius:  # first camera straight above or below: any azimuth
        z = np.cross(y, np.eye(3)[np.argmin(np.abs(y))])
    z /= np.linalg.norm(z)
    x = np.cross(y, z)
    rotation = np.stack([x, y, z])  # rows: world axes in SfM coordinates
    T = np.eye(4)
    T[:3, :3] = rotation / radius
    T[:3, 3] = -rotation @ centre / radius
    return T, {"up_from": up_source, "sfm_center": centre.tolist(), "sfm_radius": radius}


def axes_centre(frames: list[Frame]) -> np.ndarray:
    """[3] the point nearest (least squares) to every camera's optical axis: what they look at."""
    A, b = np.zeros((3, 3)), np.zeros(3)
    for f in frames:
        d = -np.asarray(f.c2w)[:3, 2]  # OpenGL cameras look along -Z
        d /= np.linalg.norm(d)
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ f.centre
    if np.linalg.cond(A) > 1e6:
        raise NeroicError("the cameras all look the same way: cannot find the object they look at",
                          hint="photograph the object from around it")
    return np.linalg.solve(A, b)


def _carve(frames: list[Frame], masks: list[np.ndarray], lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, float]:
    """Voxel centres [M, 3] inside every silhouette that sees them (and seen by half the views
    or more) on a CARVE_RESOLUTION^3 grid over the box lo..hi, and the voxel size."""
    pts, voxel = _cell_centres(lo, hi)
    seen = np.zeros(len(pts), dtype=np.int32)
    carved = np.zeros(len(pts), dtype=bool)
    for frame, mask in zip(frames, masks):
        inside, px = _pixels(pts, frame)
        seen += inside
        carved[np.flatnonzero(inside)] |= ~mask[px[:, 1], px[:, 0]]
    kept = ~carved & (seen >= max(1, (len(frames) + 1) // 2))
    return pts[kept], voxel


def _cell_centres(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, float]:
    """Centres [CARVE_RESOLUTION^3, 3] of the cells of the box lo..hi, and a cell's diagonal."""
    step = (hi - lo) / CARVE_RESOLUTION
    axes = [lo[i] + (np.arange(CARVE_RESOLUTION) + 0.5) * step[i] for i in range(3)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3), float(np.linalg.norm(step))


def silhouette_with_slack(mask: np.ndarray) -> np.ndarray:
    """Bool object mask [H, W] grown by 0.5 % of its size (at least a pixel): room for small pose
    and mask errors when points or voxels are tested against it."""
    return _dilate(mask, max(1, round(0.005 * max(mask.shape))))


def object_points(points: np.ndarray, track_lengths: np.ndarray, frames: list[Frame],
                  silhouettes: list[np.ndarray]) -> np.ndarray:
    """[N] bool: sparse points that belong to the object. Points seen in only two photos are
    dropped (when most are seen in more: their depth is the least certain), and so are points
    that land outside the silhouettes (`silhouette_with_slack` masks, one per frame) in more
    than MAX_OUTSIDE of the photos they fall in: matches on the background or across the outline."""
    keep = track_lengths >= 3 if (track_lengths >= 3).mean() >= 0.5 else np.ones(len(points), dtype=bool)
    inside, seen = silhouette_votes(points, frames, silhouettes)
    return keep & ((seen & ~inside).sum(0) <= MAX_OUTSIDE * seen.sum(0))


def silhouette_votes(points: np.ndarray, frames: list[Frame], silhouettes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """([F, N] bool: point n lands inside frame f's silhouette (`silhouette_with_slack`), [F, N]
    bool: it lands in frame f's image at all (in front of the camera))."""
    inside = np.zeros((len(frames), len(points)), dtype=bool)
    seen = np.zeros_like(inside)
    for k, (frame, silhouette) in enumerate(zip(frames, silhouettes)):
        hit, px = _pixels(points, frame)
        seen[k] = hit
        inside[k, np.flatnonzero(hit)] = silhouette[px[:, 1], px[:, 0]]
    return inside, seen


def object_agreement(inside: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """[F] for each frame, the share of the object's points in its view that land inside its
    silhouette, from `silhouette_votes`. The object's points are those inside most of the
    silhouettes they land in: a static background (wallpaper, a table) gives points outside every
    mask that a right model has too, so they say nothing about the cameras; points of a model
    built on false matches land inside some masks and outside others."""
    majority = object_majority(inside, seen)
    return (inside & majority).sum(1) / np.maximum((seen & majority).sum(1), 1)


def object_majority(inside: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """[N] bool: the points inside most of the silhouettes they land in (the object's)."""
    return inside.sum(0) >= 0.5 * np.maximum(seen.sum(0), 1)


def points_in_silhouettes(points: np.ndarray, frames: list[Frame], silhouettes: list[np.ndarray]) -> np.ndarray:
    """[F] for each frame, the fraction of the object's points [N, 3] that land inside its
    silhouette (`silhouette_with_slack`; a point off the image or behind the camera counts as
    outside). The object lies inside every silhouette, so a right camera scores near 1 whichever
    photos found the points (less where the photo crops the object or its mask misses a part); a
    misplaced camera, or a whole model built on false matches, scores lower (on a rendered
    capture a depth-reversed model scored 0.75 in the median photo, the right one 1.00)."""
    inside, _ = silhouette_votes(points, frames, silhouettes)
    return inside.sum(1) / max(1, len(points))


def hull_recall_without_each(frames: list[Frame], silhouettes: list[np.ndarray], lo: np.ndarray, hi: np.ndarray,
                             spare_shares: tuple[float, ...] = (SPARE_MISS_SHARE,)) -> np.ndarray:
    """[S, F] for each share in `spare_shares` and each frame, the fraction of its silhouette that
    the visual hull of the other frames covers when projected into it (the hull carved once on a
    CARVE_RESOLUTION^3 grid over the box lo..hi, one silhouette's miss forgiven when there are
    SPARE_MISS_FRAMES or more, or that share of those that see a cell, so that bad masks or one
    camera do not carve the others' hulls). A mask that misses a part of the object still scores
    high (the others' hull is larger); a camera placed wrong sees the others' hull beside its mask."""
    cells, voxel = _cell_centres(lo, hi)
    seen = np.zeros((len(frames), len(cells)), dtype=bool)
    carved = np.zeros_like(seen)
    for k, (frame, silhouette) in enumerate(zip(frames, silhouettes)):
        inside, px = _pixels(cells, frame)
        seen[k] = inside
        carved[k, np.flatnonzero(inside)] = ~silhouette[px[:, 1], px[:, 0]]
    seen_by, carved_by = seen.sum(0), carved.sum(0)
    least = 1 if len(frames) >= SPARE_MISS_FRAMES else 0
    recall = np.zeros((len(spare_shares), len(frames)))
    for k, (frame, silhouette) in enumerate(zip(frames, silhouettes)):
        others = seen_by - seen[k]
        for j, share in enumerate(spare_shares):
            spare = np.maximum(least, np.floor(share * others))
            hull = cells[(carved_by - carved[k] <= spare) & (others >= max(1, len(frames) // 2))]
            inside, px = _pixels(hull, frame)
            if not inside.any():
                continue
            depth = np.linalg.norm(hull[inside] - frame.centre, axis=1)
            drawn = np.zeros_like(silhouette)
            drawn[px[:, 1], px[:, 0]] = True
            drawn = _dilate(drawn, int(np.ceil(0.5 * frame.fl_x * voxel / depth.min())))
            recall[j, k] = (drawn & silhouette).sum() / max(1, silhouette.sum())
    return recall


def bounds_from_masks(frames: list[Frame], silhouettes: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """Centre [3] and radius of a sphere holding the object, in the cameras' world: a coarse visual
    hull carved from the silhouettes (`silhouette_with_slack`, frames at their size) around the
    point the cameras look at. A sphere rather than the hull: downstream carves its own, finer one."""
    centre = axes_centre(frames)
    reach = min(float(np.linalg.norm(f.centre - centre)) for f in frames)
    hull, voxel = _carve(frames, silhouettes, centre - reach, centre + reach)
    if len(hull) == 0:
        raise NeroicError("the imported cameras do not agree with the masks: no point lies inside them all",
                          hint="transform_matrix must be camera-to-world with OpenGL axes (camera looks "
                               "along -Z); check the file names match the photos")
    pad = voxel  # one voxel diagonal around the coarse hull
    hull, voxel = _carve(frames, silhouettes, hull.min(0) - pad, hull.max(0) + pad)
    if len(hull) == 0:
        raise NeroicError("the imported cameras do not agree with the masks (empty visual hull)")
    centre, radius = enclosing_sphere(hull)
    return centre, radius + 0.5 * voxel


def _pixels(points: np.ndarray, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    """Which points [N, 3] land in the frame's image ([N] bool), and their pixels [M, 2] (x, y).

    Distortion polynomials fold far-off points back into the image: a projection counts only
    where the undistorted (pinhole) projection lands near the image too.
    """
    pinhole, depth = project(points, replace(frame, k1=0.0, k2=0.0, p1=0.0, p2=0.0))
    uv, _ = project(points, frame)
    size = np.array([frame.w, frame.h])
    near = (depth > 0) & np.all((pinhole > -0.2 * size) & (pinhole < 1.2 * size), axis=1)
    inside = near & np.all((uv >= 0) & (uv < size), axis=1)
    return inside, np.floor(uv[inside]).astype(int)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Bool mask [H, W] grown by `radius` pixels (a square, done as two 1-D passes)."""
    out = mask.copy()
    for axis in (0, 1):
        src, n = out.copy(), out.shape[axis]
        for d in range(1, min(radius, n - 1) + 1):
            lead = [slice(None)] * 2
            lag = [slice(None)] * 2
            lead[axis], lag[axis] = slice(d, None), slice(None, n - d)
            out[tuple(lead)] |= src[tuple(lag)]
            out[tuple(lag)] |= src[tuple(lead)]
    return out
