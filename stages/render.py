"""Rendering any cameras from a finished workdir: what `neroic render` does.

    render_cameras(workdir, frames, Path("out"), what=("rgb", "alpha"), light=None)

Cameras come in the method.md format (transforms.json), or as a turntable around the object
(`turntable_frames`). Each frame's pictures are named after its file_path stem, so renders
line up with photos: frame `test/r_003.png` gives OUT/r_003.png (rgb, opacity as alpha) and
OUT/<kind>/r_003.png for the other kinds:
  alpha     8-bit opacity
  depth     16-bit, distance along the ray in thousandths of a world unit (0 = empty)
  normal    (n + 1) / 2 of the world normal (normals stage's Sobel grid, refined by the material
            stage when a light is given)
  albedo, shading, specular   the material stage's layers (sRGB-encoded; shading = irradiance/pi)
Without a light, rgb is the geometry field's colour with one training photo's appearance code
(`appearance_of`) or the neutral (mean) code. With a light ([9, 3] SH, method.md), rgb is the
object relit: albedo/pi * E(n) + specular lobe, with cast shadows from the density grid.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from pipeline.cache import read_manifest
from stages.errors import NeroicError
from stages.common.cameras import Frame, frame_stem
from stages.common.images import write_png

KINDS = ("rgb", "alpha", "depth", "normal", "albedo", "shading", "specular")
MATERIAL_KINDS = ("albedo", "shading", "specular")


def require_stage(workdir: Path, name: str, why: str) -> Path:
    folder = Path(workdir) / name
    if read_manifest(folder) is None:
        raise NeroicError(f"{why} needs the {name} stage, which has not run in {workdir}",
                          hint=f"run `neroic run ... --until {name}` first")
    return folder


def learned_light(workdir: Path, photo: str) -> np.ndarray:
    """The SH light [9, 3] the material stage learned for one photo (by name or stem)."""
    from stages.common.sh import read_lighting

    lights = read_lighting(require_stage(workdir, "material", "--lighting-of") / "lighting.json")
    for file_path, coeffs in lights:
        if file_path and frame_stem(file_path) == frame_stem(photo):
            return coeffs
    raise NeroicError(f"no learned light for photo {photo!r}",
                      hint=f"photos with lights: {', '.join(frame_stem(f) for f, _ in lights[:8] if f)} ...")


def turntable_frames(template: Frame, n: int, elevation_deg: float = 20.0, centre=(0.0, 0.0, 0.0)) -> list[Frame]:
    """n cameras on a circle around `centre` (about world +Y), at the template camera's distance
    and intrinsics, looking at the centre from `elevation_deg` above the horizon."""
    centre = np.asarray(centre, dtype=float)
    radius = float(np.linalg.norm(template.centre - centre))
    frames = []
    for k in range(n):
        azimuth, elev = 2 * math.pi * k / n, math.radians(elevation_deg)
        eye = centre + radius * np.array([math.sin(azimuth) * math.cos(elev), math.sin(elev),
                                          math.cos(azimuth) * math.cos(elev)])
        back = (eye - centre) / np.linalg.norm(eye - centre)  # OpenGL camera +Z points backwards
        right = np.cross([0.0, 1.0, 0.0], back)
        right /= np.linalg.norm(right)
        c2w = np.eye(4)
        c2w[:3, :3] = np.stack([right, np.cross(back, right), back], axis=1)
        c2w[:3, 3] = eye
        frames.append(Frame(stem=f"turntable_{k:03d}", c2w=c2w, fl_x=template.fl_x, fl_y=template.fl_y,
                            cx=template.cx, cy=template.cy, w=template.w, h=template.h,
                            file_path=f"turntable_{k:03d}.png"))
    return frames


def _to8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


class Renderer:
    """A finished workdir's field (and, when needed, normals and material) ready to render views."""

    def __init__(self, workdir: Path, what: tuple[str, ...], light: np.ndarray | None, device: str,
                 appearance_of: str | None = None):
        from stages.field.trained import load_trained_field

        unknown = set(what) - set(KINDS)
        if unknown:
            raise NeroicError(f"unknown render kind(s): {', '.join(sorted(unknown))}",
                              hint=f"choose from {', '.join(KINDS)}")
        self.what, self.device, workdir = what, device, Path(workdir)
        self.trained = load_trained_field(require_stage(workdir, "geometry", "rendering"), device)
        if appearance_of is not None and frame_stem(appearance_of) not in self.trained.train_stems:
            raise NeroicError(f"--appearance-of {appearance_of}: not a training photo of this workdir",
                              hint=f"training photos: {', '.join(self.trained.train_stems[:8])} ...")
        self.code = self.trained.appearance_of(frame_stem(appearance_of) if appearance_of else None)
        self.shaded = light is not None or bool(set(what) & set(MATERIAL_KINDS))
        self.normal_grid = None
        if "normal" in what or self.shaded:
            with np.load(require_stage(workdir, "normals", "normals") / "normal_grid.npz", allow_pickle=False) as d:
                self.normal_grid = [torch.from_numpy(d[k].astype(np.float32)).to(device)
                                    for k in ("density", "normals", "aabb_min", "aabb_max")]
        if self.shaded:
            from stages.material.material_field import load_material
            from stages.material.visibility import DensityGrid

            self.material = load_material(require_stage(workdir, "material", "relighting"), device)
            self.light = torch.as_tensor(np.asarray(light if light is not None else _white_light()),
                                         dtype=torch.float32, device=device)
            density, _, lo, hi = self.normal_grid
            self.shadows = DensityGrid(density, lo, hi)

    def render(self, frame: Frame) -> dict[str, np.ndarray]:
        """All requested pictures of one camera: name -> uint8/uint16 image."""
        from stages.field.rays import Cameras
        from stages.field.rendering import render_image
        from stages.normals import render_grid_normals

        trained, device = self.trained, self.device
        cams = Cameras.from_frames([frame]).to(device)
        h, w = frame.h, frame.w
        py, px = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        origins, dirs = cams.rays(torch.zeros(h * w, dtype=torch.long, device=device), px.reshape(-1), py.reshape(-1))
        with torch.no_grad():
            out = render_image(trained.field, trained.grid, origins, dirs, self.code, trained.step_size)
        acc = out["acc"].clamp(0, 1)
        alpha8 = _to8(acc.view(h, w))
        pictures: dict[str, np.ndarray] = {}
        if "rgb" in self.what and not self.shaded:
            rgb = out["rgb"] / acc.clamp(min=1e-6)[:, None]  # un-premultiply: the PNG carries alpha
            pictures["rgb"] = np.dstack([_to8(rgb.view(h, w, 3)), alpha8])
        if "alpha" in self.what:
            pictures["alpha"] = alpha8
        if "depth" in self.what:
            depth = out["depth"] / acc.clamp(min=1e-6) * (acc > 0.5)
            pictures["depth"] = (depth.view(h, w) * 1000).round().clamp(0, 65535).cpu().numpy().astype(np.uint16)
        if self.normal_grid is None:
            return pictures
        density, normals, lo, hi = self.normal_grid
        with torch.no_grad():
            n, n_acc, t = render_grid_normals(density, normals, lo, hi, trained.grid, origins, dirs, trained.step_size)
        if not self.shaded:
            pictures["normal"] = np.dstack([_to8((n.view(h, w, 3) + 1) / 2), _to8(n_acc.view(h, w))])
            return pictures
        pictures.update(self._shade(origins, dirs, n, n_acc, t, h, w))
        return pictures

    @torch.no_grad()
    def _shade(self, origins, dirs, normals, acc, t, h, w) -> dict[str, np.ndarray]:
        from stages.common.colour import linear_to_srgb
        from stages.common.sh import sh_dominant_direction
        from stages.material.shading import shade

        hit = (acc > 0.5).nonzero()[:, 0]
        points = origins[hit] + dirs[hit] * t[hit, None]
        albedo, specular, gloss, refined = self.material.query(points, normals[hit])
        towards = torch.as_tensor(sh_dominant_direction(self.light.cpu().numpy()), dtype=torch.float32,
                                  device=points.device).expand_as(points)
        visibility = self.shadows.visibility(points, refined, towards)
        s = shade(albedo, specular, gloss, refined, dirs[hit], self.light, visibility)
        alpha8 = _to8(acc.view(h, w))
        layers = {"rgb": linear_to_srgb(s.rgb), "albedo": linear_to_srgb(albedo),
                  "shading": linear_to_srgb(s.irradiance / math.pi), "specular": linear_to_srgb(s.specular),
                  "normal": (refined + 1) / 2}
        pictures = {}
        for kind, values in layers.items():
            if kind in self.what:
                image = torch.zeros(h * w, 3, device=values.device)
                image[hit] = values
                pictures[kind] = np.dstack([_to8(image.view(h, w, 3)), alpha8])
        return pictures


def _white_light() -> np.ndarray:
    """Uniform white light of radiance 1 (for albedo/shading layers when no light is given)."""
    from stages.common.sh import ambient_sh

    return ambient_sh([1.0, 1.0, 1.0])


def render_cameras(workdir: Path, frames: list[Frame], out_dir: Path, what: tuple[str, ...] = ("rgb",),
                   light: np.ndarray | None = None, appearance_of: str | None = None, device: str = "cpu",
                   progress=lambda x, **_: x) -> list[Path]:
    """Render every frame into out_dir (rgb as OUT/<stem>.png, others as OUT/<kind>/<stem>.png)."""
    renderer = Renderer(workdir, what, light, device, appearance_of)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for frame in progress(frames, desc="rendering", unit="view"):
        for kind, image in renderer.render(frame).items():
            path = out_dir / f"{frame.stem}.png" if kind == "rgb" else out_dir / kind / f"{frame.stem}.png"
            path.parent.mkdir(exist_ok=True)
            write_png(path, image)
            written.append(path)
    return written


def write_animation(pngs: list[Path], path: Path, background=(40, 40, 40), ms_per_frame: int = 80) -> Path:
    """RGBA frames -> an animated GIF on a plain background (any viewer plays it)."""
    from PIL import Image

    frames = []
    for p in pngs:
        with Image.open(p) as im:
            rgba = im.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, background + (255,))
            frames.append(Image.alpha_composite(canvas, rgba).convert("RGB"))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0)
    return path
