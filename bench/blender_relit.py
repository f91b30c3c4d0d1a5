"""The GLB as users see it: path-traced by Blender under a capture's held-out environments, scored.

    python -m bench.blender_relit MODEL.glb [--capture ../shared/data/spot-wild] [--out DIR]

Runs `../shared/tools/blender_relight.py` (Cycles, the held-out cameras, environment images,
rotations and strengths the capture's `test/` photos were rendered with) in the Python that has
Blender's `bpy` (`--blender-python`, else $NEROIC_BLENDER_PYTHON; install it once with
`python -m venv ~/bpy && ~/bpy/bin/pip install bpy==4.5.15`: ~1 GB, a benchmark-only dependency),
then scores each render against `test/` inside the true mask (test alpha >= 0.5, both composited
over black) after one scale per colour channel fitted over all views (albedo times light is all
the photos fix; `fit_channel_scale`, the rule of the other relighting figures). The truth rendered
this way scores 33.0 dB on spot-wild (its README): render noise is the ceiling. Writes
DIR/blender/test_NNN.png, DIR/blender_relit.png (photo above render, per view) and prints one JSON
line: {"blender_relit_psnr": dB, "per_view": [...], "scale": [3]}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench import SHARED, SHARED_DATA
from bench.relighting import fit_channel_scale, srgb_psnr
from stages.common.colour import linear_to_srgb, srgb_to_linear

TOOL = SHARED / "tools" / "blender_relight.py"
MIN_ALPHA = 0.5  # a pixel belongs to the true mask when the held-out photo covers it this much


def render(glb: Path, capture: Path, out: Path, blender_python: str, spp: int = 32) -> float:
    """Blender's renders of `glb` into `out` (test_NNN.png); the seconds it took."""
    start = time.time()
    done = subprocess.run([blender_python, str(TOOL), str(glb), str(capture), str(out), "--spp", str(spp)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"blender_relight.py failed:\n{done.stderr[-2000:]}")
    return time.time() - start


def write_in_frame(model, truth_from_world: np.ndarray, path: Path) -> None:
    """Write `model` (a GLBModel whose vertices are in a workdir's world, e.g.
    bench.wild.exported_model) as a GLB in the capture's frame, `truth_from_world` a similarity
    [4, 4]: a model posed from the photos alone lives in a frame of its own."""
    from stages.export.gltf import TexturedMesh, png_bytes, write_glb

    linear = truth_from_world[:3, :3]
    rotation = linear / np.cbrt(np.linalg.det(linear))
    positions = model.positions.astype(np.float64) @ linear.T + truth_from_world[:3, 3]
    tangents = np.concatenate([model.tangents[:, :3] @ rotation.T, model.tangents[:, 3:]], axis=1)
    write_glb(path, TexturedMesh(
        positions.astype(np.float32), (model.normals @ rotation.T).astype(np.float32), tangents.astype(np.float32),
        model.uvs.astype(np.float32), model.faces, png_bytes(model.base_colour[..., :3]),
        png_bytes(model.metallic_roughness[..., :3]),
        None if model.normal is None else png_bytes(model.normal[..., :3]),
        None if model.specular_colour is None else png_bytes(model.specular_colour[..., :3])))


def premultiplied(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """[H, W, 3] linear RGB composited over black and [H, W] alpha, from an RGBA sRGB PNG."""
    rgba = np.asarray(Image.open(path).convert("RGBA"), dtype=np.float32) / 255.0
    linear = srgb_to_linear(torch.from_numpy(rgba[..., :3])).numpy()
    return linear * rgba[..., 3:], rgba[..., 3]


def score(renders: Path, capture: Path) -> dict:
    """The Blender-relit PSNR over all held-out views (one scale per channel), and per view."""
    photos, predictions, views = [], [], []
    for photo_path in sorted((capture / "test").glob("test_*.png")):
        photo, alpha = premultiplied(photo_path)
        rendered, _ = premultiplied(renders / photo_path.name)
        inside = alpha >= MIN_ALPHA
        photos.append(torch.from_numpy(photo[inside]))
        predictions.append(torch.from_numpy(rendered[inside]))
        views.append(photo_path.name)
    truth, prediction = torch.cat(photos), torch.cat(predictions)
    scale = fit_channel_scale(prediction, truth)
    per_view = [round(srgb_psnr(p * scale, t), 2) for p, t in zip(predictions, photos)]
    return {"blender_relit_psnr": round(srgb_psnr(prediction * scale, truth), 2), "per_view": per_view,
            "views": views, "scale": [round(float(s), 4) for s in scale]}


def sheet(renders: Path, capture: Path, scale: list[float], target: Path) -> None:
    """The held-out photos (top) above the scaled renders (bottom), one column per view."""
    columns = []
    for photo_path in sorted((capture / "test").glob("test_*.png")):
        photo, _ = premultiplied(photo_path)
        rendered, _ = premultiplied(renders / photo_path.name)
        pair = np.concatenate([photo, rendered * np.asarray(scale, dtype=np.float32)], axis=0)
        columns.append(linear_to_srgb(torch.from_numpy(pair)).clamp(0, 1).numpy())
    height = max(c.shape[0] for c in columns)  # views differ in size and orientation
    columns = [np.pad(c, ((0, height - c.shape[0]), (0, 0), (0, 0))) for c in columns]
    Image.fromarray((np.concatenate(columns, axis=1) * 255 + 0.5).astype(np.uint8)).save(target)


def blender_figure(glb: Path, capture: Path, out: Path, blender_python: str, spp: int = 32) -> dict:
    """Render `glb` (in the capture's frame) under the held-out environments and score it; the
    renders and the sheet go to `out`."""
    seconds = render(glb, capture, out / "blender", blender_python, spp)
    result = {**score(out / "blender", capture), "render_seconds": round(seconds, 1)}
    sheet(out / "blender", capture, result["scale"], out / "blender_relit.png")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("glb", type=Path)
    parser.add_argument("--capture", type=Path, default=SHARED_DATA / "spot-wild")
    parser.add_argument("--out", type=Path, default=None, help="folder for the renders (default: beside the GLB)")
    parser.add_argument("--blender-python", default=os.environ.get("NEROIC_BLENDER_PYTHON", ""))
    parser.add_argument("--spp", type=int, default=32)
    args = parser.parse_args(argv)
    if not args.blender_python:
        raise SystemExit("no Python with bpy: pass --blender-python or set NEROIC_BLENDER_PYTHON "
                         "(python -m venv ~/bpy && ~/bpy/bin/pip install bpy==4.5.15)")
    print(json.dumps(blender_figure(args.glb, args.capture, args.out or args.glb.parent, args.blender_python,
                                    args.spp)))


if __name__ == "__main__":
    sys.exit(main())
