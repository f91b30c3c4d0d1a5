"""viewer.html: the exported model in any browser, offline, at every detail level, relit by any
photo's learned light, a built-in environment or an HDR the user drops on it.

    write_viewer("export/viewer.html", [ViewerLevel("medium", Path("model.glb"), 99_000), ...],
                 lights, default_level="medium", model_from_world=matrix, view=(yaw, pitch))
    screenshot_viewer("export/viewer.html", "shot.png", light="2", level="preview")

One self-contained file: the page (tools/node/viewer/viewer.html), three.js and the viewer's
script (tools/node/viewer/main.js) bundled by esbuild from the installed npm packages, every
level's GLB (base64) and the lights (lighting.json's SH, in the shared convention) inlined. A
double-click opens it (file:// pages may not fetch their neighbours, so nothing is fetched).
main.js says how the SH lights meet three.js's LightProbe. The bundle is made at export time
(esbuild takes well under a second), so it always matches the installed three.js.
"""
from __future__ import annotations

import base64
import html
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.export.validate import NODE_TOOLS, SETUP_HINT, ToolMissing, screenshot_page

VIEWER_DIR = NODE_TOOLS / "viewer"


@dataclass
class ViewerLevel:
    """A detail level as the viewer lists it: its name, GLB file and triangle count."""

    name: str
    glb: Path
    triangles: int


def bundle_script(timeout_s: float = 120.0) -> str:
    """three.js + main.js as one minified script (esbuild, from tools/node/node_modules)."""
    esbuild = NODE_TOOLS / "node_modules" / ".bin" / "esbuild"
    if shutil.which("node") is None or not esbuild.exists() or not (NODE_TOOLS / "node_modules" / "three").is_dir():
        raise ToolMissing(f"node, esbuild or three is not installed in {NODE_TOOLS} (needed for viewer.html); {SETUP_HINT}")
    proc = subprocess.run([str(esbuild), str(VIEWER_DIR / "main.js"), "--bundle", "--minify", "--format=iife",
                           "--log-level=error"], capture_output=True, text=True, timeout=timeout_s, cwd=NODE_TOOLS)
    if proc.returncode != 0:
        raise RuntimeError(f"esbuild could not bundle the viewer: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def write_viewer(path: str | Path, levels: list[ViewerLevel], lights: list[tuple[str | None, np.ndarray]],
                 default_level: str, model_from_world: np.ndarray, view: tuple[float, float] = (30.0, 20.0)) -> int:
    """Write the self-contained viewer page; returns its size in bytes. lights: read_lighting's
    [(file_path or None, sh [9, 3])]; view: the opening (yaw, pitch) in degrees, as screenshot_glb's."""
    script = bundle_script().replace("</script", "<\\/script")
    data = {
        "levels": [{"name": level.name, "element": f"glb-{level.name}", "triangles": int(level.triangles),
                    "bytes": level.glb.stat().st_size} for level in levels],
        "default_level": default_level,
        "lights": [{"name": Path(fp).stem if fp else f"light {k}", "sh": np.asarray(sh, dtype=float).round(6).tolist()}
                   for k, (fp, sh) in enumerate(lights)],
        "model_from_world": np.asarray(model_from_world, dtype=float).tolist(),
        "view": {"yaw": float(view[0]), "pitch": float(view[1])},
    }
    blocks = [f'<script type="application/json" id="neroic-data">{html.escape(json.dumps(data), quote=False)}</script>']
    blocks += [f'<script type="application/octet-stream" id="glb-{level.name}">'
               f'{base64.b64encode(level.glb.read_bytes()).decode("ascii")}</script>' for level in levels]
    template = (VIEWER_DIR / "viewer.html").read_text(encoding="utf-8")
    page = template.replace("<!--NEROIC-DATA-->", "\n".join(blocks)).replace("/*NEROIC-BUNDLE*/", script)
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path.stat().st_size


def screenshot_viewer(page: str | Path, png: str | Path, width: int = 640, height: int = 480, **query) -> str:
    """Open the viewer page in headless Chromium with query parameters (level, light, yaw, pitch,
    turntable, ui; see main.js) and save a screenshot; returns "ready" (errors as screenshot_page)."""
    params = {"w": width, "h": height, "report": 1, "ui": 0, **{k: v for k, v in query.items() if v is not None}}
    return screenshot_page(Path(page), png, width, height, params)
