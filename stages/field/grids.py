"""Values of a field on a regular grid over a box, and trilinear lookups into such grids.

    density = evaluate_on_grid(lambda p: field.density(p)[0], lo, hi, 128)             # cell centres
    density = evaluate_on_grid(fn, lo, hi, 256, nodes=True)                             # lattice nodes
    normals_at_points = sample_grid(normal_grid, points, lo, hi)                        # [N, C]

Grids are [X, Y, Z] (axis 0 = x). A cell-centred grid of resolution R splits the box into R^3
cells and holds each cell's centre value (what grid_sample with align_corners=False reads); a
node grid holds R points per axis from one end of the box to the other (what marching cubes
wants). Evaluation goes one x-slab at a time, so memory stays at about `chunk` points.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def evaluate_on_grid(fn: Callable[[Tensor], Tensor], aabb_min: Tensor, aabb_max: Tensor, resolution: int,
                     nodes: bool = False, chunk: int = 1 << 18,
                     progress: Callable = lambda it, total: it) -> Tensor:
    """fn(points [N, 3] world) -> [N], on a resolution^3 grid of cell centres (or lattice nodes)
    of the box [aabb_min, aabb_max] ([3] each) -> [R, R, R] float32 on fn's device.
    `progress` wraps the slab iterator and gets (iterable, total)."""
    lo, hi = aabb_min.float(), aabb_max.float()
    steps = torch.arange(resolution, device=lo.device, dtype=torch.float32)
    if nodes:
        axes = [lo[a] + steps * (hi[a] - lo[a]) / max(resolution - 1, 1) for a in range(3)]
    else:
        axes = [lo[a] + (steps + 0.5) * (hi[a] - lo[a]) / resolution for a in range(3)]
    yz = torch.stack(torch.meshgrid(axes[1], axes[2], indexing="ij"), -1).reshape(-1, 2)
    out = torch.empty(resolution, resolution * resolution, device=lo.device)
    rows = max(1, chunk // yz.shape[0])
    for start in progress(range(0, resolution, rows), (resolution + rows - 1) // rows):
        x = axes[0][start:start + rows]
        points = torch.cat([x.repeat_interleave(yz.shape[0])[:, None], yz.repeat(x.shape[0], 1)], 1)
        out[start:start + x.shape[0]] = fn(points).float().view(x.shape[0], -1)
    return out.view(resolution, resolution, resolution)


def sample_grid(values: Tensor, positions: Tensor, aabb_min: Tensor, aabb_max: Tensor) -> Tensor:
    """Trilinear lookup of a cell-centred [X, Y, Z, C] grid at world positions [N, 3] -> [N, C]
    (clamped at the border)."""
    unit = (positions - aabb_min) / (aabb_max - aabb_min) * 2 - 1  # [-1, 1] over the box
    grid = unit[:, [2, 1, 0]].view(1, -1, 1, 1, 3)  # grid_sample wants (W, H, D) = (z, y, x)
    volume = values.permute(3, 0, 1, 2).unsqueeze(0)  # [1, C, X, Y, Z]
    out = F.grid_sample(volume, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(values.shape[-1], -1).t()
