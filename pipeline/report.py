"""report.html: one self-contained page (no network needed) that shows a user whether to trust
the result: photos with masks, cameras and sparse points, training curves, held-out renders
beside the photos, lights as lit spheres, the exported model's turntable, time and memory per
stage. Rewritten at the end of every `neroic run`, also after a failure, from whatever the
stages have published; pictures are embedded (JPEG, base64) so the file can be sent around.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.cache import read_manifest
from stages import STAGES

REPORT_NAME = "report.html"
MAX_WIDTH = 1600

# (title, stage folder, file patterns, caption): the pictures each section shows when present.
SECTIONS = (
    ("Photos and masks", "masks", ("contact_sheet.png",),
     "Every photo with its background dimmed red and the mask edge in green; red labels are excluded."),
    ("Cameras and sparse points", "poses", ("cameras.png",),
     "Registered cameras (frusta) around the object's sparse SfM points, world frame, +Y up."),
    ("Geometry training", "geometry", ("curves.png",), "Loss and held-out PSNR against step and time."),
    ("Held-out photos and renders", "geometry", ("heldout/*.png",),
     "Photos not used for training, beside the field's renders of the same cameras."),
    ("Normals", "normals", ("preview.png",), "Volume-rendered Sobel normals."),
    ("Material and lights", "material", ("contact_sheet.png", "losses.png"),
     "Per photo: original, re-rendered, albedo, shading, normals, and a sphere lit by its light, seen from "
     "its camera."),
    ("Exported model", "export", ("turntable*.png", "screenshot*.png"),
     "The exported GLB, rendered from around it."),
)


def embed_jpeg(path: Path, max_width: int = MAX_WIDTH) -> str:
    """The picture as a JPEG data: URL, at most max_width pixels wide (pages stay self-contained)."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.width > max_width:
            img = img.resize((max_width, round(img.height * max_width / img.width)), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
    return f"data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}"


def cameras_figure(poses_dir: Path, out_png: Path) -> Path | None:
    """A static 3-D plot of camera frusta and sparse points (poses/transforms.json, points.ply)."""
    transforms = poses_dir / "transforms.json"
    if not transforms.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import trimesh

    frames = json.loads(transforms.read_text())["frames"]
    centres = np.array([np.asarray(f["transform_matrix"])[:3, 3] for f in frames])
    points = np.zeros((0, 3))
    if (poses_dir / "points.ply").exists():
        cloud = trimesh.load(poses_dir / "points.ply")
        points = np.asarray(getattr(cloud, "vertices", np.zeros((0, 3))))
    scale = 0.12 * float(np.ptp(np.vstack([centres, points]), axis=0).max() or 1.0)
    fig = plt.figure(figsize=(7, 7), dpi=110)
    ax = fig.add_subplot(projection="3d")
    if len(points):
        keep = points[np.random.default_rng(0).permutation(len(points))[:20000]]
        ax.scatter(keep[:, 0], keep[:, 2], keep[:, 1], s=0.3, c="0.3")
    for f in frames:  # a frustum: OpenGL camera looks along -Z
        c2w = np.asarray(f["transform_matrix"])
        w, h, fx = f.get("w", 1), f.get("h", 1), f.get("fl_x", 1)
        corners = np.array([[sx * w / (2 * fx), sy * h / (2 * fx), -1] for sx, sy in
                            ((-1, -1), (1, -1), (1, 1), (-1, 1))]) * scale
        world = corners @ c2w[:3, :3].T + c2w[:3, 3]
        for a in range(4):
            seg = np.array([c2w[:3, 3], world[a], world[(a + 1) % 4]])
            ax.plot(seg[:, 0], seg[:, 2], seg[:, 1], color="tab:blue", lw=0.6)
    ax.set_xlabel("x")
    ax.set_ylabel("z")
    ax.set_zlabel("y (up)")
    everything = np.vstack([centres, points]) if len(points) else centres
    mid, half = everything.mean(0), 0.55 * float(np.ptp(everything, axis=0).max() or 1.0)
    ax.set_xlim(mid[0] - half, mid[0] + half)
    ax.set_ylim(mid[2] - half, mid[2] + half)
    ax.set_zlim(mid[1] - half, mid[1] + half)
    ax.set_title(f"{len(frames)} cameras, {len(points)} sparse points")
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def _stage_rows(workdir: Path) -> str:
    rows = []
    for spec in STAGES:
        m = read_manifest(workdir / spec.name) or {}
        summary = m.get("summary", {})
        cells = [spec.name, "done" if m else "not run", m.get("started", ""),
                 f"{m['seconds']:.1f}" if "seconds" in m else "",
                 f"{m['peak_rss_mb']:,.0f}" if "peak_rss_mb" in m else "", summary.get("figure", "")]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return "\n".join(rows)


def write_report(workdir: Path, title: str, error: str | None = None) -> Path:
    """(Re)write WORKDIR/report.html from the published stage folders; returns its path."""
    workdir = Path(workdir)
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p class=meta>written {dt.datetime.now().astimezone():%Y-%m-%d %H:%M} in {html.escape(str(workdir))}</p>"]
    if error:
        parts.append(f"<p class=error>The last run stopped: {html.escape(error)}</p>")
    parts.append("<h2>Stages</h2><table><tr><th>stage</th><th>status</th><th>started</th><th>seconds</th>"
                 f"<th>peak MB</th><th>result</th></tr>{_stage_rows(workdir)}</table>")
    for heading, stage, patterns, caption in SECTIONS:
        if read_manifest(workdir / stage) is None:
            continue
        files = [p for pattern in patterns for p in sorted((workdir / stage).glob(pattern))]
        if stage == "poses":  # drawn once per poses output
            cached = workdir / ".report" / f"cameras-{read_manifest(workdir / stage)['output_hash'][:16]}.png"
            if not cached.exists():
                shutil.rmtree(cached.parent, ignore_errors=True)
                cached.parent.mkdir()
                cameras_figure(workdir / stage, cached)
            files = [cached] if cached.exists() else []
        if files:
            imgs = "".join(f'<figure><img src="{embed_jpeg(p)}" alt="{html.escape(p.name)}">'
                           f"<figcaption>{html.escape(p.name)}</figcaption></figure>" for p in files)
            parts.append(f"<h2>{html.escape(heading)}</h2><p>{html.escape(caption)}</p>{imgs}")
    page = ("<!doctype html><html><head><meta charset=utf-8><title>" + html.escape(title) + "</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1700px;color:#222}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
            "img{max-width:100%;border:1px solid #ddd}figure{margin:1em 0}.meta{color:#777}"
            ".error{color:#b00;font-weight:bold}</style></head><body>" + "\n".join(parts) + "</body></html>")
    path = workdir / REPORT_NAME
    tmp = path.with_name(f".{REPORT_NAME}.tmp")
    tmp.write_text(page)
    tmp.replace(path)
    return path
