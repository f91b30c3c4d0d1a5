"""Which cells of the object's box can hold matter: the visual hull, then what the field says.

    hull = carve_visual_hull(cameras, masks, aabb_min, aabb_max, resolution=128)
    grid = OccupancyGrid(aabb_min, aabb_max, hull)
    grid.lookup(positions)                      # [N, 3] world -> [N] bool
    grid.update(field_density_fn, step_size)    # every few training steps

The grid is a [G, G, G] boolean array over the box, axis 0 = x, 1 = y, 2 = z (flat index
(i*G + j)*G + k). Cells outside the visual hull never come back: the masks say nothing is there.
Inside the hull a cell stays occupied while an exponential moving maximum of the field's density
at random points in it exceeds a threshold, so empty space carved by training stops costing samples.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from torch import Tensor

from stages.field.rays import Cameras


def carve_visual_hull(cameras: Cameras, masks: Sequence[np.ndarray], aabb_min: Tensor, aabb_max: Tensor,
                      resolution: int = 128, margin_px: float = 2.0, max_miss_fraction: float = 0.05,
                      min_misses: int = 0, distances: Sequence[Tensor] | None = None) -> Tensor:
    """Cells seen inside the masks: [G, G, G] bool over the box (aabb_min, aabb_max: [3] world).

    masks: one [H, W] bool array per camera (True = object). A cell counts as inside a photo if
    the distance from its projected centre to the mask is at most its projected half-diagonal plus
    `margin_px`; it is kept if it falls outside the mask in at most max_miss_fraction of the photos
    that see it, and never fewer than `min_misses` (tolerating a few bad masks or poses: one mask
    with a hole must not carve the object away), and at least one photo sees it.
    Carved coarse to fine: only the children of kept cells are tested at the next resolution
    (a child's sphere lies inside its parent's, so nothing kept at full resolution is lost).
    distances: `mask_distances(masks)`, when the same masks carve several boxes.
    """
    device = aabb_min.device
    if distances is None:
        distances = mask_distances(masks, device)
    res = resolution
    while res % 2 == 0 and res > 16:
        res //= 2
    axes = torch.arange(res, device=device)
    ijk = torch.stack(torch.meshgrid(axes, axes, axes, indexing="ij"), dim=-1).reshape(-1, 3)
    children = torch.stack(torch.meshgrid(*[torch.arange(2, device=device)] * 3, indexing="ij"), -1).reshape(-1, 3)
    while True:
        cell = (aabb_max - aabb_min) / res
        keep = _cells_inside_masks(cameras, distances, aabb_min + (ijk + 0.5) * cell,
                                   0.5 * float(cell.norm()), margin_px, max_miss_fraction, min_misses)
        ijk = ijk[keep]
        if res == resolution:
            break
        ijk = (ijk[:, None, :] * 2 + children).reshape(-1, 3)
        res *= 2
    grid = torch.zeros(resolution ** 3, dtype=torch.bool, device=device)
    grid[(ijk[:, 0] * resolution + ijk[:, 1]) * resolution + ijk[:, 2]] = True
    return grid.view(resolution, resolution, resolution)


def mask_distances(masks: Sequence[np.ndarray], device: str | torch.device = "cpu") -> list[Tensor]:
    """Per mask [H, W] bool, the distance (pixels) from every pixel to the nearest mask pixel, 0
    inside the mask: what the hull test reads."""
    return [torch.from_numpy(distance_transform_edt(~m).astype(np.float32)).to(device) for m in masks]


def _cells_inside_masks(cameras: Cameras, distances: list[Tensor], centres: Tensor, half_diag: float,
                        margin_px: float, max_miss_fraction: float, min_misses: int = 0) -> Tensor:
    """centres [N, 3] world -> [N] bool, the hull test of `carve_visual_hull`."""
    seen = torch.zeros(centres.shape[0], dtype=torch.int32, device=centres.device)
    misses = torch.zeros_like(seen)
    for view, dist in enumerate(distances):
        pix, depth = cameras.project(centres, view)
        h, w = dist.shape
        radius = half_diag * cameras.intrinsics[view, :2].max() / depth.clamp(min=1e-6) + margin_px
        col, row = pix[:, 0].floor().long(), pix[:, 1].floor().long()
        in_frame = (depth > 1e-6) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
        d = dist[row.clamp(0, h - 1), col.clamp(0, w - 1)]
        seen += in_frame.int()
        misses += (in_frame & (d > radius)).int()
    allowed = (seen.float() * max_miss_fraction).floor().int().clamp(min=min_misses)
    return (seen > 0) & (misses <= allowed)


def hull_signed_distance(hull: Tensor, aabb_min: Tensor, aabb_max: Tensor) -> Tensor:
    """Signed distance [G, G, G] (world units, negative inside) from each cell centre of a hull
    grid [G, G, G] bool over the box to the hull's boundary (halfway between inside and outside
    cells): an SDF field's starting shape."""
    from scipy.ndimage import distance_transform_edt

    inside = hull.cpu().numpy()
    spacing = ((aabb_max - aabb_min) / hull.shape[0]).cpu().numpy().astype(np.float64)
    half = 0.5 * float(spacing.mean())
    to_inside = distance_transform_edt(~inside, sampling=spacing)  # outside cells: distance to an inside one
    to_outside = distance_transform_edt(inside, sampling=spacing)
    signed = np.where(inside, half - to_outside, to_inside - half)
    return torch.from_numpy(signed.astype(np.float32)).to(hull.device)


class OccupancyGrid:
    """Occupied cells over the box [aabb_min, aabb_max] (world, [3] each), hull: [G, G, G] bool."""

    def __init__(self, aabb_min: Tensor, aabb_max: Tensor, hull: Tensor):
        self.resolution = hull.shape[0]
        self.aabb_min, self.aabb_max = aabb_min.float(), aabb_max.float()
        self.hull = hull.reshape(-1).clone()
        self.occupied = self.hull.clone()
        self.density = torch.full(self.hull.shape, -1.0, device=hull.device)  # -1: never evaluated

    @property
    def occupied(self) -> Tensor:
        """[G^3] bool, flat: the cells that currently hold matter."""
        return self._occupied

    @occupied.setter
    def occupied(self, value: Tensor) -> None:
        self._occupied = value
        self._occupied_box = None  # every march asks for the box: found once per change, not per call

    @property
    def device(self) -> torch.device:
        return self.hull.device

    def to(self, device: str | torch.device) -> "OccupancyGrid":
        for name in ("aabb_min", "aabb_max", "hull", "occupied", "density"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def cell_index(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions [N, 3] world -> (flat cell index [N], inside-the-box [N] bool)."""
        g = self.resolution
        ijk = ((positions - self.aabb_min) / (self.aabb_max - self.aabb_min) * g).floor().long()
        inside = ((ijk >= 0) & (ijk < g)).all(dim=-1)
        ijk = ijk.clamp(0, g - 1)
        return (ijk[:, 0] * g + ijk[:, 1]) * g + ijk[:, 2], inside

    def lookup(self, positions: Tensor) -> Tensor:
        """positions [N, 3] world -> [N] bool, True where the cell is occupied."""
        flat, inside = self.cell_index(positions)
        return self.occupied[flat] & inside

    @torch.no_grad()
    def update(self, density_fn: Callable[[Tensor], Tensor], step_size: float, decay: float = 0.95,
               min_opacity: float = 0.01, fraction: float = 1.0, chunk: int = 1 << 18) -> float:
        """Re-evaluate the density at one random point in a random `fraction` of the hull cells (all
        cells never evaluated yet are included); returns the occupied fraction of the hull.

        density_fn: positions [N, 3] world -> sigma [N] per world unit. A cell is occupied while its
        decayed running maximum exceeds the density that makes one march step `min_opacity` opaque
        (capped by the mean, so an untrained field does not empty the grid).
        """
        cells = self.hull.nonzero()[:, 0]
        if fraction < 1.0:
            pick = torch.rand(cells.shape[0], device=self.device) < fraction
            cells = cells[pick | (self.density[cells] < 0)]
        g = self.resolution
        ijk = torch.stack((cells // (g * g), (cells // g) % g, cells % g), dim=-1).float()
        cell_size = (self.aabb_max - self.aabb_min) / g
        new = torch.empty(cells.shape[0], device=self.device)
        for start in range(0, cells.shape[0], chunk):
            part = ijk[start:start + chunk]
            points = self.aabb_min + (part + torch.rand_like(part)) * cell_size
            new[start:start + chunk] = density_fn(points)
        old = self.density[cells]
        self.density[cells] = torch.where(old < 0, new, torch.maximum(old * decay, new))
        threshold = min(-math.log(1.0 - min_opacity) / step_size, float(self.density[self.hull].mean()))
        self.occupied = self.hull & (self.density > threshold)
        return float(self.occupied.sum()) / max(int(self.hull.sum()), 1)

    def occupied_aabb(self) -> tuple[Tensor, Tensor]:
        """The box around the occupied cells, one cell larger each side (clipped to the grid box)."""
        if self._occupied_box is None:
            self._occupied_box = self._box_around_occupied()
        return tuple(v.clone() for v in self._occupied_box)

    def _box_around_occupied(self) -> tuple[Tensor, Tensor]:
        g = self.resolution
        cells = self.occupied.view(g, g, g).nonzero()
        if cells.shape[0] == 0:
            return self.aabb_min.clone(), self.aabb_min.clone()
        cell_size = (self.aabb_max - self.aabb_min) / g
        lo = self.aabb_min + (cells.min(0).values - 1).clamp(min=0) * cell_size
        hi = self.aabb_min + (cells.max(0).values + 2).clamp(max=g) * cell_size
        return lo, hi

    def state_dict(self) -> dict[str, Tensor]:
        return dict(aabb_min=self.aabb_min, aabb_max=self.aabb_max, hull=self.hull,
                    occupied=self.occupied, density=self.density)

    @staticmethod
    def from_state_dict(state: dict[str, Tensor]) -> "OccupancyGrid":
        hull = state["hull"].reshape(-1)
        g = round(hull.shape[0] ** (1 / 3))
        grid = OccupancyGrid(state["aabb_min"], state["aabb_max"], hull.view(g, g, g))
        grid.occupied = state["occupied"].reshape(-1).clone()
        grid.density = state["density"].reshape(-1).clone()
        return grid

    def save_npz(self, path) -> None:
        """np.savez_compressed of plain arrays (np.load with allow_pickle=False): grids as [G, G, G]."""
        g = self.resolution
        np.savez_compressed(path, aabb_min=self.aabb_min.cpu().numpy(), aabb_max=self.aabb_max.cpu().numpy(),
                 hull=self.hull.view(g, g, g).cpu().numpy(), occupied=self.occupied.view(g, g, g).cpu().numpy(),
                 density=self.density.view(g, g, g).cpu().numpy())

    @staticmethod
    def load_npz(path, device: str | torch.device = "cpu") -> "OccupancyGrid":
        with np.load(path, allow_pickle=False) as data:
            state = {k: torch.from_numpy(data[k]).to(device) for k in ("aabb_min", "aabb_max", "hull", "occupied", "density")}
        return OccupancyGrid.from_state_dict(state)
