"""Film Spot the way a phone would: one H.264 video walking around the cow, for the video input.

The camera circles the cow at 30 fps as a hand holds a phone: it speeds up and slows down, stops
for a while (`pause`), shakes a little, and some frames are smeared by that shake (motion blur
along the image's x axis). The cow is ray traced by tests/synthetic/spot_capture.py under one
light in front of a plain backdrop, in a 16:9 frame. A portrait video is stored as phones store
it: landscape frames plus a display rotation of -90 degrees (shown turned 90 degrees clockwise).

    clip = film_spot(Path("clip.mp4"), size=96, seconds=3)
    clip.upright[i]      # [H, W, 3] uint8: frame i as a player shows it (before compression)
    clip.blurred         # frame numbers smeared by the shake
    clip.paused          # frame numbers while the camera stood still

Usage: python -m tests.synthetic.spot_video --out clip.mp4 [--size 360] [--seconds 10] [--portrait]
       [--turn 360] [--elevation 20] [--seed 0] [--photos DIR --photo-count 10]
       (DIR: JPEG stills with a camera's EXIF, under the same light)
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from stages.common.cameras import Frame, write_transforms
from stages.common.colour import linear_to_srgb
from stages.common.sh import random_sh_light
from tests.synthetic.spot_capture import SpotRenderer, load_spot, look_at

FPS = 30
LIGHT_SEED = 7  # one studio light for every clip and still, so they can be one capture
FOV_DEG = 40.0  # across the short side of the frame
ASPECT = 16 / 9
BACKDROP = (0.78, 0.76, 0.72), (0.55, 0.53, 0.50)  # sRGB, top and bottom of a soft studio backdrop


@dataclass
class Clip:
    path: Path
    upright: list[np.ndarray] = field(default_factory=list)
    blurred: set[int] = field(default_factory=set)
    paused: set[int] = field(default_factory=set)
    c2w: list[np.ndarray] = field(default_factory=list)
    focal: float = 0.0  # pixels of the upright frame


def _even(n: float) -> int:
    return max(2, int(round(n / 2)) * 2)


def _compose(render: dict, width: int, height: int) -> np.ndarray:
    """The square render (of the frame's long side) cut to [height, width], over the backdrop -> uint8."""
    top, bottom = (np.asarray(c) for c in BACKDROP)
    backdrop = top + (bottom - top) * np.linspace(0.0, 1.0, height)[:, None, None]
    s = render["alpha"].shape[0]
    rows, cols = slice((s - height) // 2, (s - height) // 2 + height), slice((s - width) // 2, (s - width) // 2 + width)
    rgb, alpha = linear_to_srgb(np.clip(render["rgb"][rows, cols], 0, None)), render["alpha"][rows, cols, None]
    return np.round(np.clip(rgb * alpha + backdrop * (1 - alpha), 0, 1) * 255).astype(np.uint8)


def _smear(image: np.ndarray, length: int) -> np.ndarray:
    """Motion blur: the mean of `length` copies shifted along x."""
    acc = np.zeros(image.shape, dtype=np.float64)
    for shift in range(length):
        acc += np.roll(image, shift - length // 2, axis=1)
    return np.round(acc / length).astype(np.uint8)


def camera_path(n: int, turn_deg: float, pause: tuple[float, float],
                rng: np.random.Generator) -> tuple[np.ndarray, set[int]]:
    """Azimuth (radians) of each of n frames: eased speed changes, standing still over the `pause`
    share of the clip (fractions of its length); and the frames of the pause."""
    t = (np.arange(n) + 0.5) / n
    moving = (t < pause[0]) | (t >= pause[1])
    speed = moving * (1.0 + 0.6 * np.sin(2 * math.pi * (t * 1.5 + rng.uniform())))
    azimuth = np.cumsum(speed)
    azimuth = math.radians(turn_deg) * azimuth / azimuth[-1] + rng.uniform(0, 2 * math.pi)
    return azimuth, set(np.flatnonzero(~moving).tolist())


def film_spot(out: Path, size: int = 96, seconds: float = 3.0, portrait: bool = False, turn_deg: float = 360.0,
              elevation_deg: float = 20.0, pause: tuple[float, float] = (0.4, 0.55), blurred_share: float = 0.2,
              seed: int = 0, nthreads: int = 1) -> Clip:
    """Render and encode the clip (module docstring); `size` is the short side in pixels; the camera
    rises and sinks 8 degrees around `elevation_deg`."""
    import av

    rng = np.random.default_rng(seed)
    n = max(2, int(round(seconds * FPS)))
    short, long = _even(size), _even(size * ASPECT)
    width, height = (short, long) if portrait else (long, short)
    focal = 0.5 * short / math.tan(math.radians(FOV_DEG) / 2)
    renderer = SpotRenderer(load_spot(), nthreads=nthreads)
    light = random_sh_light(np.random.default_rng(LIGHT_SEED))
    azimuth, paused = camera_path(n, turn_deg, pause, rng)
    shake = np.cumsum(rng.normal(0, 0.004, (n, 3)), axis=0) * 0.5  # a hand's drift around the aim
    moving = [i for i in range(n) if i not in paused]
    blurred = set(rng.choice(moving, size=int(blurred_share * len(moving)), replace=False).tolist())
    clip = Clip(Path(out), blurred=blurred, paused=paused, focal=focal)
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"crf": "18"})
        stream.width, stream.height = (height, width) if portrait else (width, height)
        stream.pix_fmt = "yuv420p"
        if portrait:
            stream.set_display_rotation(-90)
        for i in range(n):
            elevation = math.radians(elevation_deg + 8 * math.sin(2 * math.pi * i / n))
            position = 3.0 * np.array([math.cos(elevation) * math.sin(azimuth[i]), math.sin(elevation),
                                       math.cos(elevation) * math.cos(azimuth[i])]) + shake[i]
            c2w = look_at(position, target=shake[i] * 2)
            render = renderer.render(c2w, focal, max(width, height), light, supersample=1)
            image = _compose(render, width, height)
            if i in blurred:
                image = _smear(image, max(3, short // 24))
            clip.upright.append(image)
            clip.c2w.append(c2w)
            stored = np.ascontiguousarray(np.rot90(image, 1)) if portrait else image
            for packet in stream.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return clip


def photograph_spot(folder: Path, count: int, size: int = 360, nthreads: int = 1) -> list[Path]:
    """`count` JPEG stills of the cow under the clip's light, from around it at two heights, with the
    EXIF a camera writes (make, model, 35 mm-equivalent focal length)."""
    folder.mkdir(parents=True, exist_ok=True)
    renderer = SpotRenderer(load_spot(), nthreads=nthreads)
    light = random_sh_light(np.random.default_rng(LIGHT_SEED))
    width, height = _even(size * 4 / 3), _even(size)
    focal = 0.5 * height / math.tan(math.radians(FOV_DEG) / 2)
    paths = []
    for k in range(count):
        azimuth, elevation = 2 * math.pi * (k + 0.25) / count, math.radians(35 if k % 2 else 5)
        position = 3.0 * np.array([math.cos(elevation) * math.sin(azimuth), math.sin(elevation),
                                   math.cos(elevation) * math.cos(azimuth)])
        image = _compose(renderer.render(look_at(position), focal, width, light, supersample=2), width, height)
        exif = Image.Exif()
        exif[0x010F], exif[0x0110] = "Render", "Spot Still"  # Make, Model
        exif.get_ifd(0x8769)[0xA405] = round(focal / math.hypot(width, height) * 43.27)  # FocalLengthIn35mmFilm
        paths.append(folder / f"still_{k:02d}.jpg")
        Image.fromarray(image).save(paths[-1], quality=92, exif=exif)
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.synthetic.spot_video", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="the video to write (.mp4)")
    parser.add_argument("--size", type=int, default=360, help="short side of the frame in pixels")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--portrait", action="store_true", help="stored landscape, shown portrait (rotation metadata)")
    parser.add_argument("--turn", type=float, default=360.0, help="degrees the camera walks around the cow")
    parser.add_argument("--elevation", type=float, default=20.0, help="degrees above the cow's middle")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--truth", type=Path, help="also write every frame's true camera here (transforms.json, "
                        "frames named as ingest names them: <video stem>_f0123)")
    parser.add_argument("--photos", type=Path, help="also write JPEG stills of the cow into this folder")
    parser.add_argument("--photo-count", type=int, default=10)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    clip = film_spot(args.out, args.size, args.seconds, args.portrait, args.turn, args.elevation, seed=args.seed,
                     nthreads=0)
    print(f"wrote {args.out}: {len(clip.upright)} frames {clip.upright[0].shape[1]}x{clip.upright[0].shape[0]}, "
          f"{len(clip.blurred)} smeared by shake, {len(clip.paused)} standing still")
    if args.truth:
        h, w = clip.upright[0].shape[:2]
        stems = [f"{args.out.stem}_f{i:04d}" for i in range(len(clip.c2w))]
        frames = [Frame(stem, c2w, clip.focal, clip.focal, w / 2, h / 2, w, h, file_path=f"{stem}.png")
                  for stem, c2w in zip(stems, clip.c2w)]
        write_transforms(args.truth, frames, "PINHOLE")
        print(f"wrote the frames' true cameras to {args.truth}")
    if args.photos:
        print(f"wrote {len(photograph_spot(args.photos, args.photo_count, args.size, nthreads=0))} stills to "
              f"{args.photos}")


if __name__ == "__main__":
    main()
