"""Pose accuracy of a workdir's cameras against a ground truth.

    python -m bench.poses_accuracy WORKDIR TRUTH [--object-size S] [--json OUT]

TRUTH is a transforms.json, a Middlebury `*_par.txt` (one line per photo: name, K, R, t with
x = K (R X + t)) or an LLFF poses_bounds.npy (rows in sorted file-name order of the workdir's
photos). The estimated camera centres are fitted to the true ones by a similarity (Umeyama, fitted
again without the cameras it places more than 3x the median error off), then
each photo gets a rotation error (degrees) and a centre error, as a fraction of the true cameras'
spread (mean distance from their centroid) and, given `--object-size` (in the truth's units), of
the object's size. The rotation error is also given with both cameras re-expressed with their
principal points at the image centres (`centred_rotation`): SfM cannot observe a principal point
and keeps it there, so that figure is what a reconstruction can reach without a calibration.
`score_workdir` is what other benchmarks call.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from stages.common.cameras import Frame, c2w_from_w2c, frame_stem, read_transforms, robust_similarity, rotation_angle
from stages.poses.importers import read_poses_bounds

MIN_COMMON = 3  # a similarity needs three camera centres


def read_middlebury(path: Path) -> dict[str, Frame]:
    """Cameras of a Middlebury multi-view `*_par.txt`; the image size comes from the photo beside it.
    Its pixel coordinates put the top-left pixel's centre at (0, 0); ours at (0.5, 0.5)."""
    lines = Path(path).read_text().split("\n")
    frames = {}
    for line in lines[1:]:  # the first line is the count
        fields = line.split()
        if len(fields) != 22:
            continue
        name, values = fields[0], np.array([float(v) for v in fields[1:]])
        K, R, t = values[:9].reshape(3, 3), values[9:18].reshape(3, 3), values[18:]
        with Image.open(Path(path).parent / name) as im:
            w, h = im.size
        frames[frame_stem(name)] = Frame(stem=frame_stem(name), c2w=c2w_from_w2c(R, t), fl_x=K[0, 0], fl_y=K[1, 1],
                                         cx=K[0, 2] + 0.5, cy=K[1, 2] + 0.5, w=w, h=h, file_path=name)
    return frames


def photo_names(workdir: Path) -> list[str]:
    """The user's file names of the photos ingest read, in sorted order."""
    data = json.loads((Path(workdir) / "ingest" / "photos.json").read_text())
    return sorted(p["name"] for p in data["photos"])


def read_truth(path: Path, workdir: Path | None = None) -> dict[str, Frame]:
    """stem -> true camera, from any of the three formats (LLFF needs the workdir's photo names)."""
    path = Path(path)
    if path.suffix == ".npy":
        if workdir is None:
            raise ValueError("an LLFF poses_bounds.npy needs the workdir (its rows follow the photos' names)")
        return {f.stem: f for f in read_poses_bounds(path, photo_names(workdir))}
    if path.name.endswith("_par.txt"):
        return read_middlebury(path)
    return {f.stem: f for f in read_transforms(path, roots=[path.parent.parent])}


def centred_rotation(frame: Frame) -> np.ndarray:
    """[3, 3] camera-to-world rotation of the camera with its principal point at the image centre
    that sees the same rays as `frame` near that centre. SfM without a calibration fixes the
    principal point at the centre (it is not observable), so a truth calibrated elsewhere differs
    by this turn even for a perfect reconstruction: the dino's is 40 px off at f = 3310 px, 0.68 deg."""
    axis = np.array([(frame.w / 2 - frame.cx) / frame.fl_x, -(frame.h / 2 - frame.cy) / frame.fl_y, -1.0])
    axis /= np.linalg.norm(axis)  # OpenGL camera axes: the ray through the centre
    forward = np.array([0.0, 0.0, -1.0])
    v, c = np.cross(forward, axis), float(forward @ axis)
    V = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return frame.c2w[:3, :3] @ (np.eye(3) + V + V @ V / (1.0 + c))  # the turn taking forward to axis


def score(estimated: dict[str, Frame], truth: dict[str, Frame], total: int | None = None,
          object_size: float | None = None) -> dict:
    """Errors of the estimated cameras after the similarity that best maps their centres onto the
    true ones: per photo and summarised (median, max). `total`: photos given to the pipeline."""
    stems = sorted(set(estimated) & set(truth))
    total = total if total is not None else len(truth)
    result: dict = {"posed": len(estimated), "scored": len(stems), "total": total,
                    "missing": sorted(set(truth) - set(estimated))}
    if len(stems) < MIN_COMMON:
        return result
    est = np.array([estimated[s].centre for s in stems])
    true = np.array([truth[s].centre for s in stems])
    T, inliers = robust_similarity(est, true)
    scale = np.cbrt(np.linalg.det(T[:3, :3]))
    align = T[:3, :3] / scale
    rotation = [rotation_angle(truth[s].c2w[:3, :3].T @ align @ estimated[s].c2w[:3, :3]) for s in stems]
    centred = [rotation_angle(centred_rotation(truth[s]).T @ align @ centred_rotation(estimated[s])) for s in stems]
    centre = np.linalg.norm(est @ T[:3, :3].T + T[:3, 3] - true, axis=1)
    spread = float(np.linalg.norm(true - true.mean(0), axis=1).mean())
    per_photo = {s: {"rotation_deg": round(r, 4), "rotation_centred_deg": round(rc, 4),
                     "centre_of_spread": round(float(c / spread), 5)}
                 for s, r, rc, c in zip(stems, rotation, centred, centre)}
    if object_size:
        for s, c in zip(stems, centre):
            per_photo[s]["centre_of_object"] = round(float(c / object_size), 5)
    result.update({
        "rotation_deg": {"median": float(np.median(rotation)), "max": float(np.max(rotation))},
        "rotation_centred_deg": {"median": float(np.median(centred)), "max": float(np.max(centred))},
        "centre_of_spread": {"median": float(np.median(centre) / spread), "max": float(centre.max() / spread)},
        "scale": float(scale), "fitted_on": int(inliers.sum()), "per_photo": per_photo})
    if object_size:
        result["centre_of_object"] = {"median": float(np.median(centre) / object_size),
                                      "max": float(centre.max() / object_size)}
    return result


def score_workdir(workdir: Path, truth_path: Path, object_size: float | None = None) -> dict:
    """Score WORKDIR/poses/transforms.json against a ground truth file (see the module's doc)."""
    workdir = Path(workdir)
    estimated = {f.stem: f for f in read_transforms(workdir / "poses" / "transforms.json", roots=[workdir])}
    truth = read_truth(truth_path, workdir)
    photos = workdir / "ingest" / "photos.json"
    total = len(json.loads(photos.read_text())["photos"]) if photos.exists() else None
    return score(estimated, truth, total, object_size)


def summary_line(result: dict) -> str:
    """One line: posed / total, rotation and centre errors."""
    line = f"{result['posed']}/{result['total']} posed"
    if "rotation_deg" in result:
        r, c = result["rotation_deg"], result["centre_of_spread"]
        rc = result["rotation_centred_deg"]
        line += (f", rotation error median {r['median']:.3f} max {r['max']:.3f} deg (principal points at the image "
                 f"centres: {rc['median']:.3f} / {rc['max']:.3f}), centre error median "
                 f"{100 * c['median']:.2f} % max {100 * c['max']:.2f} % of the cameras' spread")
        if "centre_of_object" in result:
            o = result["centre_of_object"]
            line += f" ({100 * o['median']:.2f} % / {100 * o['max']:.2f} % of the object's size)"
    else:
        line += f": fewer than {MIN_COMMON} cameras in common with the truth, nothing to score"
    return line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("truth", type=Path, help="transforms.json, Middlebury *_par.txt or LLFF poses_bounds.npy")
    parser.add_argument("--object-size", type=float, help="the object's size in the truth's units")
    parser.add_argument("--json", type=Path, help="write the full result (per photo) here")
    parser.add_argument("--per-photo", action="store_true", help="print every photo's errors")
    args = parser.parse_args(argv)
    result = score_workdir(args.workdir, args.truth, args.object_size)
    if args.per_photo:
        for stem, errors in result.get("per_photo", {}).items():
            print(f"{stem:<24}{errors['rotation_deg']:9.3f} deg ({errors['rotation_centred_deg']:.3f} centred)"
                  f"{100 * errors['centre_of_spread']:9.2f} %")
    if result["missing"]:
        print(f"not posed ({len(result['missing'])}): {', '.join(result['missing'])}")
    print(summary_line(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
