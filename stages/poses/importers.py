"""`--poses`: cameras the user already has: a transforms.json, a COLMAP sparse model or an LLFF
poses_bounds.npy.

The given world frame is kept exactly (the exported model then overlays the user's data); frames
are matched to photos by file stem and their intrinsics rescaled to the working-size photos.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pycolmap

from stages.errors import NeroicError
from stages.common.cameras import Frame, frame_stem, read_transforms
from stages.poses.colmap_model import Solution, frame_from_image, solution_of
from stages.poses.photos import PhotoInput

LLFF_COLUMNS = 17  # a 3x5 matrix [down, right, back | centre | h, w, f], then near and far depth


def _photo_lookup(photos: list[PhotoInput]) -> dict[str, PhotoInput]:
    """Frame file name or stem -> photo: the user's file name, its stem, or the working stem
    (which differs when two photos share a stem, as a.jpg and a.png)."""
    lookup = {Path(p.name).stem: p for p in photos}
    lookup.update({p.stem: p for p in photos})
    lookup.update({p.name: p for p in photos})
    return lookup


def _fit(frame: Frame, photo: PhotoInput, what: str) -> Frame:
    """The frame rescaled to the photo's working size; a different aspect ratio is refused
    (a crop or a rotation would silently misplace every pixel)."""
    if abs(frame.w * photo.height - frame.h * photo.width) > 0.01 * frame.w * photo.height:
        raise NeroicError(f"{what}: the camera is {frame.w}x{frame.h} but photo {photo.name} is "
                          f"{photo.width}x{photo.height} after ingest (a different shape)",
                          hint="give the poses of the photos as they are (same crop and orientation)")
    return frame.scaled(photo.width, photo.height)


def _match(frames: list[Frame], photos: list[PhotoInput], what: str,
           log: logging.Logger) -> tuple[dict[str, Frame], list[str]]:
    """Frames of usable photos keyed by photo stem, and the names of frames without a photo."""
    lookup, matched, orphans = _photo_lookup(photos), {}, []
    for frame in frames:
        photo = lookup.get(Path(frame.file_path.replace("\\", "/")).name) or lookup.get(frame.stem)
        if photo is None:
            orphans.append(frame.stem)
        elif photo.stem in matched:
            raise NeroicError(f"{what}: two frames refer to photo {photo.name}")
        elif photo.usable:
            matched[photo.stem] = _fit(frame, photo, f"{what} frame {frame.stem}")
    if orphans:
        log.warning("%d frame(s) in %s have no photo: %s", len(orphans), what, ", ".join(orphans[:10])
                    + (" ..." if len(orphans) > 10 else ""))
    return matched, orphans


def import_transforms(path: Path, photos: list[PhotoInput], photo_root: Path | None,
                      log: logging.Logger) -> tuple[Solution, list[str]]:
    """Cameras from a nerfstudio / instant-ngp transforms.json (OpenGL axes)."""
    lookup = _photo_lookup(photos)
    # Intrinsics in the file refer to the user's photos; w/h default to their size.
    sizes = {key: (p.source_width, p.source_height) for key, p in lookup.items()}
    frames = read_transforms(path, roots=[photo_root] if photo_root else [], sizes=sizes)
    matched, orphans = _match(frames, photos, path.name, log)
    return Solution(frames=matched, camera_model="OPENCV"), orphans


def import_colmap(folder: Path, photos: list[PhotoInput], log: logging.Logger) -> tuple[Solution, list[str]]:
    """Cameras and points from a COLMAP sparse model folder (binary or text)."""
    if not any((folder / f"cameras{ext}").exists() for ext in (".bin", ".txt")):
        raise NeroicError(f"{folder} holds no COLMAP model (cameras.bin / cameras.txt)",
                          hint="pass the model folder itself, e.g. sparse/0, or a transforms.json")
    try:
        rec = pycolmap.Reconstruction(folder)
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        raise NeroicError(f"cannot read the COLMAP model in {folder}: {e}") from None
    images = [rec.image(i) for i in rec.reg_image_ids()]
    frames = [replace(frame_from_image(im, rec.camera(im.camera_id), frame_stem(im.name)), file_path=im.name)
              for im in images]
    matched, orphans = _match(frames, photos, folder.name, log)
    return solution_of(rec, matched), orphans


def read_poses_bounds(path: Path, names: list[str]) -> list[Frame]:
    """Frames of an LLFF poses_bounds.npy [N, 17], row i for names[i] (the photos in sorted file-name
    order, as LLFF, NeRD and NeROIC write them). Each row's 3x5 matrix holds the camera's down,
    right and back axes in world coordinates, its centre, and (h, w, focal) in pixels."""
    try:
        rows = np.load(path, allow_pickle=False).astype(np.float64)
    except (OSError, ValueError) as e:
        raise NeroicError(f"cannot read {path}: {e}", hint="expected an LLFF poses_bounds.npy (N x 17 floats)") from None
    if rows.ndim != 2 or rows.shape[1] != LLFF_COLUMNS or not np.isfinite(rows).all():
        raise NeroicError(f"{path} is not an LLFF poses_bounds.npy: expected N x {LLFF_COLUMNS} finite numbers, "
                          f"found shape {rows.shape}")
    if len(rows) != len(names):
        raise NeroicError(f"{path.name} has {len(rows)} cameras but there are {len(names)} photos",
                          hint="its rows are matched to the photos in sorted file-name order, so it must "
                               "describe exactly the photos in the folder")
    frames = []
    for name, row in zip(names, rows):
        m = row[:15].reshape(3, 5)
        down, right, back, centre = m[:, 0], m[:, 1], m[:, 2], m[:, 3]
        h, w, f = m[:, 4]
        rotation = np.stack([right, -down, back], axis=1)  # OpenGL camera axes: right, up, back
        if np.abs(rotation.T @ rotation - np.eye(3)).max() > 1e-3 or np.linalg.det(rotation) < 0:
            raise NeroicError(f"{path.name}: the camera of {name} is not a rotation (row order or format?)")
        if min(h, w, f) <= 0:
            raise NeroicError(f"{path.name}: the camera of {name} has a non-positive size or focal length")
        U, _, Vt = np.linalg.svd(rotation)  # float32 files: snap to the nearest rotation
        c2w = np.eye(4)
        c2w[:3, :3], c2w[:3, 3] = U @ Vt, centre
        frames.append(Frame(stem=Path(name).stem, c2w=c2w, fl_x=float(f), fl_y=float(f), cx=w / 2.0, cy=h / 2.0,
                            w=int(round(w)), h=int(round(h)), file_path=name))
    return frames


def import_poses_bounds(path: Path, photos: list[PhotoInput], log: logging.Logger) -> tuple[Solution, list[str]]:
    """Cameras from an LLFF poses_bounds.npy, its rows matched to the photos by sorted file name."""
    names = sorted(p.name for p in photos)
    frames = read_poses_bounds(path, names)
    matched, orphans = _match(frames, photos, path.name, log)
    return Solution(frames=matched, camera_model="PINHOLE"), orphans


def import_poses(path: Path, photos: list[PhotoInput], photo_root: Path | None,
                 log: logging.Logger) -> tuple[Solution, str, list[str]]:
    """Solution in the given world, its source ("transforms.json", "colmap-model" or
    "poses_bounds.npy"), and the frames that matched no photo."""
    path = Path(path)
    if path.is_dir():
        solution, orphans = import_colmap(path, photos, log)
        return solution, "colmap-model", orphans
    if path.suffix.lower() == ".json":
        solution, orphans = import_transforms(path, photos, photo_root, log)
        return solution, "transforms.json", orphans
    if path.suffix.lower() == ".npy":
        solution, orphans = import_poses_bounds(path, photos, log)
        return solution, "poses_bounds.npy", orphans
    raise NeroicError(f"--poses {path}: expected a transforms.json file, an LLFF poses_bounds.npy or a COLMAP "
                      "sparse model folder")
