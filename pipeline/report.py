"""report.html: one self-contained page (no network needed) that shows a user whether to trust
the result: time and memory per stage; one row per photo joining what each stage said of it
(stages.common.notes: kept or dropped and why, its camera, mask, learned light); then the
pictures and links each stage declares in its StageSpec (stages/__init__.py). Rewritten at the
end of every `neroic run`, also after a failure, from whatever the stages have published;
pictures are embedded (JPEG, base64) so the file can be sent around; links lead into the workdir.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
from pathlib import Path

from PIL import Image

from pipeline.cache import read_manifest
from stages import STAGES
from stages.common.notes import read_photo_notes

REPORT_NAME = "report.html"
MAX_WIDTH = 1600

THUMB_HEIGHT = 64


def _embed(path: Path, max_width: int = MAX_WIDTH, max_height: int | None = None) -> str:
    with Image.open(path) as img:
        img = img.convert("RGB")
        img.thumbnail((max_width, max_height or img.height), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
    return f"data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}"


def _stage_rows(workdir: Path) -> str:
    rows = []
    for spec in STAGES:
        m = read_manifest(workdir / spec.name) or {}
        summary = m.get("summary", {})
        cells = [spec.name, "done" if m else "not run", m.get("started", ""),
                 f"{m['seconds']:.1f}" if "seconds" in m else "",
                 f"{m['peak_rss_mb']:,.0f}" if "peak_rss_mb" in m else "",
                 f"{m['peak_gpu_mb']:,.0f}" if m.get("peak_gpu_mb") is not None else "", summary.get("figure", "")]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return "\n".join(rows)


def _photo_table(workdir: Path) -> str:
    """One row per photo: every stage's notes on it, joined by stem, columns in stage order."""
    rows: dict[str, dict] = {}
    columns: list[tuple[str, str]] = []  # (stage, column)
    for spec in STAGES:
        if read_manifest(workdir / spec.name) is None:
            continue
        for stem, notes in read_photo_notes(workdir / spec.name).items():
            for column, value in notes.items():
                if (spec.name, column) not in columns:
                    columns.append((spec.name, column))
                rows.setdefault(stem, {})[(spec.name, column)] = value
    if not rows:
        return ""

    def cell(stage: str, value) -> str:
        if isinstance(value, dict) and "image" in value:
            path = workdir / stage / value["image"]
            return f'<img class=thumb src="{_embed(path, 4 * THUMB_HEIGHT, THUMB_HEIGHT)}">' if path.exists() else ""
        return html.escape(str(value))

    head = "".join(f"<th>{html.escape(column)}</th>" for _, column in columns)
    body = []
    for stem in sorted(rows):
        values = rows[stem]
        dropped = any(column == "dropped" for _, column in values)
        cells = "".join(f"<td>{cell(stage, values[(stage, column)]) if (stage, column) in values else ''}</td>"
                        for stage, column in columns)
        body.append(f"<tr{' class=dropped' if dropped else ''}><td>{html.escape(stem)}</td>{cells}</tr>")
    return (f"<h2>Photos</h2><p>What each stage did with every photo; dropped photos in red.</p>"
            f"<table><tr><th>photo</th>{head}</tr>{''.join(body)}</table>")


def write_report(workdir: Path, title: str, error: str | None = None) -> Path:
    """(Re)write WORKDIR/report.html from the published stage folders; returns its path."""
    workdir = Path(workdir)
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p class=meta>written {dt.datetime.now().astimezone():%Y-%m-%d %H:%M} in {html.escape(str(workdir))}</p>"]
    if error:
        parts.append(f"<p class=error>The last run stopped: {html.escape(error)}</p>")
    parts.append("<h2>Stages</h2><table><tr><th>stage</th><th>status</th><th>started</th><th>seconds</th>"
                 f"<th>peak MB</th><th>peak GPU MB</th><th>result</th></tr>{_stage_rows(workdir)}</table>")
    parts.append(_photo_table(workdir))
    for spec in STAGES:
        if read_manifest(workdir / spec.name) is None:
            continue
        for link in spec.links:
            for p in sorted((workdir / spec.name).glob(link.pattern)):
                href = html.escape(p.relative_to(workdir).as_posix())
                parts.append(f'<h2><a href="{href}">{html.escape(link.title)}</a></h2><p>{html.escape(link.caption)}</p>')
        for figure in spec.figures:
            files = [p for pattern in figure.patterns for p in sorted((workdir / spec.name).glob(pattern))]
            if not files:
                continue
            imgs = "".join(f'<figure><img src="{_embed(p)}" alt="{html.escape(p.name)}">'
                           f"<figcaption>{html.escape(p.name)}</figcaption></figure>" for p in files)
            parts.append(f"<h2>{html.escape(figure.title)}</h2><p>{html.escape(figure.caption)}</p>{imgs}")
    page = ("<!doctype html><html><head><meta charset=utf-8><title>" + html.escape(title) + "</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1700px;color:#222}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
            "img{max-width:100%;border:1px solid #ddd}figure{margin:1em 0}.meta{color:#777}"
            ".error{color:#b00;font-weight:bold}.dropped td{color:#b00}img.thumb{border:0}"
            "</style></head><body>" + "\n".join(parts) + "</body></html>")
    path = workdir / REPORT_NAME
    tmp = path.with_name(f".{REPORT_NAME}.tmp")
    tmp.write_text(page)
    tmp.replace(path)
    return path
