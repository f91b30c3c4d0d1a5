"""The whole pipeline on a small rendered capture, through the command line a user types:
photos (RGBA, so the masks are their alpha) + known cameras -> GLB, report, renders, relighting."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from stages.common.colour import srgb_to_linear

TINY = ["--set", "geometry.steps=150", "--set", "geometry.max_seconds=0", "--set", "geometry.occupancy_resolution=64",
        "--set", "normals.resolution=64", "--set", "normals.tighten_resolutions=[48]",
        "--set", "material.steps=60", "--set", "material.max_pixels_per_photo=2000",
        "--set", "export.resolution=64", "--set", "export.texture_size=256", "--set", "export.face_budget=5000",
        "--set", "export.turntable_frames=2", "--set", "export.turntable_size=64"]


def neroic(*args):
    done = subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True,
                          timeout=900)
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    return done


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from tests.synthetic.spot_capture import make_spot_capture

    root = tmp_path_factory.mktemp("pipeline")
    capture = make_spot_capture(root / "spot", size=64, n_train=16, n_heldout=2, lighting="random", seed=2,
                                supersample=1, nthreads=1)
    out = root / "spot.glb"
    done = neroic("run", capture / "images", "--poses", capture / "transforms.json", "--out", out, "-q", *TINY)
    assert done.returncode == 0, done.stderr[-2000:]
    return capture, out, root / "spot.neroic", done.stdout


def test_run_writes_a_valid_glb_and_a_report(finished):
    capture, out, work, stdout = finished
    assert out.read_bytes()[:4] == b"glTF"
    export = json.loads((work / "export" / "export.json").read_text())
    assert export["validator"]["errors"] == 0
    for stage in ("ingest", "masks", "poses", "geometry", "normals", "material", "export"):
        assert (work / stage / "manifest.json").exists(), stage
    assert len(json.loads((work / "material" / "lighting.json").read_text())) >= 10
    report = (work / "report.html").read_text()
    assert "data:image/jpeg;base64" in report
    # the model first (turntable, viewer, files), its key figures in one line, a card per photo with
    # its badge and what each stage said of it (role, mask, learned light), the stage table after
    order = [report.index(mark) for mark in ("class=turntable", "class=figures", "<h2>Photos</h2>", "<h2>Stages</h2>")]
    assert order == sorted(order)
    assert 'href="export/viewer.html"' in report and 'href="export/model.glb"' in report
    assert report.count("<details class='card") == 16
    assert report.count("<span class='badge held'>held out</span>") == 2 + 1  # and the legend's
    for column in ("ingest: camera", "masks: mask", "geometry: role", "material: light", "material: exposure",
                   "material: gamma"):
        assert f"<dt>{column}</dt>" in report, column
    assert (work / "geometry" / "transient.png").exists() and len(list((work / "material" / "spheres").iterdir())) >= 10
    assert export["atlas"]["photo_albedo_share"] > 0.5  # the texture comes mostly from the photos
    assert "wrote" in stdout


def test_second_run_redoes_nothing(finished):
    capture, out, work, _ = finished
    done = neroic("run", capture / "images", "--poses", capture / "transforms.json", "--out", out, "-q", *TINY)
    assert done.returncode == 0 and done.stdout.count("up to date") == 7, done.stdout


def test_render_unlit_relit_and_turntable(finished, tmp_path):
    capture, _, work, _ = finished
    views = neroic("render", "--workdir", work, "--cameras", capture / "transforms_test.json", "--out", tmp_path / "a",
                   "--what", "rgb,alpha,depth,normal", "-q")
    assert views.returncode == 0, views.stderr
    rgba = np.asarray(Image.open(tmp_path / "a" / "r_016.png"))
    truth = np.asarray(Image.open(capture / "test" / "r_016.png"))
    alpha, true_alpha = rgba[..., 3] > 127, truth[..., 3] > 127
    assert (alpha & true_alpha).sum() / (alpha | true_alpha).sum() > 0.7  # the cow, in the right place
    for kind in ("alpha", "depth", "normal"):
        assert (tmp_path / "a" / kind / "r_016.png").exists()

    relit = neroic("render", "--workdir", work, "--cameras", capture / "transforms_test.json", "--out", tmp_path / "b",
                   "--lighting", capture / "lighting_test.json", "--what", "rgb,albedo,shading", "-q")
    assert relit.returncode == 0, relit.stderr
    assert (tmp_path / "b" / "albedo" / "r_016.png").exists()

    darker = neroic("render", "--workdir", work, "--cameras", capture / "transforms_test.json", "--out",
                    tmp_path / "e", "--lighting", capture / "lighting_test.json", "--what", "rgb,albedo",
                    "--exposure", "-1", "-q")
    assert darker.returncode == 0, darker.stderr
    full, half = (srgb_to_linear(np.asarray(Image.open(tmp_path / d / "r_016.png"))[..., :3] / 255.0) for d in "be")
    lit = (full > 0.05) & (full < 0.95)  # neither lost in 8 bits nor clipped
    assert lit.sum() > 100 and np.median(half[lit] / full[lit]) == pytest.approx(0.5, abs=0.02)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b" / "albedo" / "r_016.png")),
                          np.asarray(Image.open(tmp_path / "e" / "albedo" / "r_016.png")))  # the material is not lit
    unlit = neroic("render", "--workdir", work, "--turntable", 3, "--out", tmp_path / "f", "--exposure", "1")
    assert unlit.returncode == 2 and "--exposure scales a relighting light" in unlit.stderr

    turn = neroic("render", "--workdir", work, "--turntable", 3, "--out", tmp_path / "c", "--lighting-of", "r_001", "-q")
    assert turn.returncode == 0, turn.stderr
    assert Image.open(tmp_path / "c" / "turntable.gif").n_frames == 3

    bad = neroic("render", "--workdir", work, "--turntable", 3, "--out", tmp_path / "d", "--lighting-of", "nosuch")
    assert bad.returncode == 1 and "no learned light" in bad.stderr
