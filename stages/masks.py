"""Stage 2, masks: one foreground mask per photo.

Inputs   ingest/ (photos.json, images/, alpha/); optionally the user's mask folder
         (`--masks DIR`: files named like the photos, e.g. 01.png or 01.jpg.png for 01.jpg).
Outputs  masks/<stem>.png        8-bit greyscale mask at the working size (object >= threshold)
         masks/masks.json        {"threshold": t, "masks": [{stem, mask, source, fraction, sharpness,
                                 status}]} source: "user" | "alpha" | "rembg"; status: "ok" |
                                 "empty" | "full" | "blurred" (sharpness: energy of the Laplacian
                                 over that of the gradient inside the mask, at the object's
                                 typical size in pixels)
         masks/contact_sheet.png every photo with its mask overlaid, excluded ones labelled red
Config   [masks] model, use_alpha, min_fraction, max_fraction, threshold, min_relative_sharpness.
Order    a user mask wins, then the photo's own alpha (use_alpha), then rembg with `model`.
Cache    reruns when ingest's output, the user's masks or the config change.
Failures rembg weights missing (run `make setup`; they are never downloaded at run time),
         an unreadable user mask (error naming it); masks that are nearly empty or nearly the
         whole photo, and photos far blurrier than the others, are flagged, excluded downstream
         and named in a warning; fewer than 3 usable masks is an error.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from stages.common.notes import write_photo_notes
from stages.context import StageContext
from stages.errors import NeroicError
from stages.common.images import UnreadableImage, load_photo, read_mask, read_rgb, resize, sharpness, write_png
from stages.common.sheets import contact_sheet, mask_overlay

USABLE_MINIMUM = 3


def weights_home() -> Path:
    """Where rembg looks for its .onnx weights (rembg's own rule: $U2NET_HOME or ~/.u2net)."""
    return Path(os.environ.get("U2NET_HOME", Path.home() / ".u2net")).expanduser()


class RembgMasker:
    """rembg, strictly offline: the weights must already be in weights_home()."""

    def __init__(self, model: str, threads: int = 0):
        weights = weights_home() / f"{model}.onnx"
        if not weights.exists():
            raise NeroicError(f"mask model weights {weights} not found (rembg model '{model}')",
                              hint="run `make setup`, which installs u2netp offline; or give masks "
                                   "with --masks DIR; or set U2NET_HOME to the folder holding the .onnx file")
        import rembg
        from onnxruntime import SessionOptions
        from PIL import Image

        self._remove, self._image = rembg.remove, Image
        options = SessionOptions()  # 0 threads: onnxruntime's default (rembg applies OMP_NUM_THREADS then)
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        try:
            self._session = rembg.new_session(model, sess_opts=options)
        except Exception as e:  # rembg raises plain exceptions for unknown names or bad files
            raise NeroicError(f"rembg could not load model '{model}': {e}") from None

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        mask = self._remove(self._image.fromarray(rgb), session=self._session, only_mask=True)
        return np.asarray(mask.convert("L"))


def _user_mask_files(folder: Path | None) -> dict[str, Path]:
    """Index a user's mask folder by every name a photo could be matched with."""
    if folder is None:
        return {}
    index = {}
    for p in sorted(Path(folder).iterdir()):
        if p.is_file() and not p.name.startswith("."):
            index.setdefault(p.stem, p)  # 01.png -> "01";  01.jpg.png -> "01.jpg"
    return index


def _classify(fraction: float, cfg: dict) -> str:
    if fraction < cfg["min_fraction"]:
        return "empty"
    if fraction > cfg["max_fraction"]:
        return "full"
    return "ok"


def object_scales(fractions: list[float], pixels: list[int]) -> list[float]:
    """The factor (at most 1) that brings each photo's object to the median object's size in
    pixels (the square root of its mask's area): blur is judged at the object's scale, so a
    close-up, softer per pixel but as detailed, is not taken for a blurred photo (milk_28: 13 % of
    the typical sharpness at its own scale, the old measure)."""
    sizes = np.sqrt(np.asarray(fractions) * np.asarray(pixels))
    typical = float(np.median(sizes[sizes > 0])) if (sizes > 0).any() else 0.0
    return [min(1.0, typical / size) if size > 0 else 1.0 for size in sizes]


def run(ctx: StageContext) -> dict:
    cfg = ctx.config
    ingest = ctx.input("ingest")
    photos = json.loads((ingest / "photos.json").read_text())["photos"]
    user = _user_mask_files(ctx.sources.masks)
    masker = None
    entries, tiles, labels, colours = [], [], [], []
    for photo in ctx.progress(photos, desc="masks", unit="photo"):
        stem, size = photo["stem"], (photo["width"], photo["height"])
        user_file = user.get(photo["name"]) or user.get(stem)
        if user_file is not None:
            try:
                mask = resize(load_photo(user_file, ctx.settings["ingest"]["max_pixels"]).rgb.max(axis=2), size)
            except UnreadableImage as e:
                raise NeroicError(f"user mask {user_file} is unreadable: {e}") from None
            source = "user"
        elif cfg["use_alpha"] and photo["alpha"]:
            mask, source = read_mask(ingest / photo["alpha"]), "alpha"
        else:
            if ctx.sources.masks is not None:
                ctx.log.warning("no mask for %s in %s: using rembg", photo["name"], ctx.sources.masks)
            masker = masker or RembgMasker(cfg["model"], ctx.threads)
            mask, source = masker(read_rgb(ingest / photo["image"])), "rembg"
        write_png(ctx.out / f"{stem}.png", mask)
        rgb = read_rgb(ingest / photo["image"])
        fraction = float((mask >= cfg["threshold"]).mean())
        entries.append({"stem": stem, "mask": f"{stem}.png", "source": source, "fraction": round(fraction, 5),
                        "status": _classify(fraction, cfg)})
        tiles.append(mask_overlay(rgb, mask, cfg["threshold"]))
    scales = object_scales([e["fraction"] for e in entries], [p["width"] * p["height"] for p in photos])
    for photo, entry, scale in zip(photos, entries, scales):
        mask = read_mask(ctx.out / entry["mask"]) >= cfg["threshold"]
        entry["sharpness"] = round(sharpness(read_rgb(ingest / photo["image"]), mask, scale), 3)
    typical = float(np.median([e["sharpness"] for e in entries if e["status"] == "ok"] or [0.0]))
    for e in entries:
        if e["status"] == "ok" and e["sharpness"] < cfg["min_relative_sharpness"] * typical:
            e["status"] = "blurred"
    for e in entries:
        labels.append(f"{e['stem']} {e['fraction']:.0%}" + ("" if e["status"] == "ok" else f" {e['status'].upper()}"))
        colours.append((230, 230, 230) if e["status"] == "ok" else (255, 80, 80))
    write_png(ctx.out / "contact_sheet.png", contact_sheet(tiles, labels, label_colours=colours))
    write_photo_notes(ctx.out, {e["stem"]: {"mask": f"{e['source']}, {e['fraction']:.0%} of the photo"} |
                                ({} if e["status"] == "ok" else {"dropped": "blurred" if e["status"] == "blurred"
                                                                 else f"its mask is {e['status']}"})
                                for e in entries})
    (ctx.out / "masks.json").write_text(json.dumps({"threshold": cfg["threshold"], "masks": entries}, indent=2))
    flagged = [e for e in entries if e["status"] != "ok"]
    for e in flagged:
        if e["status"] == "blurred":
            ctx.log.warning("excluding %s: it is blurred (%.0f%% of the photos' typical sharpness)", e["stem"],
                            100 * e["sharpness"] / max(typical, 1e-9))
        else:
            ctx.log.warning("excluding %s: its mask is %s (%.1f%% of the photo)", e["stem"], e["status"],
                            100 * e["fraction"])
    usable = len(entries) - len(flagged)
    if usable < USABLE_MINIMUM:
        raise NeroicError(f"only {usable} photo(s) have a usable mask ({len(flagged)} empty or full)",
                          hint="check the photos against a plain background, or give masks with --masks DIR")
    sources = sorted({e["source"] for e in entries})
    return {"figure": f"{usable}/{len(entries)} usable ({', '.join(sources)})"
                      + (f", excluded: {', '.join(e['stem'] for e in flagged)}" if flagged else ""),
            "usable": usable, "excluded": [e["stem"] for e in flagged]}
