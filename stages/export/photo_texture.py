"""Albedo read from the photos themselves, de-lit: texture detail at the photos' resolution, and
relighting that stays honest.

    photos = PhotoAlbedo(mesh, views)                       # views: PhotoView per training photo
    albedo, confidence = photos.estimate(points, geo_normals, shading_normals, specular, glossiness)

Each photo that sees a surface point (the point is in front of the mesh from that camera and well
inside the photo's mask) gives one estimate of its albedo by inverting the material stage's own
shading model with that photo's learned light and camera response (stages/material/):
    albedo_j = (photo colour, linear, tone curve undone - specular lobe) / (irradiance / pi),
the irradiance losing the light's directional part where a shadow ray towards its dominant
direction hits the mesh (faded in over the terminator as the material stage does). Estimates
are fused robustly: the median of their luminance picks the consensus, estimates far from it (a shadow or highlight the light model missed, an
occluder, a misregistered edge) are dropped, the rest averaged with weights that favour close,
head-on views (weight^2, so the sharpest view dominates where views disagree in detail). Where
few photos see a point, `confidence` < 1 says how much to trust the result over the material
field's smooth albedo.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from scipy.ndimage import distance_transform_edt

from stages.common.cameras import Frame, project
from stages.common.colour import srgb_to_linear
from stages.common.sh import sh_dominant_direction
from stages.common.images import sample_bilinear
from stages.material.shading import shade
from stages.material.visibility import cast_shadow_visibility

MIN_COS = 0.15  # grazing views are blurred and misregistered: ignored below this cosine
EDGE_PX = 4.0  # estimates fade in over this many pixels inside the mask's edge
INLIER_RELATIVE = 0.25  # estimates within this fraction (+ INLIER_ABSOLUTE) of the median luminance count
INLIER_ABSOLUTE = 0.02
FULL_CONFIDENCE_WEIGHT = 2.0  # the photos are fully trusted where this many typical views agree
MAX_VIEWS = 8  # a point is de-lit from at most its this many best views (by the geometric weight)


@dataclass
class PhotoView:
    """A training photo: its camera, sRGB photo [H, W, 3] uint8, mask [H, W] bool, learned light
    [9, 3] and camera response (recorded linear = shaded linear ^ gamma)."""

    frame: Frame
    photo: np.ndarray
    mask: np.ndarray
    light: np.ndarray
    gamma: float = 1.0


class PhotoAlbedo:
    """The photos of a capture, ready to give de-lit albedo estimates at points on `mesh`."""

    def __init__(self, mesh: trimesh.Trimesh, views: list[PhotoView], shadows: bool = True,
                 max_views: int = MAX_VIEWS):
        import open3d as o3d

        from stages.export.preview import pixel_rays

        self.views, self.shadows, self.max_views = views, shadows, max_views
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(o3d.core.Tensor(mesh.vertices.astype(np.float32)),
                                 o3d.core.Tensor(mesh.faces.astype(np.uint32)))
        self.tolerance = 0.004 * float(np.linalg.norm(mesh.bounds[1] - mesh.bounds[0]))
        # numpy and scipy run on one core: the photos are worked on side by side, one per core
        self.threads = max(1, torch.get_num_threads())

        def prepare(view):  # distance to the mesh along each pixel's ray, and depth into the mask
            origins, dirs = pixel_rays(view.frame)
            rays = o3d.core.Tensor(np.concatenate([origins, dirs], axis=1).astype(np.float32))
            return (self.scene.cast_rays(rays)["t_hit"].numpy().reshape(view.frame.h, view.frame.w),
                    np.clip(distance_transform_edt(view.mask) / EDGE_PX, 0.0, 1.0).astype(np.float32))

        self.depths, self.inner = zip(*self._each(prepare, views)) if views else ((), ())

    def _each(self, work, items) -> list:
        """work(item) for every item, on `threads` threads, results in order."""
        with ThreadPoolExecutor(self.threads) as pool:
            return list(pool.map(work, items))

    def estimate(self, points: np.ndarray, geo_normals: np.ndarray, normals: np.ndarray, specular: np.ndarray,
                 glossiness: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Points [N, 3] world with their smooth mesh normals [N, 3], the material's (refined)
        normals [N, 3], specular strength [N] and glossiness [N] -> (albedo [N, 3] linear RGB,
        confidence [N] in [0, 1])."""
        n = len(points)
        sighting = np.zeros((len(self.views), n), dtype=np.float32)  # geometric weight, 0: unseen
        samples = np.zeros((len(self.views), n, 3), dtype=np.float32)
        weights = np.zeros((len(self.views), n), dtype=np.float32)

        def sight(j: int) -> None:  # each photo writes its own row
            idx, weight = self._sightings(j, self.views[j], points, geo_normals)
            sighting[j, idx] = weight

        def delight(j: int) -> None:
            idx = np.flatnonzero(sighting[j])
            if len(idx):
                samples[j, idx], lit = self._delit(self.views[j], points[idx], geo_normals[idx], normals[idx],
                                                   specular[idx], glossiness[idx])
                weights[j, idx] = sighting[j, idx] * lit

        self._each(sight, range(len(self.views)))
        if len(self.views) > self.max_views:  # de-light only each point's best views
            kth_best = -np.partition(-sighting, self.max_views - 1, axis=0)[self.max_views - 1]
            sighting[sighting < kth_best] = 0.0
        self._each(delight, range(len(self.views)))
        return fuse(samples, weights)

    def _sightings(self, j: int, view: PhotoView, points, geo_normals) -> tuple[np.ndarray, np.ndarray]:
        """Which points photo j sees (in front of the mesh, inside its mask, not grazing) and how
        well: weights [K] favouring head-on, close (pixels per unit area) views away from the
        mask's edge."""
        frame = view.frame
        pix, depth = project(points, frame)
        col, row = np.floor(pix[:, 0]).astype(np.int64), np.floor(pix[:, 1]).astype(np.int64)
        idx = np.flatnonzero((depth > 0) & (col >= 0) & (col < frame.w) & (row >= 0) & (row < frame.h))
        col, row = col[idx], row[idx]
        to_camera = frame.centre - points[idx]
        distance = np.linalg.norm(to_camera, axis=1)
        cos = np.einsum("nc,nc->n", geo_normals[idx], to_camera) / np.maximum(distance, 1e-12)
        visible = ((np.abs(self.depths[j][row, col] - distance) < self.tolerance) & (cos > MIN_COS)
                   & view.mask[row, col])
        idx, col, row, cos, distance = (a[visible] for a in (idx, col, row, cos, distance))
        return idx, cos * (frame.fl_x / distance) ** 2 * self.inner[j][row, col]

    def _delit(self, view: PhotoView, points, geo_normals, normals, specular, glossiness):
        """Albedo estimates [K, 3] of points the photo sees, and how lit each is in [0, 1] (an
        estimate divided by a tiny irradiance amplifies the photo's noise)."""
        frame = view.frame
        pix, _ = project(points, frame)
        to_camera = frame.centre - points
        to_camera /= np.linalg.norm(to_camera, axis=1, keepdims=True)
        recorded = srgb_to_linear(sample_bilinear(view.photo, pix / (frame.w, frame.h)) / 255.0)
        colour = recorded ** (1.0 / view.gamma)  # undo the camera's tone curve
        coeffs = torch.as_tensor(view.light, dtype=torch.float64)
        n_shade = torch.from_numpy(normals).double()
        visibility = None
        if self.shadows:  # the material stage's shadow model, with the mesh as the occluder
            towards = torch.from_numpy(np.broadcast_to(sh_dominant_direction(view.light), (len(points), 3)).copy())
            visibility = cast_shadow_visibility(n_shade, towards, torch.from_numpy(
                1.0 - self._blocked(points, geo_normals, towards.numpy())))
        unit = shade(torch.ones(len(points), 3, dtype=torch.float64), torch.from_numpy(specular).double(),
                     torch.from_numpy(glossiness).double(), n_shade, torch.from_numpy(-to_camera).double(),
                     coeffs, visibility)
        diffuse = unit.diffuse.numpy()  # irradiance / pi: the colour an albedo of 1 would have
        albedo = (colour - unit.specular.numpy()) / np.maximum(diffuse, 1e-6)
        lit = np.clip(diffuse.mean(1) / (0.25 * np.median(diffuse.mean(1)) + 1e-9), 0.0, 1.0)
        return albedo.clip(0.0, 4.0), lit

    def _blocked(self, points: np.ndarray, normals: np.ndarray, towards: np.ndarray) -> np.ndarray:
        """1 where a ray from each point along towards [N, 3] hits the mesh."""
        import open3d as o3d

        origins = points + self.tolerance * normals
        rays = o3d.core.Tensor(np.concatenate([origins, towards], axis=1).astype(np.float32))
        return self.scene.test_occlusions(rays).numpy().astype(np.float64)


def fuse(samples: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Robust fusion of albedo estimates [P, N, 3] with weights [P, N] (0: no estimate) ->
    (albedo [N, 3], confidence [N]): the median luminance of the estimates (unweighted, so an
    occluder in front of the closest view cannot win it), the estimates near it, their
    weight^2-averaged colour."""
    lum = samples @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)  # [P, N]
    valid = weights > 0
    ordered = np.sort(np.where(valid, lum, np.inf), axis=0)
    middle = np.maximum(valid.sum(0) - 1, 0) // 2
    median = np.take_along_axis(ordered, middle[None], axis=0)[0]
    inlier = valid & (np.abs(lum - median[None]) <= INLIER_RELATIVE * median[None] + INLIER_ABSOLUTE)
    kept = np.where(inlier, weights, 0.0)
    albedo = np.einsum("pn,pnc->nc", kept ** 2, samples) / np.maximum((kept ** 2).sum(0), 1e-20)[:, None]
    one_view = np.median(weights[valid]) if valid.any() else 1.0  # a typical single view's weight
    return albedo, np.clip(kept.sum(0) / (FULL_CONFIDENCE_WEIGHT * one_view), 0.0, 1.0)


def texture_size_for(mesh: trimesh.Trimesh, frames: list[Frame], texels_per_pixel: float = 1.0,
                     utilization: float = 0.7, smallest: int = 512, largest: int = 4096) -> int:
    """The power-of-two texture side nearest (in log2) to `texels_per_pixel` texels per photo
    pixel on the surface (a photo's pixel there: the median over photos of distance / focal),
    within [smallest, largest]. Rounding up instead gave the skull's 1024-px photos 2048 textures:
    3.7x the texels the photos carry, at 2.6x the bake time, for 6 % more gradient energy."""
    centre = mesh.bounds.mean(0)
    footprint = float(np.median([np.linalg.norm(f.centre - centre) / f.fl_x for f in frames]))
    side = texels_per_pixel * math.sqrt(max(mesh.area / (footprint ** 2) / utilization, 1.0))
    return int(min(max(2 ** round(math.log2(side)), smallest), largest))
