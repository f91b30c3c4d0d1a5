"""Video input: a phone-style clip of the rendered cow becomes photos (frames chosen by sharpness
and by the camera's motion, upright by the rotation metadata, one camera for the whole clip), a
folder may mix photos and videos, and a broken video is one warning."""
import json
import logging
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from stages import get_stage
from stages.common.frame_choice import choose_frames
from stages.poses.camera_groups import camera_groups
from stages.poses.photos import PhotoInput
from tests.conftest import copy_photos
from tests.synthetic.spot_video import film_spot

INGEST = get_stage("ingest")


@pytest.fixture(scope="module")
def portrait_clip(tmp_path_factory):
    """3 s at 30 fps, 96 x 170 upright, stored landscape with a -90 degree display rotation."""
    return film_spot(tmp_path_factory.mktemp("clip") / "clip.mp4", size=96, seconds=3, portrait=True, seed=0)


def _ingest(make_pipeline, source, *overrides):
    pipe = make_pipeline(source, list(overrides))
    pipe.run_stage(INGEST)
    folder = pipe.workdir.stage_dir("ingest")
    return json.loads((folder / "photos.json").read_text()), folder


def test_frames_are_sharp_spread_and_upright(portrait_clip, make_pipeline):
    clip = portrait_clip
    result, folder = _ingest(make_pipeline, clip.path, "ingest.video_frames=12")
    photos, (video,) = result["photos"], result["videos"]
    frames = [p["frame"] for p in photos]
    assert 8 <= len(photos) <= 12 and frames == sorted(frames) and video["taken"] == len(photos)
    assert video["frames"] == 90 and "shown 90 deg clockwise" in video["format"]
    assert [p["stem"] for p in photos] == [f"clip_f{f:04d}" for f in frames]
    assert {p["camera"] for p in photos} == {"video:clip.mp4"} and not any(p["focal_px"] for p in photos)
    assert not set(frames) & clip.blurred, "a frame smeared by the shake was taken"
    assert len(set(frames) & clip.paused) <= 1, "the camera stood still there: one frame is enough"
    assert all(t["why"].startswith("sharpest of frames") for t in video["frames_taken"])
    for p in photos:
        image = np.asarray(Image.open(folder / p["image"])).astype(float)
        truth = clip.upright[p["frame"]].astype(float)
        assert image.shape == truth.shape == (170, 96, 3)
        assert np.abs(image - truth).mean() < 4 < np.abs(image - truth[::-1, ::-1]).mean()  # upright, not turned


def test_choice_follows_the_camera_path_and_sharpness():
    rng = np.random.default_rng(0)
    motion = np.r_[0.0, np.full(49, 0.01), np.zeros(40), np.full(10, 0.01)]  # moving, standing still, moving
    sharpness = rng.uniform(1.0, 2.0, 100)
    chosen = choose_frames(motion, sharpness, count=6, min_step=0.005)
    indices = [c.index for c in chosen]
    assert len(chosen) == 6 and not any(50 <= i < 90 for i in indices)  # nothing from the pause
    path = np.cumsum(motion)
    for c in chosen:  # each the sharpest of its stretch, and the stretch near its share of the path
        assert sharpness[c.index] == sharpness[c.first:c.last + 1].max()
    assert np.all(np.diff(path[indices]) > 0.05)
    assert [c.index for c in choose_frames(np.zeros(30), sharpness[:30], 6, 0.005)] == [int(np.argmax(sharpness[:30]))]
    assert len(choose_frames(motion, sharpness, count=60, min_step=0.15)) == 3  # a short path (0.59) gives fewer


def test_folder_of_photos_and_videos_with_broken_ones(tmp_path, make_pipeline, caplog):
    folder = copy_photos(tmp_path / "capture", 3)
    film_spot(folder / "walk.mp4", size=64, seconds=1.5, seed=1)
    film_spot(folder / "round.mov", size=64, seconds=1.5, seed=2)
    whole = (folder / "walk.mp4").read_bytes()
    (folder / "cut.mp4").write_bytes(whole[: len(whole) // 2])  # its index (moov) was at the end
    (folder / "notes.mov").write_text("not a video")
    with caplog.at_level(logging.WARNING, logger="neroic"):
        result, _ = _ingest(make_pipeline, folder, "ingest.video_frames=6", "ingest.max_size=320")
    assert {s["name"] for s in result["skipped"]} == {"cut.mp4", "notes.mov"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all(m.startswith("skipping ") for m in warnings), warnings
    by_video = {v["name"]: v["taken"] for v in result["videos"]}
    assert set(by_video) == {"walk.mp4", "round.mov"} and all(3 <= n <= 6 for n in by_video.values())
    photos = result["photos"]
    assert len(photos) == 3 + sum(by_video.values())
    inputs = [PhotoInput(p["stem"], p["name"], folder / p["image"], p["image"], None, None, p["width"], p["height"],
                         p["source_width"], p["source_height"], p["focal_px"], p["camera"], True) for p in photos]
    groups = sorted(sorted(p.stem.split("_f")[0] for p in g) for g in camera_groups(inputs))
    assert groups == [["01", "02", "03"], ["round"] * by_video["round.mov"], ["walk"] * by_video["walk.mp4"]]


def test_a_video_cut_short_gives_frames_from_what_decodes(tmp_path, make_pipeline, caplog):
    folder = tmp_path / "cut"
    folder.mkdir()
    import av

    with av.open(str(folder / "whole.mp4"), "w", options={"movflags": "faststart"}) as container:  # index first
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        for i in range(60):
            image = np.full((96, 128, 3), 40, np.uint8)
            image[30:60, i:i + 30] = 230
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    whole = (folder / "whole.mp4").read_bytes()
    (folder / "whole.mp4").write_bytes(whole[: len(whole) * 2 // 3])
    with caplog.at_level(logging.WARNING, logger="neroic"):
        result, _ = _ingest(make_pipeline, folder, "ingest.video_frames=5")
    (video,) = result["videos"]
    assert 10 < video["frames"] < 60 and video["stopped"]  # a decoding error, or fewer frames than declared
    assert max(p["frame"] for p in result["photos"]) < video["frames"]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"whole.mp4: {video['stopped']}; frames are taken from the {video['frames']} that decode"]


def test_command_line_takes_one_video_and_refuses_other_files(portrait_clip, tmp_path):
    def neroic(*args):
        return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True,
                              timeout=300)

    done = neroic("run", portrait_clip.path, "--out", tmp_path / "clip.glb", "--until", "ingest", "-q",
                  "--set", "ingest.video_frames=8")
    assert done.returncode == 0, done.stderr
    assert "photos (8 frames of 1 video(s): clip.mp4 8)" in done.stdout
    report = (tmp_path / "clip.neroic" / "report.html").read_text()
    assert "clip.mp4" in report and "8 of 90 frames" in report
    (tmp_path / "notes.txt").write_text("hello")
    refused = neroic("run", tmp_path / "notes.txt", "--out", tmp_path / "x.glb")
    assert refused.returncode == 2 and "is a file but no video" in refused.stderr and "Traceback" not in refused.stderr


def test_a_video_is_posed_as_one_camera_and_the_report_shows_it(tmp_path):
    """Through the poses stage: the frames of one video share one camera, SfM poses them right
    (against the clip's true cameras), and the report names the video and shows the attempts."""
    from bench.poses_accuracy import score
    from stages.common.cameras import Frame, read_transforms

    clip = film_spot(tmp_path / "walk.mp4", size=320, seconds=4, seed=3)
    done = subprocess.run([sys.executable, "-m", "pipeline", "run", str(clip.path), "--out", str(tmp_path / "m.glb"),
                           "--until", "poses", "-q", "--set", "ingest.video_frames=30"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    work = tmp_path / "m.neroic"
    normalization = json.loads((work / "poses" / "normalization.json").read_text())
    assert len(normalization["registered"]) >= 27, normalization.get("attempts")
    assert set(normalization["camera_groups"].values()) == {"1 of 1: video:walk.mp4 (30 photos)"}
    posed = {f.stem: f for f in read_transforms(work / "poses" / "transforms.json", roots=[work])}
    assert len({round(f.fl_x, 6) for f in posed.values()}) == 1  # one set of intrinsics
    h, w = clip.upright[0].shape[:2]
    truth = {f"walk_f{i:04d}": Frame(f"walk_f{i:04d}", c2w, clip.focal, clip.focal, w / 2, h / 2, w, h)
             for i, c2w in enumerate(clip.c2w)}
    assert score(posed, truth)["rotation_deg"]["median"] < 2.0  # 0.6 measured
    report = (work / "report.html").read_text()
    assert "<b>walk.mp4</b>: 30 of 120 frames taken" in report and "Registration attempts" in report
