"""The poses stage's view of its inputs: ingest/photos.json joined with masks/masks.json."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from stages.common.inputs import read_listing
from stages.errors import NeroicError


@dataclass
class PhotoInput:
    stem: str
    name: str  # the user's file name
    image: Path  # absolute path of the working-size RGB PNG
    image_rel: str  # that path relative to the ingest folder (COLMAP's image name)
    mask: Path | None  # absolute path of the 8-bit L mask PNG, None when the mask is unusable
    mask_rel: str | None  # relative to the masks folder
    width: int  # working size, pixels
    height: int
    source_width: int  # the user's photo, upright
    source_height: int
    focal_px: float | None  # EXIF focal length in working-size pixels (a prior, may be wrong)
    camera: str | None  # EXIF make and model, None without EXIF
    usable: bool  # the mask is "ok": only these photos are posed


def load_photos(ingest: Path, masks: Path) -> tuple[list[PhotoInput], int]:
    """All ingested photos (usable or not) and the masks' object threshold (0-255)."""
    photos = read_listing(ingest / "photos.json", "photos")["photos"]
    mask_data = read_listing(masks / "masks.json", "masks")
    entries = {m["stem"]: m for m in mask_data["masks"]}
    threshold = int(mask_data.get("threshold", 128))
    out = []
    for p in photos:
        m = entries.get(p["stem"])
        usable = m is not None and m.get("status") == "ok"
        out.append(PhotoInput(
            stem=p["stem"], name=p["name"], image=ingest / p["image"], image_rel=p["image"],
            mask=masks / m["mask"] if usable else None, mask_rel=m["mask"] if usable else None,
            width=int(p["width"]), height=int(p["height"]),
            source_width=int(p.get("source_width") or p["width"]),
            source_height=int(p.get("source_height") or p["height"]),
            focal_px=float(p["focal_px"]) if p.get("focal_px") else None, camera=p.get("camera") or None,
            usable=usable))
    return out, threshold


def read_mask(photo: PhotoInput, threshold: int) -> np.ndarray:
    """[H, W] bool object mask at the photo's working size."""
    with Image.open(photo.mask) as im:
        mask = np.asarray(im.convert("L"))
    if mask.shape != (photo.height, photo.width):
        raise NeroicError(f"mask {photo.mask} is {mask.shape[1]}x{mask.shape[0]}, "
                          f"but photo {photo.stem} is {photo.width}x{photo.height}",
                          hint="rerun the masks stage with `neroic stage masks --force`")
    return mask >= threshold
