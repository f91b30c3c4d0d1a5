"""What the ingest and masks stages published, read the one way every later stage reads it.

    photos = PhotoSet.load(workdir / "ingest")      # ingest/photos.json
    rgb = photos.rgb(stem, size=(w, h))              # [H, W, 3] uint8 sRGB at the working size, or resized
    masks = MaskSet.load(workdir / "masks")          # masks/masks.json
    masks.usable(stem)                               # its status is "ok"
    masks.coverage(stem, size)                       # [H, W] uint8, soft at the edges (alpha or rembg)
    masks.binary(stem, size)                         # [H, W] bool: coverage >= the masks' threshold
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.common.images import read_mask, read_rgb, resize
from stages.errors import NeroicError


def read_listing(path: Path, key: str) -> dict:
    """A stage's JSON listing (photos.json, masks.json) whose `key` holds a list."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data.get(key), list):
            raise ValueError(f"no {key!r} list")
        return data
    except (OSError, ValueError, AttributeError) as e:
        raise NeroicError(f"cannot read {path}: {e}",
                          hint=f"rerun the {path.parent.name} stage with `neroic stage {path.parent.name} --force`") from None


@dataclass
class PhotoSet:
    """The ingested photos: entries of photos.json by stem, in the listing's order."""

    folder: Path
    entries: dict[str, dict]

    @staticmethod
    def load(folder: Path) -> "PhotoSet":
        listing = read_listing(Path(folder) / "photos.json", "photos")["photos"]
        return PhotoSet(Path(folder), {p["stem"]: p for p in listing})

    def __contains__(self, stem: str) -> bool:
        return stem in self.entries

    def rgb(self, stem: str, size: tuple[int, int] | None = None) -> np.ndarray:
        """[H, W, 3] uint8 sRGB, at the working size or resized to size = (w, h)."""
        image = read_rgb(self.folder / self.entries[stem]["image"])
        return image if size is None else resize(image, size)


@dataclass
class MaskSet:
    """The masks stage's output: a PNG per photo, usable where its status is "ok", and the level
    (0-255) at or above which a pixel counts as object."""

    folder: Path
    threshold: int
    files: dict[str, str]  # stem -> PNG name, usable masks only
    sources: dict[str, str]  # stem -> where the mask came from: "user", "alpha", "rembg", ...

    @staticmethod
    def load(folder: Path) -> "MaskSet":
        data = read_listing(Path(folder) / "masks.json", "masks")
        usable = [m for m in data["masks"] if m.get("status") == "ok"]
        return MaskSet(Path(folder), int(data.get("threshold", 128)), {m["stem"]: m["mask"] for m in usable},
                       {m["stem"]: m.get("source", "") for m in usable})

    def usable(self, stem: str) -> bool:
        return stem in self.files

    def coverage(self, stem: str, size: tuple[int, int] | None = None) -> np.ndarray:
        """[H, W] uint8 coverage, at its own size or resized to size = (w, h)."""
        try:
            mask = read_mask(self.folder / self.files[stem])
        except OSError as e:
            raise NeroicError(f"cannot read the mask of {stem}: {e}", hint="rerun the masks stage") from None
        return mask if size is None else resize(mask, size)

    def binary(self, stem: str, size: tuple[int, int] | None = None) -> np.ndarray:
        """[H, W] bool object mask (coverage at or above the threshold)."""
        return self.coverage(stem, size) >= self.threshold
