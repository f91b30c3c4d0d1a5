"""Stage 5, normals: surface normals from the density field by 3-D Sobel filtering.

Inputs   geometry/ (the trained field and occupancy grid), poses/ (cameras), masks/.
Method   (NeROIC) evaluate the density on grids over the object's box, tightening the box at
         each resolution to 1.2x the extent of the cells with density > `tighten_threshold`;
         remap s' = -(1/a) exp(-a s) so the huge densities inside the object stop dominating;
         correlate with the smoothed Sobel-like 5x5x5 kernel K(d) = -d/|d|^2 (one per axis),
         which gives -grad s'; the normal is that, normalised (it points out of the object).
         Then for every training pixel, the volume-rendered sum of grid normals along its ray
         is the target the material stage fits.
Outputs  normals/normal_grid.npz   {normals [G,G,G,3] float16 world unit vectors (axis 0 = x),
                                    density [G,G,G] float32, aabb_min [3], aabb_max [3]}
         normals/views/<stem>.npz  {normal [H,W,3] float16 world, alpha [H,W] float16}
         normals/preview.png       rendered normals of a few photos beside the photos
Config   [normals] resolution, tighten_resolutions, tighten_threshold, remap_a.
Cache    reruns when geometry, poses or the config change.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sobel_kernels(radius: int = 2) -> Tensor:
    """[3, 1, k, k, k] correlation kernels K(d) = -d/|d|^2 for d in the (2r+1)^3 cube.

    Scaled so that correlating a linear function f(p) = g.p gives exactly -g: the kernel is
    then a smoothed estimate of the negative gradient in voxel units.
    """
    r = torch.arange(-radius, radius + 1, dtype=torch.float32)
    d = torch.stack(torch.meshgrid(r, r, r, indexing="ij"))  # [3, k, k, k]
    norm2 = (d ** 2).sum(0)
    norm2[radius, radius, radius] = 1.0
    kernels = -d / norm2
    # sum_d K_x(d) d_x = -sum_d d_x^2/|d|^2 =: -c, the same for every axis by symmetry
    c = (d[0] ** 2 / norm2).sum()
    return (kernels / c).unsqueeze(1)


def remap_density(sigma: Tensor, a: float) -> Tensor:
    """s' = -(1/a) exp(-a s): monotonic in s, flat deep inside the object."""
    return -torch.exp(-a * sigma) / a


def sobel_normals(density: Tensor, voxel_size: Tensor, a: float, radius: int = 2) -> Tensor:
    """density [X, Y, Z] -> outward unit normals [X, Y, Z, 3] (world axes).

    voxel_size: [3] world size of a cell along x, y, z (the gradient is divided by it, so boxes
    that are not cubes still give true normals). Borders are padded by replication.
    """
    s = remap_density(density, a)[None, None]
    s = F.pad(s, (radius,) * 6, mode="replicate")
    neg_grad = F.conv3d(s, sobel_kernels(radius).to(s), padding=0)[0]  # [3, X, Y, Z], voxel units
    neg_grad = neg_grad / voxel_size.to(neg_grad).view(3, 1, 1, 1)
    return F.normalize(neg_grad.permute(1, 2, 3, 0), dim=-1, eps=1e-12)


def sample_grid(values: Tensor, positions: Tensor, aabb_min: Tensor, aabb_max: Tensor) -> Tensor:
    """Trilinear lookup of a [X, Y, Z, C] grid (cell-centred) at world positions [N, 3] -> [N, C]."""
    unit = (positions - aabb_min) / (aabb_max - aabb_min) * 2 - 1  # [-1, 1] over the box
    grid = unit[:, [2, 1, 0]].view(1, -1, 1, 1, 3)  # grid_sample wants (W, H, D) = (z, y, x)
    volume = values.permute(3, 0, 1, 2).unsqueeze(0)  # [1, C, X, Y, Z]
    out = F.grid_sample(volume, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(values.shape[-1], -1).t()
