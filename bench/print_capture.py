"""A rendered "collection" whose paint repeats on several sides, as printed packaging does.

    python -m bench.print_capture --out DIR [--photos 36] [--seed 0]

Spot (tests/synthetic/spot_capture.py's ray tracer) painted with one print, box-projected: the
same picture on all six sides of its bounding box, each side reading the right way from outside,
so look-alike views of different sides abound (the trap of false matches). Every photo has its
own camera distance, focal length, image size and random SH light with cast shadows (an online
collection's spread); the truth is in transforms.json (per-frame intrinsics), the photos are RGBA
(alpha: the true coverage, which the masks stage takes as the mask).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from stages.common.colour import linear_to_srgb, srgb_to_linear
from stages.common.sh import random_sh_light

PRINT_SIZE = 512
FACE_HALF_WIDTH = 0.75  # the print spans +-this on each side of the unit-radius cow


def make_print(seed: int) -> np.ndarray:
    """[S, S, 3] linear albedo: a seeded poster of bands, shapes and lettering (plenty of corners)."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (PRINT_SIZE, PRINT_SIZE), tuple(int(v) for v in rng.integers(150, 255, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        y = int(rng.integers(0, PRINT_SIZE))
        draw.rectangle([0, y, PRINT_SIZE, y + int(rng.integers(10, 40))], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    for _ in range(25):
        x, y = (int(v) for v in rng.integers(0, PRINT_SIZE, 2))
        r = int(rng.integers(8, 50))
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x - r, y - r, x + r, y + r], fill=colour)
    font = ImageFont.load_default(size=36)
    for _ in range(8):
        x, y = (int(v) for v in rng.integers(0, PRINT_SIZE - 100, 2))
        word = "".join(chr(int(c)) for c in rng.integers(65, 91, int(rng.integers(3, 7))))
        draw.text((x, y), word, fill=tuple(int(v) for v in rng.integers(0, 120, 3)), font=font)
    return srgb_to_linear(np.asarray(image, dtype=np.float64) / 255.0)


def box_projection(picture: np.ndarray):
    """albedo_at(points, normals): `picture` on each side of the box, chosen by the normal's axis."""
    size = picture.shape[0]

    def albedo_at(points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        axis = np.argmax(np.abs(normals), axis=1)
        sign = np.sign(normals[np.arange(len(normals)), axis])
        # (right, up) on each side as seen from outside: +X -> (-z, y), +Y -> (x, -z), +Z -> (x, y)
        right = {0: (2, -1.0), 1: (0, 1.0), 2: (0, 1.0)}
        up = {0: (1, 1.0), 1: (2, -1.0), 2: (1, 1.0)}
        u, v = np.zeros(len(points)), np.zeros(len(points))
        for a in range(3):
            here = axis == a
            (ri, rs), (ui, us) = right[a], up[a]
            u[here] = rs * sign[here] * points[here, ri]  # a mirrored side reads the right way round
            v[here] = us * points[here, ui]
        col = np.clip(((u / FACE_HALF_WIDTH + 1.0) / 2.0 * size).astype(int), 0, size - 1)
        row = np.clip(((1.0 - (v / FACE_HALF_WIDTH + 1.0) / 2.0) * size).astype(int), 0, size - 1)
        return picture[row, col]

    return albedo_at


def make_print_capture(out: Path, photos: int = 36, seed: int = 0) -> Path:
    from tests.synthetic.spot_capture import SpotRenderer, _rgba_png, load_spot, look_at

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    renderer = SpotRenderer(load_spot())
    paint = box_projection(make_print(seed))
    frames = []
    for index in range(photos):
        azimuth = rng.uniform(0, 2 * math.pi)
        elevation = math.radians(rng.uniform(-10, 60))
        distance = rng.uniform(2.6, 4.5)
        position = distance * np.array([math.cos(elevation) * math.sin(azimuth), math.sin(elevation),
                                        math.cos(elevation) * math.cos(azimuth)])
        c2w = look_at(position, target=rng.normal(0.0, 0.05, 3))
        size = int(rng.choice([384, 448, 512]))
        fov = math.radians(rng.uniform(28, 55))
        focal = 0.5 * size / math.tan(fov / 2)
        view = renderer.render(c2w, focal, size, random_sh_light(rng), specular=0.1, shadows=True, albedo_at=paint)
        stem = f"p_{index:03d}"
        _rgba_png(out / "images" / f"{stem}.png", linear_to_srgb(view["rgb"]), view["alpha"])
        frames.append({"file_path": f"images/{stem}.png", "transform_matrix": c2w.tolist(), "fl_x": focal,
                       "fl_y": focal, "cx": size / 2, "cy": size / 2, "w": size, "h": size})
    (out / "transforms.json").write_text(json.dumps({"camera_model": "PINHOLE", "frames": frames}, indent=1))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--photos", type=int, default=36)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(make_print_capture(args.out, args.photos, args.seed))


if __name__ == "__main__":
    main()
