"""Which photos share one COLMAP camera (intrinsics): those from one camera body at one zoom.

Photos whose EXIF names the same make and model, the same focal length and the same working
image size share a camera, so SfM estimates one focal length and distortion from all of them
(the accuracy of a calibrated single-camera capture); every other photo, and every photo without
that EXIF, gets a camera of its own (a set from 30 phones still works); but a set without any
EXIF whose photos all have one size is taken as one camera's. A camera of one photo has
no distortion parameters: one view of a compact object cannot tell lens distortion from focal
length, and a free k1 lets bundle adjustment trade one for the other (on a rendered capture with
36 cameras, k1 wandered to +-0.9 and focal lengths 30 % off).
"""
from __future__ import annotations

from stages.common.video import VIDEO_CAMERA
from stages.poses.photos import PhotoInput

FOCAL_TOLERANCE = 0.005  # relative: EXIF focal lengths this close are one zoom setting
WITHOUT_DISTORTION = {"SIMPLE_RADIAL": "SIMPLE_PINHOLE", "RADIAL": "SIMPLE_PINHOLE", "OPENCV": "PINHOLE"}


def group_key(photo: PhotoInput) -> tuple | None:
    """What must agree for two photos to share a camera; None when EXIF cannot tell. The frames of
    a video (camera "video:NAME", from ingest) share one, with no focal length needed."""
    if not photo.camera or not (photo.focal_px or photo.camera.startswith(VIDEO_CAMERA)):
        return None
    return photo.camera, photo.width, photo.height


def camera_groups(photos: list[PhotoInput], shared: bool = False) -> list[list[PhotoInput]]:
    """Photos grouped by camera, in the photos' order: all one camera when `shared`, else by
    EXIF (see the module's doc), except that a set without any EXIF whose photos all have one
    size is one group (a capture exported without metadata, as datasets ship)."""
    if shared:
        return [list(photos)]
    if len(photos) > 1 and all(group_key(p) is None for p in photos) and len({(p.width, p.height) for p in photos}) == 1:
        return [list(photos)]
    groups: list[list[PhotoInput]] = []
    open_groups: dict[tuple, list[list[PhotoInput]]] = {}
    for photo in photos:
        key = group_key(photo)
        if key is None:
            groups.append([photo])
            continue
        for group in open_groups.setdefault(key, []):
            if photo.focal_px is None or abs(group[0].focal_px - photo.focal_px) <= FOCAL_TOLERANCE * group[0].focal_px:
                group.append(photo)
                break
        else:
            open_groups[key].append([photo])
            groups.append(open_groups[key][-1])
    return groups


def group_camera_model(group: list[PhotoInput], camera_model: str) -> str:
    """The COLMAP camera model of a group: `camera_model`, without distortion for a single photo."""
    return WITHOUT_DISTORTION.get(camera_model, camera_model) if len(group) == 1 else camera_model


def group_labels(groups: list[list[PhotoInput]]) -> dict[str, str]:
    """stem -> its camera group in words, for the report's per-photo table."""
    labels = {}
    for number, group in enumerate(groups, 1):
        what = (group[0].camera or "no EXIF") + (f", f={group[0].focal_px:.0f} px" if group[0].focal_px else "")
        label = f"{number} of {len(groups)}: {what}" + (f" ({len(group)} photos)" if len(group) > 1 else ", its own")
        labels.update({p.stem: label for p in group})
    return labels


def describe(groups: list[list[PhotoInput]]) -> str:
    """'3 cameras: Canon EOS 600D 1200 px (40 photos), ...' for the log."""
    parts = [f"{g[0].camera or 'no EXIF'}" + (f" f={g[0].focal_px:.0f} px" if g[0].focal_px else "")
             + f" ({len(g)} photos)" for g in groups if len(g) > 1]
    alone = sum(len(g) == 1 for g in groups)
    if alone:
        parts.append(f"{alone} photo(s) with a camera of their own")
    return f"{len(groups)} camera(s): " + ", ".join(parts)
