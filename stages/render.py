"""Rendering any cameras from a finished workdir: what `neroic render` does.

    folders = {name: workdir / name for name in needed_stages(kinds, relit=..., turntable=...)}
    written = render(folders, out, kinds, light=..., cameras=frames or turntable=36)

Cameras come in the method.md format (transforms.json), or as a turntable around the object.
Each frame's pictures are named after its file_path stem, so renders line up with photos: frame
`test/r_003.png` gives OUT/r_003.png (rgb, opacity as alpha) and OUT/<kind>/r_003.png for the
other kinds:
  alpha     8-bit opacity
  depth     16-bit, distance along the ray in thousandths of a world unit (0 = empty)
  normal    (n + 1) / 2 of the world normal (normals stage's Sobel grid, refined by the material
            stage when a light is given)
  albedo, shading, specular   the material stage's layers (sRGB-encoded; shading = irradiance/pi)
Without a light, rgb is the geometry field's colour with one training photo's appearance code
(`appearance_of`) or the neutral (mean) code. With a light ([9, 3] SH, method.md), rgb is the
object relit: albedo/pi * E(n) + specular lobe, with cast shadows through the same density grid
the material stage trained with. The caller (the CLI) checks that the stages it passes are done.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from stages.common.cameras import Frame, frame_stem, orbit_frames, read_transforms
from stages.common.images import write_png
from stages.errors import NeroicError

KINDS = ("rgb", "alpha", "depth", "normal", "albedo", "shading", "specular")
MATERIAL_KINDS = ("albedo", "shading", "specular")


def needed_stages(kinds: tuple[str, ...], relit: bool, turntable: bool) -> tuple[str, ...]:
    """The stages whose outputs rendering these kinds needs (poses only for a turntable)."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise NeroicError(f"unknown render kind(s): {', '.join(sorted(unknown))}",
                          hint=f"choose from {', '.join(KINDS)}")
    shaded = relit or bool(set(kinds) & set(MATERIAL_KINDS))
    needed = ["geometry"]
    if "normal" in kinds or shaded:
        needed.append("normals")
    if shaded:
        needed.append("material")
    if turntable:
        needed.append("poses")
    return tuple(needed)


def learned_light(material_dir: Path, photo: str) -> np.ndarray:
    """The SH light [9, 3] the material stage learned for one photo (by name or stem)."""
    from stages.common.sh import read_lighting

    lights = read_lighting(material_dir / "lighting.json")
    for file_path, coeffs in lights:
        if file_path and frame_stem(file_path) == frame_stem(photo):
            return coeffs
    raise NeroicError(f"no learned light for photo {photo!r}",
                      hint=f"photos with lights: {', '.join(frame_stem(f) for f, _ in lights[:8] if f)} ...")


def read_light(path: Path) -> np.ndarray:
    """The first light [9, 3] of a lighting file (method.md JSON)."""
    from stages.common.sh import read_lighting

    try:
        return read_lighting(path)[0][1]
    except (ValueError, IndexError) as e:
        raise NeroicError(f"{path}: {e or 'no light in the file'}") from None


def environment_light(path: Path) -> np.ndarray:
    """An equirectangular environment image projected to an SH light [9, 3]."""
    from stages.common.envmap import read_environment
    from stages.common.sh import project_env_to_sh

    return project_env_to_sh(read_environment(path))


def turntable_frames(poses_dir: Path, n: int, elevation_deg: float = 20.0) -> list[Frame]:
    """n cameras around the object's centre at the first photo's distance and intrinsics."""
    centre = json.loads((poses_dir / "normalization.json").read_text(encoding="utf-8"))["bounds"]["center"]
    template = read_transforms(poses_dir / "transforms.json", roots=[poses_dir.parent])[0]
    distance = float(np.linalg.norm(template.centre - np.asarray(centre, dtype=float)))
    return orbit_frames(n, template, distance, centre, elevation_deg, stem="turntable")


def _to8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


class Renderer:
    """A finished workdir's field (and, when needed, normals and material) ready to render views."""

    def __init__(self, folders: dict[str, Path], what: tuple[str, ...], light: np.ndarray | None, device: str,
                 appearance_of: str | None = None):
        from stages.field.trained import load_trained_field

        self.what, self.device = what, device
        self.trained = load_trained_field(folders["geometry"], device)
        if appearance_of is not None and frame_stem(appearance_of) not in self.trained.train_stems:
            raise NeroicError(f"--appearance-of {appearance_of}: not a training photo of this workdir",
                              hint=f"training photos: {', '.join(self.trained.train_stems[:8])} ...")
        self.code = self.trained.appearance_of(frame_stem(appearance_of) if appearance_of else None)
        self.shaded = light is not None or bool(set(what) & set(MATERIAL_KINDS))
        self.normal_grid = None
        if "normal" in what or self.shaded:
            with np.load(folders["normals"] / "normal_grid.npz", allow_pickle=False) as d:
                self.normal_grid = [torch.from_numpy(d[k].astype(np.float32)).to(device)
                                    for k in ("density", "normals", "aabb_min", "aabb_max")]
        if self.shaded:
            from stages.material.material_field import load_material
            from stages.material.visibility import DensityGrid

            self.material = load_material(folders["material"], device)
            self.light = torch.as_tensor(np.asarray(light if light is not None else _white_light()),
                                         dtype=torch.float32, device=device)
            # the grid the material stage trained its shadows with, so a relit photo matches training
            self.shadows = DensityGrid.load_npz(folders["geometry"] / "density_grid.npz", device)

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


def render(folders: dict[str, Path], out_dir: Path, what: tuple[str, ...] = ("rgb",), light: np.ndarray | None = None,
           cameras: list[Frame] | None = None, turntable: int = 0, appearance_of: str | None = None,
           device: str = "cpu", progress=lambda x, **_: x) -> list[Path]:
    """Render `cameras` (or a `turntable` of that many views, also written as turntable.gif) into
    out_dir: rgb as OUT/<stem>.png, other kinds as OUT/<kind>/<stem>.png. `folders` maps the
    stage names of `needed_stages` to their finished output folders."""
    frames = turntable_frames(folders["poses"], turntable) if turntable else list(cameras or [])
    renderer = Renderer(folders, what, light, device, appearance_of)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for frame in progress(frames, desc="rendering", unit="view"):
        for kind, image in renderer.render(frame).items():
            path = out_dir / f"{frame.stem}.png" if kind == "rgb" else out_dir / kind / f"{frame.stem}.png"
            path.parent.mkdir(exist_ok=True)
            write_png(path, image)
            written.append(path)
    if turntable and "rgb" in what:
        written.append(write_animation([out_dir / f"{f.stem}.png" for f in frames], out_dir / "turntable.gif"))
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
