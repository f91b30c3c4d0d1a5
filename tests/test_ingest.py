"""The ingest stage on real photos and on every odd kind of file users have."""
import json
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from stages.errors import NeroicError
from stages import get_stage
from stages.ingest import focal_from_exif
from tests.conftest import EXAMPLE_PHOTOS, disc_photo, write_image

INGEST = get_stage("ingest")


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height pixels: a decompression bomb's calling card."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _photos(pipe):
    pipe.run_stage(INGEST)
    return json.loads((pipe.workdir.stage_dir("ingest") / "photos.json").read_text())


# The skull example's EXIF: 55 mm on a Canon T3 (4720.44 px/inch focal-plane resolution on its
# 4272 px wide sensor image); the example's photos are 1024 x 683.
SKULL_FOCAL_1024 = 55 * 4720.44 / 25.4 * 1024 / 4272


def test_real_photos_resized_with_focal_hint(real_photos, make_pipeline):
    result = _photos(make_pipeline(real_photos, ["ingest.max_size=320"]))
    photos = result["photos"]
    assert len(photos) == 5 and not result["skipped"]
    first = photos[0]
    assert (first["width"], first["height"]) == (320, 213)
    assert first["focal_px"] == pytest.approx(SKULL_FOCAL_1024 * 320 / 1024, rel=1e-3)
    assert first["camera"] == "Canon EOS REBEL T3"


def test_skull_exif_focal():
    with Image.open(EXAMPLE_PHOTOS / "01.jpg") as im:
        from stages.common.images import _exif_dict
        exif = _exif_dict(im)
    assert focal_from_exif(exif, 1024, 683) == pytest.approx(SKULL_FOCAL_1024, rel=1e-3)


def test_odd_files_are_converted_or_skipped(real_photos, make_pipeline):
    rgb, alpha = disc_photo()
    write_image(real_photos / "rgba.png", np.dstack([rgb, alpha]))
    write_image(real_photos / "grey.png", rgb[..., 0])
    Image.fromarray((rgb[..., 1].astype(np.uint16) * 257)).save(real_photos / "grey16.png")
    Image.fromarray(rgb).convert("P").save(real_photos / "palette.png")
    # EXIF orientation 6 (rotate 90 CW to display): stored 96x72 -> upright 72x96.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(real_photos / "rotated.jpg", exif=exif)
    (real_photos / "notes.jpg").write_text("not a photo")
    good = (real_photos / "01.jpg").read_bytes()
    (real_photos / "truncated.jpg").write_bytes(good[: len(good) // 3])
    _png_header_only(real_photos / "bomb.png", 200_000, 200_000)
    shutil.copy(real_photos / "02.jpg", real_photos / "copy_of_02.jpg")

    result = _photos(make_pipeline(real_photos, ["ingest.max_size=320"]))
    by_name = {p["name"]: p for p in result["photos"]}
    skipped = {s["name"]: s["reason"] for s in result["skipped"]}
    assert set(skipped) == {"notes.jpg", "truncated.jpg", "bomb.png"}
    assert "pixels is over the limit" in skipped["bomb.png"]
    assert "not an image" in skipped["notes.jpg"]
    assert result["duplicates"] == [{"name": "copy_of_02.jpg", "same_as": "02.jpg"}]
    assert by_name["rgba.png"]["alpha"] == "alpha/rgba.png"
    assert by_name["grey.png"]["alpha"] is None
    assert (by_name["rotated.jpg"]["width"], by_name["rotated.jpg"]["height"]) == (72, 96)
    folder = real_photos.parent / "work" / "ingest"
    grey16 = np.asarray(Image.open(folder / by_name["grey16.png"]["image"]))
    assert grey16.shape == (72, 96, 3) and np.array_equal(grey16[..., 0], rgb[..., 1])
    saved_alpha = np.asarray(Image.open(folder / "alpha" / "rgba.png"))
    assert np.array_equal(saved_alpha > 127, alpha > 127)


def test_too_few_usable_photos(tmp_path, make_pipeline):
    folder = tmp_path / "two"
    folder.mkdir()
    for i in range(2):
        write_image(folder / f"{i}.png", disc_photo(seed=i)[0])
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbage")
    with pytest.raises(NeroicError, match="only 2 usable photo"):
        make_pipeline(folder).run_stage(INGEST)


def test_empty_folder(tmp_path, make_pipeline):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NeroicError, match="no files"):
        make_pipeline(tmp_path / "empty").run_stage(INGEST)


def test_heic_cmyk_and_16_bit_photos_read_like_jpegs(real_photos, make_pipeline):
    """What phones and editors write: HEIC (with its EXIF focal), CMYK JPEG, 16-bit PNG."""
    with Image.open(real_photos / "01.jpg") as im:
        im.save(real_photos / "iphone.heic", exif=im.info["exif"], quality=90)
        rgb = np.asarray(im)
    (real_photos / "01.jpg").unlink()
    with Image.open(real_photos / "02.jpg") as im:
        im.convert("CMYK").save(real_photos / "print.jpg", quality=95)
    Image.fromarray((rgb.astype(np.uint16) * 257)[..., 1]).save(real_photos / "deep.png")
    result = _photos(make_pipeline(real_photos, ["ingest.max_size=320"]))
    by_name = {p["name"]: p for p in result["photos"]}
    assert not result["skipped"], result["skipped"]
    heic = by_name["iphone.heic"]
    assert (heic["width"], heic["height"]) == (320, 213) and heic["camera"] == "Canon EOS REBEL T3"
    assert heic["focal_px"] == pytest.approx(SKULL_FOCAL_1024 * 320 / 1024, rel=1e-3)
    folder = real_photos.parent / "work" / "ingest"
    decoded = np.asarray(Image.open(folder / heic["image"]).convert("RGB")).astype(float)
    original = np.asarray(Image.fromarray(rgb).resize((320, 213), Image.Resampling.LANCZOS)).astype(float)
    assert np.abs(decoded - original).mean() < 4.0  # the same picture, up to HEIC's compression
    printed = np.asarray(Image.open(folder / by_name["print.jpg"]["image"]).convert("RGB")).astype(float)
    assert printed.mean() > 20 and by_name["deep.png"]["width"] == 320
