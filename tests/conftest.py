"""Shared fixtures: real photos (the example capture shipped in the repo), the larger test data
beside the repo (../shared/data, optional: tests that need it skip without it) and small
captures made from them."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_PHOTOS = REPO / "examples" / "skull" / "images"  # CC BY 4.0, 1024 px JPEGs with EXIF
SHARED_DATA = Path(os.environ.get("NEROIC_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared(*parts: str) -> Path:
    """A path in ../shared/data; the calling test skips when it is absent (a user's clone)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs the test data {path} (../shared/data beside the repo), which is absent")
    return path


def copy_photos(folder: Path, count: int) -> Path:
    """The first `count` photos of the shipped skull example, copied into `folder`."""
    folder.mkdir(parents=True)
    for p in sorted(EXAMPLE_PHOTOS.glob("*.jpg"))[:count]:
        shutil.copy(p, folder / p.name)
    return folder


@pytest.fixture
def real_photos(tmp_path) -> Path:
    """A copy of 5 real photos (the skull example: 1024 x 683 JPEG, Canon EXIF, 55 mm)."""
    return copy_photos(tmp_path / "photos", 5)


def write_image(path: Path, array: np.ndarray, **save_args) -> Path:
    Image.fromarray(array).save(path, **save_args)
    return path


def disc_photo(size=(96, 72), radius=0.3, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """An RGB noise texture with a disc-shaped alpha: (rgb [H,W,3], alpha [H,W]) uint8."""
    rng = np.random.default_rng(seed)
    w, h = size
    rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    alpha = (((xx - w / 2) ** 2 + (yy - h / 2) ** 2) < (radius * min(w, h)) ** 2).astype(np.uint8) * 255
    return rgb, alpha


@pytest.fixture
def make_pipeline(tmp_path):
    """Build a Pipeline on a fresh workdir: make_pipeline(photos, overrides=(), masks=None, poses=None)."""
    from pipeline.config import resolve
    from stages.context import Sources
    from pipeline.runner import Pipeline
    from pipeline.workdir import Workdir

    def build(photos, overrides=(), masks=None, poses=None, workdir=None):
        wd = Workdir(workdir or tmp_path / "work")
        wd.create()
        wd.write_sources(Sources(photos=photos, masks=masks, poses=poses))
        return Pipeline(wd, resolve(wd.config_path, None, tuple(overrides)), wd.read_sources(), quiet=True)

    return build
