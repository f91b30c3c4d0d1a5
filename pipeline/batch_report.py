"""OUT/report.html of a batch: one row per capture with a thumbnail, its state, the key figures of
its stages (from their manifests), its compute time and peak memory, and links to the capture's
own report and model. Self-contained like the capture reports (thumbnails embedded as JPEG).
"""
from __future__ import annotations

import datetime as dt
import html
from pathlib import Path

from pipeline.batch import BatchRecord, CaptureRow
from pipeline.cache import read_manifest
from pipeline.report import REPORT_NAME, _embed
from stages import STAGE_NAMES

THUMBNAIL_WIDTH = 240
# Where a capture's thumbnail comes from, best first: the model, else the field's renders, else the photos.
THUMBNAILS = ("export/screenshot.png", "export/turntable.png", "geometry/heldout/*.png", "masks/contact_sheet.png")
KEY_FIGURES = ("ingest", "geometry", "material", "export")  # the stages whose one-line result the table shows


def _thumbnail(workdir: Path) -> str:
    for pattern in THUMBNAILS:
        stage, _, name = pattern.partition("/")
        if read_manifest(workdir / stage) is None:
            continue
        found = sorted((workdir / stage).glob(name))
        if found:
            return f'<img src="{_embed(found[0], THUMBNAIL_WIDTH)}" alt="{html.escape(pattern)}">'
    return ""


def _row(out: Path, row: CaptureRow) -> str:
    workdir = out / f"{row.name}.neroic"
    manifests = {stage: read_manifest(workdir / stage) or {} for stage in STAGE_NAMES}
    links = []
    if (workdir / REPORT_NAME).exists():
        links.append(f'<a href="{html.escape(row.name)}.neroic/{REPORT_NAME}">report</a>')
    if (out / f"{row.name}.glb").exists():
        links.append(f'<a href="{html.escape(row.name)}.glb">model</a>')
    if row.failed:
        state = f'<span class=failed>{html.escape(row.note)}</span>'
    else:
        state = "done" if row.done else html.escape(row.note)
    figures = "".join(f"<td>{html.escape(manifests[s].get('summary', {}).get('figure', ''))}</td>" for s in KEY_FIGURES)
    seconds = sum(m.get("seconds", 0) for m in manifests.values())
    peak = max((m.get("peak_rss_mb", 0) for m in manifests.values()), default=0)
    return (f"<tr><td>{_thumbnail(workdir)}</td><td><b>{html.escape(row.name)}</b><br>{' '.join(links)}</td>"
            f"<td>{state}</td>{figures}<td>{seconds:.0f} s</td><td>{peak:,.0f} MB</td></tr>")


def write_batch_report(out: Path, rows: list[CaptureRow], record: BatchRecord | None) -> Path:
    """(Re)write OUT/report.html; returns its path."""
    out = Path(out)
    meta = (f"written {dt.datetime.now().astimezone():%Y-%m-%d %H:%M}; "
            f"{sum(r.done for r in rows)} of {len(rows)} captures done")
    if record is not None:
        meta += f"; last batch: {record.engine}, {record.wall_seconds:.0f} s wall"
    head = "".join(f"<th>{h}</th>" for h in ("", "capture", "state", *KEY_FIGURES, "compute", "peak memory"))
    page = ("<!doctype html><html><head><meta charset=utf-8><title>neroic batch</title><style>"
            "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
            ".meta{color:#777}.failed{color:#b00;white-space:pre-wrap}</style></head><body>"
            f"<h1>neroic batch: {html.escape(str(out))}</h1><p class=meta>{html.escape(meta)}</p>"
            f"<table><tr>{head}</tr>{''.join(_row(out, r) for r in rows)}</table></body></html>")
    path = out / REPORT_NAME
    tmp = path.with_name(f".{REPORT_NAME}.tmp")
    tmp.write_text(page)
    tmp.replace(path)
    return path
