"""`--poses`: cameras the user already has, a transforms.json or a COLMAP sparse model.

The given world frame is kept exactly (the exported model then overlays the user's data); frames
are matched to photos by file stem and their intrinsics rescaled to the working-size photos.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pycolmap

from stages.errors import NeroicError
from stages.common.cameras import Frame, frame_stem, read_transforms
from stages.poses.colmap_model import Solution, frame_from_image, solution_of
from stages.poses.photos import PhotoInput

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


def import_poses(path: Path, photos: list[PhotoInput], photo_root: Path | None,
                 log: logging.Logger) -> tuple[Solution, str, list[str]]:
    """Solution in the given world, its source ("transforms.json" or "colmap-model"), and the
    frames that matched no photo."""
    path = Path(path)
    if path.is_dir():
        solution, orphans = import_colmap(path, photos, log)
        return solution, "colmap-model", orphans
    if path.suffix.lower() == ".json":
        solution, orphans = import_transforms(path, photos, photo_root, log)
        return solution, "transforms.json", orphans
    raise NeroicError(f"--poses {path}: expected a transforms.json file or a COLMAP sparse model folder")
