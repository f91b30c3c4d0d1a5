"""Where each photo's pixels meet the (frozen) surface: the only geometry the material stage needs.

    surface = surface_from_field(field, grid, cameras, step_size, masks, photos, normal_targets)
    surface = surface_from_capture(capture_dir, "train")      # ground truth (bench/ground_truth.py)

Geometry is fixed while the material trains, so every pixel's surface point is found once, up
front: the expected depth of the geometry field's volume rendering along the pixel's ray. Pixels
whose ray is not (nearly) opaque lie on the silhouette edge, where one surface point does not
describe the pixel; they are left out. Training then costs one material query per pixel
instead of a whole ray of samples. The same container is filled from ground truth for tests
and for evaluating the decomposition on synthetic captures.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from stages.field.nerfw_field import NerfWField
from stages.field.occupancy import OccupancyGrid
from stages.field.rays import Cameras
from stages.field.rendering import render_front_to_back


@dataclass
class SurfacePixels:
    """K pixels with their surface point, over P photos.

    image, px, py [K] int64 (photo index, pixel column, row); positions [K, 3] world;
    view_dirs [K, 3] unit (camera -> surface); normals [K, 3] unit world (the normal target: the
    normals stage's Sobel normal, or the true normal); rgb [K, 3] the photo's sRGB values in
    [0, 1], or None where there is no photo (a new view); sizes [P, 2] (width, height) per photo.
    """

    image: Tensor
    px: Tensor
    py: Tensor
    positions: Tensor
    view_dirs: Tensor
    normals: Tensor
    rgb: Tensor | None
    sizes: Tensor

    def __len__(self) -> int:
        return self.image.shape[0]

    @property
    def n_photos(self) -> int:
        return self.sizes.shape[0]

    def select(self, keep: Tensor) -> "SurfacePixels":
        """The pixels where keep [K] (bool or indices) selects them."""
        per_pixel = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sizes"}
        return SurfacePixels(**{k: (None if v is None else v[keep]) for k, v in per_pixel.items()}, sizes=self.sizes)

    def paint(self, view: int, values: Tensor, background: float = 0.0) -> Tensor:
        """Per-pixel values [K, C] (one row per pixel of this container) -> photo `view`'s image
        [H, W, C], `background` where the photo has no surface pixel."""
        w, h = (int(v) for v in self.sizes[view].tolist())
        mine = self.image == view
        out = values.new_full((h, w, values.shape[1]), background)
        out[self.py[mine], self.px[mine]] = values[mine]
        return out

    def to(self, device: str | torch.device) -> "SurfacePixels":
        return SurfacePixels(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).to(device))
                                for f in fields(self)})

    @staticmethod
    def concatenate(parts: Sequence["SurfacePixels"], sizes: Tensor) -> "SurfacePixels":
        """Join per-photo parts (each with image indices already set) sharing `sizes` [P, 2]."""
        def cat(name):
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else torch.cat(values)
        return SurfacePixels(**{f.name: cat(f.name) for f in fields(SurfacePixels) if f.name != "sizes"}, sizes=sizes)


def pixel_rays(cameras: Cameras, view: int, px: Tensor, py: Tensor) -> tuple[Tensor, Tensor]:
    """Rays of camera `view` through pixels px, py [K] -> origins [K, 3], unit directions [K, 3]."""
    idx = torch.full_like(px, view)
    return cameras.rays(idx, px, py)


@torch.no_grad()
def expected_surface(field: NerfWField, grid: OccupancyGrid, origins: Tensor, directions: Tensor,
                     step_size: float, chunk: int = 1 << 14) -> tuple[Tensor, Tensor]:
    """Density-only volume rendering of rays [R, 3]: (opacity acc [R], expected distance t [R] / acc).

    Rays stop once opaque (render_front_to_back), so what lies behind the surface costs nothing.
    The distance is normalised by the opacity so it is a point on the surface, not pulled
    towards the camera where the ray is not fully opaque.
    """
    def density_only(part):
        return field.density(part.positions)[0], part.t.new_zeros(part.t.shape[0], 0)

    accs, depths = [], []
    for start in range(0, origins.shape[0], chunk):
        acc, _, depth = render_front_to_back(origins[start:start + chunk], directions[start:start + chunk], grid,
                                             step_size, density_only)
        accs.append(acc)
        depths.append(depth / acc.clamp(min=1e-6))
    return torch.cat(accs), torch.cat(depths)


def surface_from_field(field: NerfWField, grid: OccupancyGrid, cameras: Cameras, step_size: float,
                       masks: Sequence[np.ndarray], photos: Sequence[np.ndarray | None],
                       normal_targets: Sequence[np.ndarray], min_acc: float = 0.98,
                       max_pixels_per_photo: int = 0, seed: int = 0, progress=None) -> SurfacePixels:
    """Surface pixels of every photo from the trained geometry field.

    masks: [H, W] bool per photo (object pixels); photos: [H, W, 3] uint8 sRGB per photo, or None
    (a new view: no colours); normal_targets: [H, W, 3] world normals per photo (the normals
    stage's views/<stem>.npz). Pixels are kept where the mask is set, the rendered opacity is at
    least `min_acc` and the normal target is finite and non-zero. With max_pixels_per_photo > 0,
    that many mask pixels per photo are drawn at random first (preview: fewer queries up front).
    """
    device = cameras.c2w.device
    rng = np.random.default_rng(seed)
    parts = []
    views = range(len(cameras))
    for view in (progress(views, desc="surface points") if progress is not None else views):
        py, px = np.nonzero(masks[view])
        if 0 < max_pixels_per_photo < len(px):
            pick = np.sort(rng.choice(len(px), max_pixels_per_photo, replace=False))
            py, px = py[pick], px[pick]
        target = np.asarray(normal_targets[view], dtype=np.float32)[py, px]
        length = np.linalg.norm(target, axis=-1)
        ok = np.isfinite(length) & (length > 0.5)
        py, px, target = py[ok], px[ok], target[ok] / length[ok, None]
        px_t, py_t = torch.from_numpy(px).long().to(device), torch.from_numpy(py).long().to(device)
        origins, dirs = pixel_rays(cameras, view, px_t, py_t)
        acc, t = expected_surface(field, grid, origins, dirs, step_size)
        keep = acc >= min_acc
        rgb = None
        if photos[view] is not None:
            rgb = torch.from_numpy(photos[view][py, px]).to(device)[keep].float() / 255.0
        parts.append(SurfacePixels(
            image=torch.full((int(keep.sum()),), view, dtype=torch.long, device=device),
            px=px_t[keep], py=py_t[keep], positions=(origins + t[:, None] * dirs)[keep], view_dirs=dirs[keep],
            normals=torch.from_numpy(target).to(device)[keep], rgb=rgb, sizes=cameras.size))
    return SurfacePixels.concatenate(parts, cameras.size)
