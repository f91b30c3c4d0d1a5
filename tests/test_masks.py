"""The masks stage: rembg on real photos, the photo's own alpha, user masks, flagged masks."""
import json

import numpy as np
import pytest
from PIL import Image

from stages.errors import NeroicError
from stages import get_stage
from tests.conftest import disc_photo, write_image

INGEST, MASKS = get_stage("ingest"), get_stage("masks")


def _masks(pipe):
    pipe.run_stage(INGEST)
    pipe.run_stage(MASKS)
    folder = pipe.workdir.stage_dir("masks")
    return folder, {m["stem"]: m for m in json.loads((folder / "masks.json").read_text())["masks"]}


def test_rembg_on_real_photos(real_photos, make_pipeline):
    folder, masks = _masks(make_pipeline(real_photos, ["ingest.max_size=320"]))
    assert len(masks) == 5
    for m in masks.values():
        assert m["source"] == "rembg" and m["status"] == "ok"
        # The skull on its stand fills roughly a tenth to a half of each photo.
        assert 0.1 < m["fraction"] < 0.6
        mask = np.asarray(Image.open(folder / m["mask"]))
        assert mask.shape == (213, 320)
        # The dark room at the left and right borders is background.
        assert mask[:, :8].mean() < 128 and mask[:, -8:].mean() < 128
    sheet = Image.open(folder / "contact_sheet.png")
    assert sheet.width > 300 and sheet.height > 100


def test_alpha_and_user_masks_and_flags(tmp_path, make_pipeline):
    photos, user = tmp_path / "photos", tmp_path / "user_masks"
    photos.mkdir()
    user.mkdir()
    for i in range(5):
        rgb, alpha = disc_photo(seed=i)
        write_image(photos / f"p{i}.png", np.dstack([rgb, alpha]))
    # p3: the user's mask (given as 'p3.png.png' style and as plain stem) overrides the alpha.
    write_image(user / "p3.png", np.full((72, 96), 255, np.uint8))  # whole photo -> "full"
    zeros = np.zeros((72, 96), np.uint8)
    write_image(user / "p4.png.png", zeros)  # -> "empty"
    folder, masks = _masks(make_pipeline(photos, masks=user))
    assert [masks[f"p{i}"]["source"] for i in range(5)] == ["alpha"] * 3 + ["user"] * 2
    assert [masks[f"p{i}"]["status"] for i in range(5)] == ["ok"] * 3 + ["full", "empty"]
    assert masks["p0"]["fraction"] == pytest.approx(np.pi * (0.3 * 72) ** 2 / (96 * 72), rel=0.05)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["summary"]["excluded"] == ["p3", "p4"]


def test_too_few_usable_masks_is_an_error(tmp_path, make_pipeline):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        rgb, alpha = disc_photo(seed=i)
        write_image(photos / f"p{i}.png", np.dstack([rgb, alpha if i else alpha * 0 + 1]))
    with pytest.raises(NeroicError, match="only 2 photo"):
        _masks(make_pipeline(photos))
    assert not (tmp_path / "work" / "masks" / "manifest.json").exists()


def test_missing_weights_gives_a_clear_error(real_photos, make_pipeline, monkeypatch, tmp_path):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "no_weights"))
    with pytest.raises(NeroicError, match="make setup"):
        _masks(make_pipeline(real_photos, ["ingest.max_size=160"]))


def test_rembg_matches_the_true_silhouette_of_a_rendered_object(tmp_path, make_pipeline):
    """Spot rendered under random lights, photographed on a plain backdrop: rembg vs exact alpha."""
    from tests.synthetic.spot_capture import make_spot_capture

    capture = make_spot_capture(tmp_path / "spot", size=192, n_train=4, n_heldout=0, lighting="random", seed=3)
    photos = tmp_path / "photos"
    photos.mkdir()
    truth = {}
    ramp = np.linspace(90, 170, 192)[:, None, None]  # a studio backdrop: vertical grey gradient
    for png in sorted((capture / "images").glob("*.png")):
        rgba = np.asarray(Image.open(png)).astype(np.float32)
        a = rgba[..., 3:] / 255
        write_image(photos / f"{png.stem}.jpg", (rgba[..., :3] * a + ramp * (1 - a)).astype(np.uint8), quality=92)
        truth[png.stem] = a[..., 0] >= 0.5
    folder, masks = _masks(make_pipeline(photos))
    for stem, gt in truth.items():
        assert masks[stem]["source"] == "rembg"
        mask = np.asarray(Image.open(folder / masks[stem]["mask"])) >= 128
        iou = (mask & gt).sum() / (mask | gt).sum()
        assert iou > 0.97, (stem, iou)


def test_a_blurred_photo_is_excluded_and_named(real_photos, make_pipeline, caplog):
    import logging

    from PIL import ImageFilter

    with Image.open(real_photos / "03.jpg") as im:
        im.filter(ImageFilter.GaussianBlur(8)).save(real_photos / "03_shaken.jpg", quality=92)
    with Image.open(real_photos / "04.jpg") as im:  # a sharp photo in dim light is not a blurred one
        Image.eval(im.convert("RGB"), lambda v: v // 4).save(real_photos / "04.jpg", quality=92)
    with Image.open(real_photos / "05.jpg") as im:  # nor is a close-up, softer per pixel than the others
        w, h = im.size
        im.crop((w // 6, h // 6, w - w // 6, h - h // 6)).resize((w, h), Image.BICUBIC).save(
            real_photos / "05_closeup.jpg", quality=92)
    with caplog.at_level(logging.WARNING, logger="neroic"):
        folder, masks = _masks(make_pipeline(real_photos, ["ingest.max_size=320"]))
    assert masks["03_shaken"]["status"] == "blurred"
    assert all(m["status"] == "ok" for stem, m in masks.items() if stem != "03_shaken")
    assert "excluding 03_shaken: it is blurred" in caplog.text
    notes = json.loads((folder / "photo_notes.json").read_text())["rows"]
    assert notes["03_shaken"]["dropped"] == "blurred" and "rembg" in notes["01"]["mask"]
