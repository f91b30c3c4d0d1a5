"""Where along each ray the field is evaluated: fixed steps, only in occupied cells, packed.

    samples = march_rays(origins, directions, grid, step_size)   # rays [R, 3] -> PackedSamples

Samples are not padded to a fixed count per ray: the survivors of all rays are packed into flat
tensors with a ray index each (sorted by ray, then by distance), which is what `rendering`
composites. Each ray gets one random offset of its first step (stratified marching), so over
many steps the whole segment is covered.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from stages.field.occupancy import OccupancyGrid


@dataclass
class PackedSamples:
    """S samples of R rays: positions [S, 3] world, t [S] distance, deltas [S] step length, ray_idx [S] int64 sorted."""

    positions: Tensor
    t: Tensor
    deltas: Tensor
    ray_idx: Tensor
    n_rays: int

    def select(self, keep: Tensor) -> "PackedSamples":
        """The samples where keep [S] bool is True (order, hence packing, preserved)."""
        return PackedSamples(self.positions[keep], self.t[keep], self.deltas[keep], self.ray_idx[keep], self.n_rays)


def ray_aabb(origins: Tensor, directions: Tensor, aabb_min: Tensor, aabb_max: Tensor,
             near: float = 0.0) -> tuple[Tensor, Tensor]:
    """Slab test: rays [R, 3] -> (t_near [R], t_far [R]); a miss has t_far <= t_near."""
    inv = 1.0 / torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
    t0 = (aabb_min - origins) * inv
    t1 = (aabb_max - origins) * inv
    t_near = torch.minimum(t0, t1).amax(dim=-1).clamp(min=near)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    return t_near, t_far


def march_rays(origins: Tensor, directions: Tensor, grid: OccupancyGrid, step_size: float,
               jitter: bool = True, near: float = 0.0, t_min: Tensor | None = None,
               t_max: Tensor | None = None) -> PackedSamples:
    """Steps of `step_size` (world units) through the occupied box, keeping samples in occupied cells.

    origins, directions: [R, 3] world (directions unit length); t_min, t_max: [R] optional window
    of distances (e.g. stop where the ray became opaque last time). Candidates are generated packed
    (each ray exactly its own number of steps), never as a padded [R, max_steps] grid.
    """
    n_rays, device = origins.shape[0], origins.device
    lo, hi = grid.occupied_aabb()
    t_near, t_far = ray_aabb(origins, directions, lo, hi, near)
    if t_min is not None:
        t_near = torch.maximum(t_near, t_min)
    if t_max is not None:
        t_far = torch.minimum(t_far, t_max)
    offset = torch.rand(n_rays, device=device) if jitter else torch.full((n_rays,), 0.5, device=device)
    n_steps = torch.ceil((t_far - t_near) / step_size - offset).clamp(min=0).long()  # t < t_far
    ray = torch.repeat_interleave(torch.arange(n_rays, device=device), n_steps)
    first = torch.cumsum(n_steps, 0) - n_steps
    k = torch.arange(ray.shape[0], device=device) - first[ray]
    t = t_near[ray] + (k + offset[ray]) * step_size
    positions = origins[ray] + t[:, None] * directions[ray]
    keep = grid.lookup(positions)
    t = t[keep]
    return PackedSamples(positions[keep], t, torch.full_like(t, step_size), ray[keep], n_rays)
