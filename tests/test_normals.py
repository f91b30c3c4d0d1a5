"""Sobel normals against shapes whose normals are known exactly."""
import math

import torch

from stages.normals import sample_grid, sobel_kernels, sobel_normals


def _grid(res, lo=-1.0, hi=1.0):
    axis = lo + (torch.arange(res) + 0.5) * (hi - lo) / res
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)  # [X, Y, Z, 3]


def test_kernel_gives_minus_the_gradient_of_a_linear_function():
    g = torch.tensor([0.3, -1.2, 2.0])
    f = (_grid(9, -4, 5) * g).sum(-1)  # voxel size 1
    k = sobel_kernels()
    out = torch.nn.functional.conv3d(f[None, None], k)[0, :, 2, 2, 2]
    assert torch.allclose(out, -g, atol=1e-5)


def test_sphere_normals_point_outward_on_an_anisotropic_grid():
    # a soft solid ball of radius 0.5, density rising inward; box stretched along y
    res = 48
    axis_x = -1 + (torch.arange(res) + 0.5) * 2 / res
    axis_y = -2 + (torch.arange(res) + 0.5) * 4 / res
    p = torch.stack(torch.meshgrid(axis_x, axis_y, axis_x, indexing="ij"), -1)
    r = p.norm(dim=-1)
    density = 50 * torch.sigmoid((0.5 - r) * 40)
    normals = sobel_normals(density, torch.tensor([2 / res, 4 / res, 2 / res]), a=0.1)
    near_surface = (r - 0.5).abs() < 0.05
    truth = p[near_surface] / r[near_surface, None]
    cos = (normals[near_surface] * truth).sum(-1).clamp(-1, 1)
    angles = torch.rad2deg(torch.acos(cos))
    assert angles.median() < 3.0 and angles.max() < 10.0, (angles.median(), angles.max())


def test_sample_grid_matches_values_at_cell_centres_and_axis_order():
    res = 8
    p = _grid(res)
    values = torch.cat([p, p.norm(dim=-1, keepdim=True)], -1)  # [X, Y, Z, 4]
    pts = torch.tensor([[-0.875, 0.125, 0.625], [0.375, -0.625, -0.125]])  # cell centres
    out = sample_grid(values, pts, torch.tensor([-1.0] * 3), torch.tensor([1.0] * 3))
    assert torch.allclose(out[:, :3], pts, atol=1e-5)
    assert torch.allclose(out[:, 3], pts.norm(dim=-1), atol=1e-5)
    mid = sample_grid(values, torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([-1.0] * 3), torch.tensor([1.0] * 3))
    assert torch.allclose(mid[0, :3], torch.zeros(3), atol=1e-6)
    assert not math.isnan(float(mid.sum()))
