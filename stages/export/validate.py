"""Checks on an exported GLB with real-world tools: the Khronos glTF validator and a browser.

    report = validate_gltf("model.glb")          # ValidationReport: errors, warnings, messages
    status = screenshot_glb("model.glb", "shot.png", width=800, height=600, yaw=30, pitch=20)
    status = screenshot_page(page, "shot.png", 800, 600, {"report": 1})   # any page that reports

Both run offline from tools/node/ (package.json there: npm `gltf-validator` and `three`;
`npm ci --prefix tools/node` installs them). The validator runs under node on the file's bytes
(tools/node/validate.js). The screenshot is three.js's GLTFLoader in Debian's headless Chromium
with software WebGL (SwiftShader): the page (tools/node/screenshot.html for a GLB, or any page beside
its files, as export/viewer.html) is served on 127.0.0.1 from a free port, and posts back
"ready" once it has drawn, so a load failure is an error here rather than a blank picture.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

NODE_TOOLS = Path(__file__).resolve().parent.parent.parent / "tools" / "node"
SETUP_HINT = "run `make setup` (it runs `npm ci --prefix tools/node`)"


class ToolMissing(RuntimeError):
    """node, the npm packages or chromium are not installed."""


@dataclass
class ValidationReport:
    """The validator's counts by severity and its messages ("CODE at POINTER: text")."""

    errors: int
    warnings: int
    infos: int
    hints: int
    messages: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict)


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise ToolMissing("node is not installed (needed for the glTF validator); install Node.js 18+")
    if not (NODE_TOOLS / "node_modules" / "gltf-validator").is_dir():
        raise ToolMissing(f"the npm package gltf-validator is not installed in {NODE_TOOLS}; {SETUP_HINT}")
    return node


def validate_gltf(path: str | Path, max_issues: int = 100, timeout_s: float = 120.0) -> ValidationReport:
    """Run the Khronos glTF validator (npm gltf-validator) on a .glb/.gltf file."""
    proc = subprocess.run([_node(), str(NODE_TOOLS / "validate.js"), str(Path(path).resolve()), str(max_issues)],
                          capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"glTF validator failed on {path}: {proc.stderr.strip()}")
    raw = json.loads(proc.stdout)
    issues = raw["issues"]
    messages = [f"{m['code']} at {m.get('pointer', '?')}: {m['message']}" for m in issues.get("messages", [])]
    return ValidationReport(issues["numErrors"], issues["numWarnings"], issues["numInfos"], issues["numHints"],
                            messages, raw)


def chromium_path() -> str | None:
    """The installed Chromium (Debian's `chromium`, or a `chromium-browser` / `google-chrome`)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class _PageHandler(SimpleHTTPRequestHandler):
    """Serves a folder plus extra files at fixed paths (`routes`), and records the page's POST to /__status."""

    def __init__(self, *args, routes: dict[str, Path], status: list, **kwargs):
        self._routes, self._status = routes, status
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        route = self._routes.get(path.split("?", 1)[0])
        return str(route) if route is not None else super().translate_path(path)

    def do_POST(self):  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length).decode("utf-8", "replace")
        if self.path == "/__status":
            self._status.append(body)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def screenshot_page(page: Path, png: str | Path, width: int, height: int, query: dict,
                    routes: dict[str, Path] | None = None, timeout_s: float = 180.0) -> str:
    """Serve page's folder (plus `routes`: URL path -> file), open page?query in headless Chromium
    at width x height, save the screenshot; returns the status the page posted ("ready").

    Raises ToolMissing without chromium, RuntimeError when the page reports an error or never
    reports (e.g. the virtual-time budget ran out).
    """
    browser = chromium_path()
    if browser is None:
        raise ToolMissing("chromium is not installed (apt-get install chromium); needed for screenshots")
    status: list[str] = []
    handler = partial(_PageHandler, routes=routes or {}, status=status, directory=str(Path(page).resolve().parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    png = Path(png).resolve()
    try:
        url = (f"http://127.0.0.1:{server.server_address[1]}/{quote(Path(page).name)}?"
               + "&".join(f"{k}={quote(str(v))}" for k, v in query.items()))
        with tempfile.TemporaryDirectory(prefix="neroic-chromium-") as profile:
            # --screenshot fires when the virtual-time budget runs out, ready or not: 15 s left the
            # skull's 12 MB medium level of a 60 MB viewer page unparsed (a blank frame that still
            # reported "ready" afterwards); idle virtual time passes at once, so a long budget is cheap
            proc = subprocess.run(
                [browser, "--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                 "--virtual-time-budget=60000", f"--window-size={width},{height}", f"--screenshot={png}",
                 "--hide-scrollbars", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-extensions",
                 f"--user-data-dir={profile}", url],
                capture_output=True, text=True, timeout=timeout_s)
    finally:
        server.shutdown()
        server.server_close()
    if proc.returncode != 0 or not png.exists():
        raise RuntimeError(f"chromium failed (status {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    if not status:
        raise RuntimeError(f"the page {Path(page).name} never reported back (three.js not loaded, or the model "
                           "took longer than the virtual-time budget)")
    if status[-1] != "ready":
        raise RuntimeError(f"the page {Path(page).name} failed: {status[-1]}")
    return status[-1]


def screenshot_glb(glb: str | Path, png: str | Path, width: int = 800, height: int = 600, yaw: float = 30.0,
                   pitch: float = 20.0, background: str = "e8e8e8", timeout_s: float = 120.0) -> str:
    """Render the GLB with three.js in headless Chromium and save a PNG screenshot; returns "ready".

    yaw/pitch (degrees) place the camera around the model's bounding box: yaw 0, pitch 0 looks
    from +Z towards -Z, with +Y up. Raises ToolMissing without chromium or three, RuntimeError when
    the page reports a load error or never reports (e.g. the virtual-time budget ran out).
    """
    if not (NODE_TOOLS / "node_modules" / "three").is_dir():
        raise ToolMissing(f"the npm package three is not installed in {NODE_TOOLS}; {SETUP_HINT}")
    query = {"model": "/model.glb", "w": width, "h": height, "yaw": yaw, "pitch": pitch, "bg": background}
    try:
        return screenshot_page(NODE_TOOLS / "screenshot.html", png, width, height, query,
                               routes={"/model.glb": Path(glb).resolve()}, timeout_s=timeout_s)
    except ToolMissing:
        raise
    except RuntimeError as e:
        raise RuntimeError(f"{e} (showing {glb})") from None
