"""Sobel normals against shapes whose normals are known exactly."""
import math

import torch

from stages.field.grids import sample_grid
from stages.normals import sdf_normals, sobel_kernels, sobel_normals


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


def test_sdf_normals_of_a_sphere_are_radial():
    res = 48
    axis = -1 + (torch.arange(res) + 0.5) * 2 / res
    p = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)
    r = p.norm(dim=-1)
    normals = sdf_normals(r - 0.5, torch.full((3,), 2 / res))
    near = (r - 0.5).abs() < 0.1
    cos = (normals[near] * p[near] / r[near, None]).sum(-1).clamp(-1, 1)
    assert torch.rad2deg(torch.acos(cos)).max() < 1.0


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


def test_view_targets_of_a_ball_match_its_normals_rendered_whole_or_downsized():
    import numpy as np

    from stages.common.cameras import Frame
    from stages.field.occupancy import OccupancyGrid
    from stages.normals import render_view_normals

    res = 48
    p = _grid(res)
    r = p.norm(dim=-1)
    density = 200 * torch.sigmoid((0.5 - r) * 60)
    normals = sobel_normals(density, torch.full((3,), 2 / res), a=0.1)
    lo, hi = torch.full((3,), -1.0), torch.full((3,), 1.0)
    grid = OccupancyGrid(lo, hi, torch.ones(32, 32, 32, dtype=torch.bool))
    c2w = np.eye(4)
    c2w[2, 3] = 3.0  # on +Z, looking down -Z at the ball
    frame = Frame(stem="v", c2w=c2w, fl_x=120.0, fl_y=120.0, cx=48.0, cy=40.0, w=96, h=80, file_path="v.png")
    ys, xs = np.mgrid[0:80, 0:96]
    ball = np.hypot(xs + 0.5 - 48, ys + 0.5 - 40) < 120 * 0.5 / np.sqrt(3.0**2 - 0.25) - 1  # its silhouette
    whole, alpha = render_view_normals(density, normals, lo, hi, grid, frame, ball, 2 / 64)
    small, small_alpha = render_view_normals(density, normals, lo, hi, grid, frame, ball, 2 / 64, max_size=48)
    from scipy.ndimage import binary_dilation

    outside = ~torch.from_numpy(binary_dilation(ball, iterations=2))
    assert float(alpha[outside].abs().max()) == 0.0 and float(small_alpha[outside].abs().max()) == 0.0
    assert float(alpha[40, 48]) > 0.99 and float(small_alpha[40, 48]) > 0.99
    assert torch.allclose(whole[40, 48], torch.tensor([0.0, 0.0, 1.0]), atol=0.02)  # faces the camera
    inside = torch.from_numpy(ball) & (alpha > 0.99) & (small_alpha > 0.99)
    angles = torch.rad2deg(torch.acos((whole[inside] * small[inside]).sum(-1).clamp(-1, 1)))
    assert angles.median() < 2.0, angles.median()
