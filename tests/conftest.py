"""Shared fixtures: the real test data beside the repo and small captures made from it."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"test data {path} is missing: the repo expects ../shared beside it")
    return path


@pytest.fixture
def kermit_photos(tmp_path) -> Path:
    """A copy of 5 kermit photos (640x480 JPEG with EXIF) in a fresh folder."""
    folder = tmp_path / "kermit"
    folder.mkdir()
    for p in sorted(shared("kermit", "images").glob("*.jpg"))[:5]:
        shutil.copy(p, folder / p.name)
    return folder


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
    from pipeline.context import Sources
    from pipeline.runner import Pipeline
    from pipeline.workdir import Workdir

    def build(photos, overrides=(), masks=None, poses=None, workdir=None):
        wd = Workdir(workdir or tmp_path / "work")
        wd.create()
        wd.write_sources(Sources(photos=photos, masks=masks, poses=poses))
        return Pipeline(wd, resolve(wd.config_path, None, tuple(overrides)), wd.read_sources(), quiet=True)

    return build
