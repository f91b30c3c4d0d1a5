"""Cast shadows: how much of a light's dominant direction a surface point can see.

    grid = DensityGrid.load_npz("normals/normal_grid.npz")      # or density_grid_from_mesh(...)
    V = grid.visibility(points, normals, directions)             # [N] in [0, 1]

Shadows change from photo to photo (each photo has its own light), so if the model could not
produce them the shared albedo would have to darken wherever any photo was shadowed. Instead
the shading (shading.py) removes the directional part of the light where the frozen geometry
blocks it: V = exp(-integral of density) along a ray from the point towards the light's
dominant direction, marched through the dense density grid the normals stage already wrote
(trilinear lookups, a few dozen per point: cheap next to a field query). The same V works for
new lights, so re-lit views get their shadows too.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from stages.field.sampling import ray_aabb
from stages.field.grids import sample_grid


def cast_shadow_visibility(normals: Tensor, directions: Tensor, transmittance: Tensor,
                           terminator: float = 0.2) -> Tensor:
    """Visibility [N] in [0, 1] of the light along directions [N, 3] from surface points with
    normals [N, 3], given the transmittance [N] of whatever lies along that ray. Only surfaces
    facing the light can be cast-shadowed (the SH shading already darkens the others, and a ray
    leaving a surface that faces away runs into the object itself): the shadow fades in over n.l
    in [0, terminator]."""
    facing = torch.clamp((normals * directions).sum(-1) / terminator, 0.0, 1.0)
    return 1.0 - facing * (1.0 - transmittance)


@dataclass
class DensityGrid:
    """density [X, Y, Z] per world unit (axis 0 = x), cell-centred over the box aabb_min..aabb_max ([3] world)."""

    density: Tensor
    aabb_min: Tensor
    aabb_max: Tensor

    @staticmethod
    def load_npz(path, device: str | torch.device = "cpu") -> "DensityGrid":
        """Read a density grid file (its density, aabb_min, aabb_max): geometry/density_grid.npz."""
        with np.load(path, allow_pickle=False) as data:
            return DensityGrid(torch.from_numpy(data["density"].astype(np.float32)).to(device),
                               torch.from_numpy(data["aabb_min"].astype(np.float32)).to(device),
                               torch.from_numpy(data["aabb_max"].astype(np.float32)).to(device))

    def to(self, device: str | torch.device) -> "DensityGrid":
        return DensityGrid(self.density.to(device), self.aabb_min.to(device), self.aabb_max.to(device))

    @property
    def voxel_size(self) -> float:
        """The largest cell side (world units)."""
        return float(((self.aabb_max - self.aabb_min) / torch.tensor(self.density.shape, device=self.density.device)).max())

    @torch.no_grad()
    def visibility(self, points: Tensor, normals: Tensor, directions: Tensor, n_steps: int = 48,
                   offset_voxels: float = 2.0, terminator: float = 0.2) -> Tensor:
        """points [N, 3] world on the surface, normals [N, 3] unit (outward), directions [N, 3] unit
        towards the light -> visibility [N] in [0, 1] (1 = fully lit; cast_shadow_visibility).
        """
        return cast_shadow_visibility(normals, directions, self.transmittance(points, normals, directions, n_steps,
                                                                              offset_voxels), terminator)

    @torch.no_grad()
    def transmittance(self, points: Tensor, normals: Tensor, directions: Tensor, n_steps: int = 48,
                      offset_voxels: float = 2.0) -> Tensor:
        """points [N, 3] world on the surface, normals [N, 3] unit (outward), directions [N, 3] unit
        towards the light -> transmittance [N] in [0, 1] of the density along the ray.

        The ray starts `offset_voxels` cells off the surface (along the normal and the direction),
        so the point's own surface, blurred by the grid, does not shadow it; it is marched in
        `n_steps` equal steps up to where it leaves the box.
        """
        n = points.shape[0]
        if n == 0:
            return points.new_ones(0)
        offset = offset_voxels * self.voxel_size
        start = points + offset * (normals + directions)
        _, t_far = ray_aabb(start, directions, self.aabb_min, self.aabb_max)
        t_far = t_far.clamp(min=0.0)
        step = t_far / n_steps  # [N]
        k = torch.arange(n_steps, device=points.device, dtype=points.dtype) + 0.5
        samples = start[:, None, :] + (k[None, :, None] * step[:, None, None]) * directions[:, None, :]  # [N, K, 3]
        sigma = sample_grid(self.density[..., None], samples.view(-1, 3), self.aabb_min, self.aabb_max).view(n, n_steps)
        return torch.exp(-(sigma.clamp(min=0.0).sum(-1) * step))
