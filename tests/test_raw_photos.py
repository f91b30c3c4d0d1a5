"""Camera RAW photos read like JPEGs: developed by LibRaw, upright, with their EXIF focal length.

The RAW file is a real DNG made here: a Bayer (RGGB) mosaic of a skull photo's linear colours,
12-bit, with the DNG tags a camera writes (colour matrix, white level, as-shot neutral), the
camera's name, its focal length and an orientation that says "rotate 90 degrees to view".
"""
import json
import math

import numpy as np
import pytest
from PIL import Image

from stages import get_stage
from stages.common.images import UnreadableImage, load_photo
from tests.conftest import EXAMPLE_PHOTOS

tifffile = pytest.importorskip("tifffile")
pytest.importorskip("rawpy")

# XYZ (D65) -> linear sRGB: as the DNG's ColorMatrix1 (XYZ -> camera), it says "this camera sees linear sRGB".
XYZ_TO_SRGB = np.array([[3.2404542, -1.5371385, -0.4985314],
                        [-0.9692660, 1.8760108, 0.0415560],
                        [0.0556434, -0.2040259, 1.0572252]])
WHITE = 4095
FOCAL_35MM = 88


def _srational(values) -> list[int]:
    return [v for x in values for v in (int(round(x * 10000)), 10000)]


def write_dng(path, rgb: np.ndarray, orientation: int = 6) -> None:
    """rgb [H, W, 3] uint8 sRGB (H, W even) -> a 12-bit RGGB mosaic DNG with camera EXIF in IFD0."""
    x = rgb.astype(np.float64) / 255.0
    linear = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    mosaic = np.empty(rgb.shape[:2])
    mosaic[0::2, 0::2] = linear[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = linear[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = linear[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = linear[1::2, 1::2, 2]
    tags = [
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50708, "s", 0, "neroic test camera", True),  # UniqueCameraModel
        (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, "B", 4, (0, 1, 1, 2), True),  # CFAPattern: R G / G B
        (50717, "I", 1, (WHITE,), True),  # WhiteLevel
        (50721, "2i", 9, _srational(XYZ_TO_SRGB.ravel()), True),  # ColorMatrix1
        (50778, "H", 1, (21,), True),  # CalibrationIlluminant1: D65
        (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True),  # AsShotNeutral: white balance done
        (274, "H", 1, (orientation,), True),  # Orientation
        (271, "s", 0, "Canon", True),
        (272, "s", 0, "Canon EOS REBEL T3", True),
        (37386, "2I", 1, (55, 1), True),  # FocalLength (TIFF/EP puts it in IFD0)
        (41989, "H", 1, (FOCAL_35MM,), True),  # FocalLengthIn35mmFilm
    ]
    tifffile.imwrite(path, np.round(mosaic * WHITE).astype(np.uint16), photometric=32803, extratags=tags,
                     subfiletype=0)


def test_a_dng_is_developed_upright_with_its_exif_focal(tmp_path, make_pipeline):
    photos = tmp_path / "photos"
    photos.mkdir()
    names = sorted(EXAMPLE_PHOTOS.glob("*.jpg"))[:3]
    for p in names[1:]:
        with Image.open(p) as im:
            im.resize((256, 170)).save(photos / p.name, quality=92)
    with Image.open(names[0]) as im:
        original = np.asarray(im.convert("RGB").resize((256, 170), Image.Resampling.LANCZOS))
    write_dng(photos / "camera.dng", original)

    # Pillow alone would not decode it: the RAW path is the one reading it.
    photo = load_photo(photos / "camera.dng", 10**8)
    assert photo.rgb.shape == (256, 170, 3)  # orientation 6: the landscape sensor image turned upright
    assert photo.exif["Model"] == "Canon EOS REBEL T3" and photo.exif["FocalLength"] == 55.0

    pipe = make_pipeline(photos)
    pipe.run_stage(get_stage("ingest"))
    folder = pipe.workdir.stage_dir("ingest")
    result = json.loads((folder / "photos.json").read_text())
    assert not result["skipped"], result["skipped"]
    dng = {p["name"]: p for p in result["photos"]}["camera.dng"]
    assert (dng["width"], dng["height"]) == (170, 256) and dng["camera"] == "Canon EOS REBEL T3"
    assert dng["focal_px"] == pytest.approx(FOCAL_35MM / 43.27 * math.hypot(170, 256), rel=1e-3)

    developed = np.asarray(Image.open(folder / dng["image"]).convert("RGB")).astype(np.float64)
    upright = np.rot90(original, k=-1).astype(np.float64)  # EXIF 6: rotate 90 degrees clockwise
    # LibRaw brightens automatically (like a camera's JPEG engine): compare after one gain.
    gain = (developed * upright).sum() / (developed * developed).sum()
    assert 0.7 < gain < 1.4, gain
    assert np.abs(gain * developed - upright).mean() < 4.0  # the same picture, demosaicked
    assert np.abs(np.rot90(original, k=1) - gain * developed).mean() > 25.0  # and not turned the wrong way


def test_a_broken_raw_file_is_skipped_with_a_reason(tmp_path):
    bad = tmp_path / "broken.nef"
    bad.write_bytes(b"II*\x00" + b"\x00" * 200)
    with pytest.raises(UnreadableImage, match="camera RAW"):
        load_photo(bad, 10**8)
