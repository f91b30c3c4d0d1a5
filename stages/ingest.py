"""Stage 1, ingest: read and validate the photos, apply EXIF orientation, resize.

Inputs   the user's photo folder (`sources.photos`; files directly inside it, hidden files
         ignored). JPEG and PNG in any mode: RGB, RGBA, greyscale, palette, 16-bit.
Outputs  ingest/images/<stem>.png   8-bit sRGB RGB working copies, longest side <= max_size
         ingest/alpha/<stem>.png    the photo's own alpha (only photos that have a real one)
         ingest/photos.json         {"photos": [{name, stem, image, alpha, width, height,
                                     source_width, source_height, focal_px, camera, sha256}],
                                     "skipped": [{name, reason}], "duplicates": [{name, same_as}]}
         `focal_px` is the EXIF focal length converted to pixels of the working copy (a hint
         for SfM; null when EXIF lacks it).
Config   [ingest] max_size, max_pixels, min_photos.
Cache    reruns when any photo's bytes, the file list or the config change.
Failures unreadable, corrupt, oversized (pixel limit) or non-image files are skipped with a
         warning naming them; exact duplicates (same bytes) are dropped; fewer than
         `min_photos` usable photos is an error.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from stages.common.notes import write_photo_notes
from stages.context import StageContext
from stages.errors import NeroicError
from stages.common.images import UnreadableImage, load_photo, resize, write_png

MM_PER_INCH, MM_PER_CM = 25.4, 10.0
FULL_FRAME_DIAGONAL_MM = 43.27


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


def _stems(names: list[str]) -> dict[str, str]:
    """File name -> unique output stem ('a.jpg' and 'a.png' become 'a' and 'a_png')."""
    stems, used = {}, set()
    for name in names:
        stem = Path(name).stem
        if stem in used:
            stem = f"{stem}_{Path(name).suffix.lstrip('.')}"
        n = 1
        while stem in used:
            n += 1
            stem = f"{Path(name).stem}_{n}"
        used.add(stem)
        stems[name] = stem
    return stems


def run(ctx: StageContext) -> dict:
    cfg = ctx.config
    folder = ctx.sources.photos
    if folder is None or not Path(folder).is_dir():
        raise NeroicError(f"photo folder {folder} not found")
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise NeroicError(f"no files in {folder}", hint="point neroic at a folder of JPEG or PNG photos")
    (ctx.out / "images").mkdir()
    photos, skipped, duplicates, seen = [], [], [], {}
    stems = _stems([p.name for p in files])
    for path in ctx.progress(files, desc="reading photos", unit="photo"):
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            duplicates.append({"name": path.name, "same_as": seen[digest]})
            ctx.log.warning("skipping %s: an exact duplicate of %s", path.name, seen[digest])
            continue
        try:
            photo = load_photo(path, cfg["max_pixels"])
        except UnreadableImage as e:
            skipped.append({"name": path.name, "reason": str(e)})
            ctx.log.warning("skipping %s: %s", path.name, e)
            continue
        seen[digest] = path.name
        src_h, src_w = photo.rgb.shape[:2]
        scale = min(1.0, cfg["max_size"] / max(src_w, src_h))
        size = (max(1, round(src_w * scale)), max(1, round(src_h * scale)))
        stem = stems[path.name]
        write_png(ctx.out / "images" / f"{stem}.png", resize(photo.rgb, size))
        alpha_rel = None
        if photo.alpha is not None:
            (ctx.out / "alpha").mkdir(exist_ok=True)
            alpha_rel = f"alpha/{stem}.png"
            write_png(ctx.out / alpha_rel, resize(photo.alpha, size))
        make, model = (str(photo.exif.get(k, "")).strip("\x00 ") for k in ("Make", "Model"))
        camera = model if model.startswith(make) else f"{make} {model}".strip()
        focal = focal_from_exif(photo.exif, src_w, src_h)
        photos.append({
            "name": path.name, "stem": stem, "image": f"images/{stem}.png", "alpha": alpha_rel,
            "width": size[0], "height": size[1], "source_width": src_w, "source_height": src_h,
            "focal_px": round(focal * size[0] / src_w, 3) if focal else None,
            "camera": camera or None, "sha256": digest,
        })
    (ctx.out / "photos.json").write_text(json.dumps(
        {"photos": photos, "skipped": skipped, "duplicates": duplicates}, indent=2))
    notes = {p["stem"]: {"photo": {"image": p["image"]}, "file": p["name"], "camera": p["camera"] or "no EXIF"}
             for p in photos}
    notes.update({s["name"]: {"file": s["name"], "dropped": f"unreadable: {s['reason']}"} for s in skipped})
    notes.update({d["name"]: {"file": d["name"], "dropped": f"a duplicate of {d['same_as']}"} for d in duplicates})
    write_photo_notes(ctx.out, notes)
    if len(photos) < cfg["min_photos"]:
        detail = f" ({len(skipped)} unreadable, {len(duplicates)} duplicates)" if skipped or duplicates else ""
        raise NeroicError(f"only {len(photos)} usable photo(s) in {folder}{detail}; "
                          f"at least {cfg['min_photos']} are needed",
                          hint="photograph the object from all around, 20 or more photos with overlap")
    cameras = len({p["camera"] for p in photos})
    extra = "".join(f", {n} {what}" for n, what in ((len(skipped), "skipped"), (len(duplicates), "duplicates")) if n)
    return {"figure": f"{len(photos)} photos{extra}, {cameras} camera model(s)",
            "photos": len(photos), "skipped": len(skipped), "duplicates": len(duplicates)}
