"""report.html: one self-contained page (no network needed) that shows a user what came out and
whether to trust it, most important first:

  1. the model: its turntable (the export's renders, animated) and the three.js still, a link to
     viewer.html and to every file the export wrote;
  2. the key figures in one line (photos, posed, held out and their PSNR, triangles, time);
  3. the videos, if any: each one's frames taken and the time that took;
  4. a grid of photo thumbnails, each with a badge (kept, held out, dropped and why, mask
     repaired), opening on what every stage said of it (stages.common.notes);
  5. the stage table (time, memory, each stage's one-line result);
  6. details on demand: the registration attempts (which model won and why) and the pictures
     each stage declares in its StageSpec (stages/__init__.py).

Rewritten at the end of every `neroic run`, also after a failure, from whatever the stages have
published (`write_report(workdir, title)` rewrites it from a workdir alone). Pictures are embedded
(JPEG, base64) so the file can be sent around; links lead into the workdir. The layout holds from
phone to laptop width.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
from pathlib import Path

from PIL import Image

from pipeline.cache import read_manifest
from stages import STAGES
from stages.common.notes import read_photo_notes
from stages.common.video import VIDEO_SUFFIXES

REPORT_NAME = "report.html"
MAX_WIDTH = 1600
THUMB_WIDTH = 200  # px of the grid's photo thumbnails (shown at about half that, sharp on dense screens)
MODEL_WIDTH = 400  # px of the model's pictures (--model in STYLE)
SPIN_SECONDS = 6  # one turn of the turntable (the animation's length in STYLE)
# Registration attempts: normalization.json's attempt_records keys shown, and their headings.
ATTEMPT_COLUMNS = (("reprojection_px", "reprojection px"), ("points_inside_masks", "points inside masks"),
                   ("hull_covers_mask", "hull covers mask"))

STYLE = """
:root{--model:400px}
body{font-family:system-ui,sans-serif;margin:0 auto;padding:1em 2em;max-width:1400px;color:#222;line-height:1.4}
h1{margin:.2em 0}h2{margin:1.4em 0 .5em}a{color:#1558b0}.meta{color:#777;font-size:.9em;overflow-wrap:anywhere}
.error{color:#b00;font-weight:bold}.scroll{overflow-x:auto}.scroll>table{min-width:44em}
table{border-collapse:collapse;font-size:.92em}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#f6f6f6}td.num{text-align:right;white-space:nowrap}
.model{display:flex;flex-wrap:wrap;gap:1em 1.5em;align-items:flex-start}.model figure{margin:0}
.model figcaption{color:#666;font-size:.85em;max-width:min(var(--model),42vw)}
.turntable{position:relative;width:min(var(--model),42vw);aspect-ratio:1;background:#fff}
.turntable img{position:absolute;inset:0;width:100%;opacity:0;animation:turn 6s step-end infinite}
.turntable img:first-child{opacity:1}.still{width:min(var(--model),42vw);border:1px solid #eee;display:block}
.files{flex:1 1 18em}.files li{margin:.2em 0}.viewer{display:inline-block;margin:.3em 0 .8em;padding:.5em 1em;
background:#1558b0;color:#fff;border-radius:6px;text-decoration:none;font-weight:bold}
.figures{font-size:1.05em;background:#f3f6fa;border-radius:6px;padding:.6em 1em}.figures b{white-space:nowrap}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(108px,1fr));gap:10px;align-items:start}
.card{border:1px solid #ddd;border-radius:6px;padding:4px;background:#fff;font-size:.8em}
.card[open]{grid-column:span 2}.card summary{list-style:none;cursor:pointer}
.card summary::-webkit-details-marker{display:none}.card .thumb{width:100%;aspect-ratio:4/3;object-fit:cover;
display:block;border-radius:3px;background:#eee}.card .stem{font-weight:bold;overflow-wrap:anywhere}
.badge{display:inline-block;border-radius:3px;padding:0 5px;margin:2px 2px 0 0;color:#fff;font-size:.9em}
.kept{background:#2e7d32}.held{background:#1565c0}.dropped{background:#c62828}.repaired{background:#ef6c00}
.bad{color:#c62828}
.why{color:#c62828;display:-webkit-box;-webkit-line-clamp:2;-webkit-box-orient:vertical;overflow:hidden}
.card.out{background:#fff5f5;border-color:#f3c4c4}.card dl{margin:.4em 0 0}.card dt{color:#777;margin-top:.3em}
.card dd{margin:0;overflow-wrap:anywhere}.card dd img{height:48px}.legend .badge{margin-right:.3em}
details.more{margin:.6em 0;border-top:1px solid #eee;padding-top:.4em}details.more>summary{cursor:pointer;
font-weight:bold}details.more img{max-width:100%;border:1px solid #ddd}figure{margin:.6em 0}
@media (max-width:600px){body{padding:.6em .8em}.grid{grid-template-columns:repeat(auto-fill,minmax(96px,1fr))}}
"""


def _embed(path: Path, max_width: int = MAX_WIDTH, max_height: int | None = None) -> str:
    """The picture as a data: URL (JPEG), at most max_width x max_height; transparency over white."""
    with Image.open(path) as img:
        if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        img = img.convert("RGB")
        img.thumbnail((max_width, max_height or img.height), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
    return f"data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _esc(value) -> str:
    return html.escape(str(value))


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _model(workdir: Path, manifests: dict[str, dict]) -> str:
    """The turntable, the still, the viewer link and the files; a line saying why when there is no model yet."""
    export = workdir / "export"
    if "export" not in manifests:
        return ("<h2>Model</h2><p>No model yet: the export stage has not run. The stage table below says how far "
                "the run got.</p>")
    pictures = []
    frames = sorted((export / "turntable").glob("*.png"))
    if frames:
        delay = SPIN_SECONDS / len(frames)
        # each frame is shown for its share of the turn; without animation the first stays (CSS)
        imgs = "".join(f'<img src="{_embed(p, MODEL_WIDTH)}" alt="turntable {k}" '
                       f'style="animation-delay:{k * delay:.3f}s">' for k, p in enumerate(frames))
        keyframes = f"@keyframes turn{{0%{{opacity:1}}{100 / len(frames):.3f}%{{opacity:0}}100%{{opacity:0}}}}"
        pictures.append(f"<figure><style>{keyframes}</style><div class=turntable>{imgs}</div><figcaption>The exported "
                        "model turning, under the photos' mean learned light.</figcaption></figure>")
    if (export / "screenshot.png").exists():
        pictures.append(f'<figure><img class=still src="{_embed(export / "screenshot.png", MODEL_WIDTH)}" '
                        'alt="the model in three.js"><figcaption>The GLB in a glTF viewer '
                        "(three.js), from the first photo's side.</figcaption></figure>")
    links = []
    for spec in STAGES:
        for link in spec.links if spec.name in manifests else ():
            for p in sorted((workdir / spec.name).glob(link.pattern)):
                links.append(f'<a class=viewer href="{_esc(p.relative_to(workdir).as_posix())}">{_esc(link.title)}'
                             f'</a><br><span class=meta>{_esc(link.caption)}</span>')
    files = [(name, export / name) for name in _read_json(export / "export.json").get("deliverables", [])]
    items = "".join(f'<li><a href="export/{_esc(name)}">{_esc(name)}</a> <span class=meta>{_size(p.stat().st_size)}'
                    f"</span></li>" for name, p in files if p.exists())
    side = (f"<div class=files>{''.join(links)}<p>The files (<code>neroic run</code> also copies them beside "
            f"<code>--out</code>):</p><ul>{items}</ul></div>")
    return f"<h2>Model</h2><div class=model>{''.join(pictures)}{side}</div>"


def _key_figures(workdir: Path, manifests: dict[str, dict]) -> str:
    """One line: photos, posed, held out and their PSNR, triangles and textures, time."""
    summary = {name: m.get("summary", {}) for name, m in manifests.items()}
    parts = []
    if "photos" in summary.get("ingest", {}):
        s = summary["ingest"]
        parts.append(f"<b>{s['photos']} photos</b>" + (f" ({s['video_frames']} from {s['videos']} "
                                                        f"video{'s' * (s['videos'] > 1)})" if s.get("videos") else ""))
    if "registered" in summary.get("poses", {}):
        parts.append(f"<b>{summary['poses']['registered']}/{summary['poses']['total']} posed</b>")
    geometry = summary.get("geometry", {})
    if "train_photos" in geometry:
        held = geometry.get("heldout_photos", 0)
        psnr = geometry.get("heldout_psnr_masked")
        parts.append(f"<b>{geometry['train_photos']} trained on, {held} held out</b>"
                     + (f" (their PSNR {psnr:.1f} dB)" if held and psnr is not None and math.isfinite(psnr) else ""))
    if "faces" in summary.get("export", {}):
        s = summary["export"]
        texture = _read_json(workdir / "export" / "export.json").get("atlas", {}).get("texture_size")
        parts.append(f"<b>{s['faces']:,} triangles</b>" + (f", {texture} px textures" if texture else "")
                     + f", {_size(s['glb_bytes'])} GLB"
                     + (", 0 validator errors" if s.get("validator_errors") == 0 else ""))
    seconds = sum(m.get("seconds", 0) for m in manifests.values())
    devices = sorted({m.get("device") for m in manifests.values() if m.get("device")})
    if manifests:
        parts.append(f"<b>{_duration(seconds)}</b> of stage time" + (f" on {'/'.join(devices)}" if devices else ""))
    return f"<p class=figures>{' · '.join(parts)}</p>" if parts else ""


def _videos(workdir: Path) -> str:
    """Each video: how many of its frames were taken, its format, the time; and videos skipped."""
    listing = _read_json(workdir / "ingest" / "photos.json") if read_manifest(workdir / "ingest") else {}
    rows = [f"<li><b>{_esc(v['name'])}</b>: {v['taken']} of {v['frames']} frames taken, spread along the "
            f"camera's path, each the sharpest of its stretch ({_esc(v['format'])}; judging the frames took "
            f"{v['seconds']['judging']:.1f} s, taking them {v['seconds']['taking']:.1f} s)"
            + (f" <span class=bad>{_esc(v['stopped'])}</span>" if v.get("stopped") else "") + "</li>"
            for v in listing.get("videos", [])]
    rows += [f"<li><b>{_esc(s['name'])}</b>: <span class=bad>skipped: {_esc(s['reason'])}</span></li>"
             for s in listing.get("skipped", []) if Path(s["name"]).suffix.lower() in VIDEO_SUFFIXES]
    return f"<h2>Videos</h2><ul>{''.join(rows)}</ul>" if rows else ""


def _photo_notes(workdir: Path, manifests: dict[str, dict]) -> dict[str, list[tuple[str, str, object]]]:
    """stem -> [(stage, column, value)] in stage order: what every published stage said of it."""
    notes: dict[str, list] = {}
    for spec in STAGES:
        if spec.name in manifests:
            for stem, columns in read_photo_notes(workdir / spec.name).items():
                notes.setdefault(stem, []).extend((spec.name, column, value) for column, value in columns.items())
    return notes


def _card(workdir: Path, stem: str, notes: list[tuple[str, str, object]], geometry_ran: bool) -> str:
    said = {column: (stage, value) for stage, column, value in notes}
    dropped = next(((stage, value) for stage, column, value in notes if column == "dropped"), None)
    badges, why = [], ""
    if dropped:
        badges.append("<span class='badge dropped'>dropped</span>")
        why = f"<div class=why title='{_esc(dropped[1])}'>{_esc(dropped[0])}: {_esc(dropped[1])}</div>"
    elif said.get("role", ("", ""))[1] == "held out":
        badges.append("<span class='badge held'>held out</span>")
    elif geometry_ran:
        badges.append("<span class='badge kept'>kept</span>")
    if str(said.get("mask check", ("", ""))[1]).startswith("repaired"):
        badges.append("<span class='badge repaired'>mask repaired</span>")
    photo = said.get("photo", ("", None))[1]
    path = workdir / "ingest" / photo["image"] if isinstance(photo, dict) else None
    thumb = (f'<img class=thumb loading=lazy src="{_embed(path, THUMB_WIDTH)}" alt="{_esc(stem)}">'
             if path is not None and path.exists() else "<div class=thumb></div>")
    rows = []
    for stage, column, value in notes:
        if column == "photo":
            continue
        if isinstance(value, dict) and "image" in value:
            image = workdir / stage / value["image"]
            value = f'<img src="{_embed(image, 96, 48)}" alt="">' if image.exists() else ""
        else:
            value = _esc(value)
        rows.append(f"<dt>{_esc(stage)}: {_esc(column)}</dt><dd>{value}</dd>")
    return (f"<details class='card{' out' if dropped else ''}'><summary>{thumb}<div class=stem>{_esc(stem)}</div>"
            f"{''.join(badges)}{why}</summary><dl>{''.join(rows)}</dl></details>")


def _photo_grid(workdir: Path, manifests: dict[str, dict]) -> str:
    notes = _photo_notes(workdir, manifests)
    if not notes:
        return ""
    geometry_ran = "geometry" in manifests
    cards = [_card(workdir, stem, notes[stem], geometry_ran) for stem in sorted(notes)]
    legend = ("<span class='badge kept'>kept</span>trained on "
              "<span class='badge held'>held out</span>kept out of training to score the result "
              "<span class='badge dropped'>dropped</span>left out, with the reason "
              "<span class='badge repaired'>mask repaired</span>its mask was cut to the other photos' visual hull")
    return (f"<h2>Photos</h2><p class=legend>{legend + '. ' if geometry_ran else ''}Click a photo for what each "
            f"stage said of it.</p><div class=grid>{''.join(cards)}</div>")


def _stage_table(manifests: dict[str, dict]) -> str:
    """Time, memory (GPU memory when a stage used a GPU) and the one-line result of every stage."""
    gpu = any(m.get("peak_gpu_mb") is not None for m in manifests.values())
    rows = []
    for spec in STAGES:
        m = manifests.get(spec.name, {})
        started = m.get("started", "")
        cells = [f"<td>{_esc(spec.name)}</td>",
                 f"<td class=num>{m['seconds']:.1f}</td>" if "seconds" in m else "<td></td>",
                 f"<td>{_esc(m.get('summary', {}).get('figure', '') if m else 'not run')}</td>",
                 f"<td class=num>{m['peak_rss_mb']:,.0f}</td>" if "peak_rss_mb" in m else "<td></td>",
                 (f"<td class=num>{m['peak_gpu_mb']:,.0f}</td>" if m.get("peak_gpu_mb") is not None else "<td></td>")
                 if gpu else "", f"<td>{_esc(started[11:19] if len(started) >= 19 else started)}</td>"]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("stage", "seconds", "result", "peak MB",
                                             *(("peak GPU MB",) if gpu else ()), "started"))
    return f"<h2>Stages</h2><div class=scroll><table><tr>{head}</tr>{''.join(rows)}</table></div>"


def _attempts(workdir: Path, manifests: dict[str, dict]) -> str:
    """The models SfM built (poses/normalization.json attempt_records): which won, why the others lost."""
    if "poses" not in manifests:
        return ""
    records = _read_json(workdir / "poses" / "normalization.json").get("attempt_records")
    if not records:
        return ""
    chosen = next((r for r in records if r.get("chosen")), None)
    total = manifests["poses"].get("summary", {}).get("total")
    verdict = (f"{_esc(chosen['attempt'])} won, posing {chosen['built']}" + (f" of {total}" if total else "")
               + " photos" if chosen else "no model was kept")
    rejected = [r for r in records if r.get("rejected")]
    verdict += (f"; {len(rejected)} other model(s) rejected, see why below" if rejected
                else "; the only model built" if len(records) == 1 else "")
    head = "".join(f"<th>{h}</th>" for h in ("attempt", "cameras", "chosen", *(h for _, h in ATTEMPT_COLUMNS),
                                             "taken out", "rejected because"))
    rows = []
    for r in records:
        figures = "".join(f"<td class=num>{r[k]}</td>" if k in r else "<td></td>" for k, _ in ATTEMPT_COLUMNS)
        dropped = r.get("dropped") or []
        shown = ", ".join(dropped[:6]) + (f" and {len(dropped) - 6} more" if len(dropped) > 6 else "")
        rows.append(f"<tr><td>{_esc(r.get('attempt', ''))}</td><td class=num>{_esc(r.get('built', ''))}</td>"
                    f"<td>{'yes' if r.get('chosen') else ''}</td>{figures}"
                    f"<td title='{_esc(', '.join(dropped))}'>{_esc(shown)}</td>"
                    f"<td>{_esc(r.get('rejected', ''))}</td></tr>")
    return (f"<details class=more open><summary>Registration attempts: {verdict}</summary><p>Every model SfM built "
            "from the photos, checked against the masks; the chosen one gave the cameras.</p><div class=scroll>"
            f"<table><tr>{head}</tr>{''.join(rows)}</table></div></details>")


def _stage_pictures(workdir: Path, manifests: dict[str, dict]) -> str:
    parts = []
    for spec in STAGES:
        if spec.name not in manifests:
            continue
        for figure in spec.figures:
            files = [p for pattern in figure.patterns for p in sorted((workdir / spec.name).glob(pattern))]
            if files:
                imgs = "".join(f'<figure><img loading=lazy src="{_embed(p)}" alt="{_esc(p.name)}">'
                               f"<figcaption>{_esc(p.name)}</figcaption></figure>" for p in files)
                parts.append(f"<details class=more><summary>{_esc(spec.name)}: {_esc(figure.title)}</summary>"
                             f"<p>{_esc(figure.caption)}</p>{imgs}</details>")
    return "".join(parts)


def write_report(workdir: Path, title: str, error: str | None = None) -> Path:
    """(Re)write WORKDIR/report.html from the published stage folders; returns its path."""
    workdir = Path(workdir)
    manifests = {spec.name: m for spec in STAGES if (m := read_manifest(workdir / spec.name)) is not None}
    parts = [f"<h1>{_esc(title)}</h1>",
             f"<p class=meta>written {dt.datetime.now().astimezone():%Y-%m-%d %H:%M} in {_esc(workdir)}</p>"]
    if error:
        parts.append(f"<p class=error>The last run stopped: {_esc(error)}</p>")
    parts += [_model(workdir, manifests), _key_figures(workdir, manifests), _videos(workdir),
              _photo_grid(workdir, manifests), _stage_table(manifests)]
    details = _attempts(workdir, manifests) + _stage_pictures(workdir, manifests)
    if details:
        parts.append(f"<h2>Details</h2>{details}")
    page = ("<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport "
            f"content='width=device-width,initial-scale=1'><title>{_esc(title)}</title><style>{STYLE}</style></head>"
            "<body>" + "\n".join(p for p in parts if p) + "</body></html>")
    path = workdir / REPORT_NAME
    tmp = path.with_name(f".{REPORT_NAME}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
