"""Stage 1, ingest: read and validate the photos and videos, apply orientation, resize.

Inputs   the user's photos (`sources.photos`): a folder (files directly inside it, hidden files
         ignored) of photos (JPEG, PNG, HEIC, TIFF, WebP, camera RAW; any mode: RGB, RGBA,
         greyscale, palette, 16-bit, CMYK) and videos (VIDEO_SUFFIXES: MP4, MOV, MKV, WebM, ...),
         or one video file.
Outputs  ingest/images/<stem>.png   8-bit sRGB RGB working copies, longest side <= max_size
         ingest/alpha/<stem>.png    the photo's own alpha (only photos that have a real one)
         ingest/photos.json         {"photos": [{name, stem, image, alpha, width, height,
                                     source_width, source_height, focal_px, camera, sha256,
                                     and for a video's frame: video, frame, time}],
                                     "videos": [{name, ..., "taken": [{stem, frame, time, why}]}],
                                     "skipped": [{name, reason}], "duplicates": [{name, same_as}]}
         `focal_px` is the EXIF focal length converted to pixels of the working copy (a hint
         for SfM; null when EXIF lacks it, and for video frames).
         A video gives up to `video_frames` frames, each a photo named <video stem>_f<frame number>
         (stages/common/frame_choice.py: spread along the camera's path, each the sharpest of its
         stretch), upright by the video's rotation metadata, all with the camera "video:<name>",
         so SfM gives them one set of intrinsics.
Config   [ingest] max_size, max_pixels, min_photos, video_frames, video_min_motion.
Cache    reruns when any file's bytes, the file list or the config change.
Failures unreadable, corrupt, oversized (pixel limit) or non-image files, and videos that do
         not decode, are skipped with a warning naming them (a video that breaks off midway gives
         frames from the part before); exact duplicates (same bytes) are dropped; fewer than
         `min_photos` usable photos (frames included) is an error.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np

from stages.common.frame_choice import choose_frames, image_motion, motion_frame
from stages.common.notes import write_photo_notes
from stages.common.video import VIDEO_CAMERA, VIDEO_SUFFIXES, UnreadableVideo, decode_frames, probe_video
from stages.context import StageContext
from stages.errors import NeroicError
from stages.common.images import UnreadableImage, load_photo, resize, sharpness, write_png

MM_PER_INCH, MM_PER_CM = 25.4, 10.0
FULL_FRAME_DIAGONAL_MM = 43.27
JUDGE_SIZE = 512  # px, longest side: a video's frames are judged (sharpness, motion) at most this large


def _ratio(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def focal_from_exif(exif: dict, width: int, height: int) -> float | None:
    """EXIF focal length -> pixels at an upright image of `width` x `height`.

    Uses the sensor's pixel density (FocalPlaneXResolution, relative to ExifImageWidth),
    else the 35 mm-equivalent focal over the full-frame diagonal.
    """
    focal_mm = _ratio(exif.get("FocalLength"))
    density = _ratio(exif.get("FocalPlaneXResolution"))
    unit = {2: MM_PER_INCH, 3: MM_PER_CM, 4: 1.0}.get(exif.get("FocalPlaneResolutionUnit", 2))
    exif_w, exif_h = _ratio(exif.get("ExifImageWidth")), _ratio(exif.get("ExifImageHeight"))
    if focal_mm and density and unit and exif_w and exif_h:
        # The EXIF dimensions may be those of the sensor before rotation: compare long sides.
        return focal_mm * density / unit * max(width, height) / max(exif_w, exif_h)
    focal_35 = _ratio(exif.get("FocalLengthIn35mmFilm"))
    if focal_35:
        return focal_35 / FULL_FRAME_DIAGONAL_MM * math.hypot(width, height)
    return None


def _unique_stem(stem: str, used: set[str], suffix: str = "") -> str:
    """`stem`, or, when taken, stem_<suffix> ('a.jpg' and 'a.png' become 'a' and 'a_png'), then
    stem_2, stem_3, ...; the result is marked used."""
    candidate = stem if stem not in used or not suffix else f"{stem}_{suffix}"
    n = 1
    while candidate in used:
        n += 1
        candidate = f"{stem}_{n}"
    used.add(candidate)
    return candidate


def _scaled(width: int, height: int, longest: int) -> tuple[int, int]:
    """(w, h) with the longest side at most `longest` (never upscaled)."""
    scale = min(1.0, longest / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:  # in blocks: a phone video is hundreds of MB
        return hashlib.file_digest(f, "sha256").hexdigest()


def _input_files(source: Path | None) -> list[Path]:
    """The files to read: the one video given, or the files directly inside the folder given."""
    if source is None or not Path(source).exists():
        raise NeroicError(f"photo folder {source} not found")
    source = Path(source)
    if source.is_file():
        if source.suffix.lower() not in VIDEO_SUFFIXES:
            raise NeroicError(f"{source} is neither a folder of photos nor a video",
                              hint="give a folder of photos and videos, or one video file (MP4, MOV, ...)")
        return [source]
    files = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise NeroicError(f"no files in {source}", hint="point neroic at a folder of photos or videos")
    return files


def _read_photo(ctx: StageContext, path: Path, stem: str, digest: str) -> dict:
    """One photo's working copy (and alpha) written; its photos.json entry. UnreadableImage if bad."""
    photo = load_photo(path, ctx.config["max_pixels"])
    src_h, src_w = photo.rgb.shape[:2]
    size = _scaled(src_w, src_h, ctx.config["max_size"])
    write_png(ctx.out / "images" / f"{stem}.png", resize(photo.rgb, size))
    alpha_rel = None
    if photo.alpha is not None:
        (ctx.out / "alpha").mkdir(exist_ok=True)
        alpha_rel = f"alpha/{stem}.png"
        write_png(ctx.out / alpha_rel, resize(photo.alpha, size))
    make, model = (str(photo.exif.get(k, "")).strip("\x00 ") for k in ("Make", "Model"))
    camera = model if model.startswith(make) else f"{make} {model}".strip()
    focal = focal_from_exif(photo.exif, src_w, src_h)
    return {"name": path.name, "stem": stem, "image": f"images/{stem}.png", "alpha": alpha_rel,
            "width": size[0], "height": size[1], "source_width": src_w, "source_height": src_h,
            "focal_px": round(focal * size[0] / src_w, 3) if focal else None,
            "camera": camera or None, "sha256": digest}


def _read_video(ctx: StageContext, path: Path, used: set[str], digest: str) -> tuple[list[dict], dict]:
    """A video's chosen frames written as photos: their photos.json entries and the video's record
    (what it is, how many frames it had and gave, why each, the time spent). UnreadableVideo if bad.

    Two passes: the first decodes every frame small and judges it (sharpness, motion since the
    one before), the second decodes up to the last chosen frame and writes the chosen ones."""
    cfg = ctx.config
    started = time.perf_counter()
    info = probe_video(path, cfg["max_pixels"])
    sharpnesses, motions, previous, stopped = [], [], None, None
    bar = ctx.progress(total=info.frames or None, desc=f"decoding {path.name}", unit="frame")
    try:
        judged = _scaled(info.width, info.height, JUDGE_SIZE)
        for _, _, image in decode_frames(path, info, judged, threads=ctx.threads):
            sharpnesses.append(sharpness(image, np.ones(image.shape[:2], dtype=bool)))
            grey = motion_frame(image)
            motions.append(0.0 if previous is None else image_motion(previous, grey))
            previous = grey
            bar.update()
    except UnreadableVideo as e:
        if not sharpnesses:
            raise
        stopped = str(e)
    finally:
        bar.close()
    if stopped is None and len(motions) < 0.9 * info.frames:  # FFmpeg ends a cut file quietly
        stopped = f"only {len(motions)} of the {info.frames} frames its header declares decode (a cut file?)"
    decoded = time.perf_counter()
    chosen = choose_frames(np.array(motions), np.array(sharpnesses), cfg["video_frames"], cfg["video_min_motion"])
    why = {c.index: c.why() for c in chosen}
    digits = max(4, len(str(len(motions) - 1)))
    stems = {c.index: _unique_stem(f"{path.stem}_f{c.index:0{digits}d}", used) for c in chosen}
    size = _scaled(info.width, info.height, cfg["max_size"])
    entries = []
    try:
        for index, seconds, image in ctx.progress(
                decode_frames(path, info, size, upright=True, wanted=set(why), threads=ctx.threads),
                total=len(why), desc=f"taking {len(why)} frames of {path.name}", unit="frame"):
            stem = stems[index]
            write_png(ctx.out / "images" / f"{stem}.png", image)
            entries.append({"name": f"{path.name} frame {index}", "stem": stem, "image": f"images/{stem}.png",
                            "alpha": None, "width": size[0], "height": size[1], "source_width": info.width,
                            "source_height": info.height, "focal_px": None, "camera": f"{VIDEO_CAMERA}{path.name}",
                            "sha256": digest, "video": path.name, "frame": index, "time": round(seconds, 3)})
    except UnreadableVideo:  # the video is skipped: none of its frames stays behind
        for entry in entries:
            (ctx.out / entry["image"]).unlink()
        raise
    finished = time.perf_counter()
    record = {"name": path.name, "format": info.describe(), "frames": len(motions), "taken": len(entries),
              "motion": round(float(np.sum(motions)), 4), "stopped": stopped,
              "seconds": {"judging": round(decoded - started, 2), "taking": round(finished - decoded, 2)},
              "frames_taken": [{"stem": e["stem"], "frame": e["frame"], "time": e["time"], "why": why[e["frame"]]}
                               for e in entries]}
    return entries, record


def run(ctx: StageContext) -> dict:
    cfg = ctx.config
    source = ctx.sources.photos
    files = _input_files(source)
    photo_files = [p for p in files if p.suffix.lower() not in VIDEO_SUFFIXES]
    video_files = [p for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
    (ctx.out / "images").mkdir()
    photos, videos, skipped, duplicates, seen, used = [], [], [], [], {}, set()
    stems = {p: _unique_stem(p.stem, used, p.suffix.lstrip(".")) for p in photo_files}

    def first_copy(path: Path) -> str | None:
        """The file's digest, or None (with a warning) when an earlier file had the same bytes."""
        digest = _sha256(path)
        if digest in seen:
            duplicates.append({"name": path.name, "same_as": seen[digest]})
            ctx.log.warning("skipping %s: an exact duplicate of %s", path.name, seen[digest])
            return None
        return digest

    def skip(path: Path, reason: str) -> None:
        skipped.append({"name": path.name, "reason": reason})
        ctx.log.warning("skipping %s: %s", path.name, reason)

    for path in ctx.progress(photo_files, desc="reading photos", unit="photo") if photo_files else ():
        if (digest := first_copy(path)) is None:
            continue
        try:
            photos.append(_read_photo(ctx, path, stems[path], digest))
        except UnreadableImage as e:
            skip(path, str(e))
            continue
        seen[digest] = path.name
    for path in video_files:
        if (digest := first_copy(path)) is None:
            continue
        try:
            frames, record = _read_video(ctx, path, used, digest)
        except UnreadableVideo as e:
            skip(path, str(e))
            continue
        seen[digest] = path.name
        photos += frames
        videos.append(record)
        if record["stopped"]:
            ctx.log.warning("%s: %s; frames are taken from the %d that decode", path.name, record["stopped"],
                            record["frames"])
        ctx.log.info("%s (%s): %d frames, the picture moved %.2f frame diagonals in all; %d taken, spread along "
                     "that path, each the sharpest of its stretch; judging the frames took %.1f s, taking them %.1f s",
                     path.name, record["format"], record["frames"], record["motion"], record["taken"],
                     record["seconds"]["judging"], record["seconds"]["taking"])
    (ctx.out / "photos.json").write_text(json.dumps(
        {"photos": photos, "videos": videos, "skipped": skipped, "duplicates": duplicates}, indent=2))
    notes = {p["stem"]: {"photo": {"image": p["image"]}, "file": p["name"], "camera": p["camera"] or "no EXIF"}
             for p in photos}
    for video in videos:
        for frame in video["frames_taken"]:
            notes[frame["stem"]] |= {"file": f"{video['name']} frame {frame['frame']} at {frame['time']:.2f} s",
                                     "taken": frame["why"]}
    notes.update({s["name"]: {"file": s["name"], "dropped": f"unreadable: {s['reason']}"} for s in skipped})
    notes.update({d["name"]: {"file": d["name"], "dropped": f"a duplicate of {d['same_as']}"} for d in duplicates})
    write_photo_notes(ctx.out, notes)
    if len(photos) < cfg["min_photos"]:
        detail = f" ({len(skipped)} unreadable, {len(duplicates)} duplicates)" if skipped or duplicates else ""
        raise NeroicError(f"only {len(photos)} usable photo(s) in {source}{detail}; "
                          f"at least {cfg['min_photos']} are needed",
                          hint="photograph or film the object from all around, 20 or more photos with overlap")
    cameras = len({p["camera"] for p in photos})
    from_videos = sum(v["taken"] for v in videos)
    figure = f"{len(photos)} photos"
    if videos:
        figure += (f" ({from_videos} frames of {len(videos)} video(s): "
                   + ", ".join(f"{v['name']} {v['taken']}" for v in videos) + ")")
    figure += "".join(f", {n} {what}" for n, what in ((len(skipped), "skipped"), (len(duplicates), "duplicates")) if n)
    return {"figure": f"{figure}, {cameras} camera(s)", "photos": len(photos), "videos": len(videos),
            "video_frames": from_videos, "skipped": len(skipped), "duplicates": len(duplicates)}
