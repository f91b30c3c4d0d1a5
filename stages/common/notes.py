"""What a stage says about each photo, for the run report's photo cards.

    write_photo_notes(ctx.out, {"img_003": {"mask": "rembg, 23%", "light": {"image": "spheres/img_003.png"}}})

A stage publishes photo_notes.json: {"rows": {stem: {column: text | {"image": path relative to
the stage folder}}}}. The report joins every stage's rows by stem, columns in stage order, so a
user sees on each photo's card whether it was kept, and if not, which stage dropped it and why.
Its badges read three columns: "dropped" (any stage: why), and the geometry stage's "role"
("training" or "held out") and "mask check" (starting "repaired" when the mask was cut).
"""
from __future__ import annotations

import json
from pathlib import Path

NOTES_NAME = "photo_notes.json"


def write_photo_notes(folder: Path, rows: dict[str, dict]) -> None:
    (Path(folder) / NOTES_NAME).write_text(json.dumps({"rows": rows}, indent=1) + "\n", encoding="utf-8")


def read_photo_notes(folder: Path) -> dict[str, dict]:
    """{stem: {column: value}} of a published stage folder ({} when it wrote none)."""
    path = Path(folder) / NOTES_NAME
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8")).get("rows", {})
