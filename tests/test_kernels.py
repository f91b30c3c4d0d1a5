"""The native field kernels (stages/field/kernels) against the PyTorch reference, and the fallback.

Tolerance: the two paths add the same float32 terms in different orders (and the kernels use
FMA), so values and gradients agree to a few float32 ulps of the largest entry; the tests allow
RTOL = 1e-5 of each tensor's largest magnitude (1e-4 where long sums, over 2k rows, meet).
"""
from __future__ import annotations

import logging

import pytest
import torch

from stages.field import kernels
from stages.field.encodings import HashGridEncoding
from stages.field.kernels.build import build_library, library_path
from stages.field.mlp import MLP
from stages.field.nerfw_field import NerfWField
from stages.field.optim import adam

RTOL = 1e-5
RTOL_SUMS = 1e-4


@pytest.fixture(autouse=True)
def fresh_kernel_state():
    kernels.reset()
    yield
    kernels.reset()


@pytest.fixture
def native():
    if kernels.disabled():
        pytest.skip(f"{kernels.DISABLE_ENV} is set: only the reference path runs")
    lib = kernels.native_library()
    if lib is None:
        pytest.skip("the native kernels cannot be built or loaded here (see the log line)")
    return lib


def assert_close(fast: torch.Tensor, ref: torch.Tensor, rtol: float = RTOL) -> None:
    scale = ref.abs().max().item()
    err = (fast - ref).abs().max().item()
    assert err <= rtol * scale + 1e-7, f"max error {err:.3g} against max magnitude {scale:.3g}"


def ray_points(n_rays: int, per_ray: int, generator: torch.Generator) -> torch.Tensor:
    """Samples along random rays through the unit cube (as the marcher makes them), some outside it."""
    start = torch.rand(n_rays, 1, 3, generator=generator) * 0.8 + 0.1
    direction = torch.nn.functional.normalize(torch.randn(n_rays, 1, 3, generator=generator), dim=-1)
    steps = torch.arange(per_ray).view(1, -1, 1) * (0.8 / per_ray)
    return (start + steps * direction).reshape(-1, 3)


def grad_fn_name(t: torch.Tensor) -> str:
    return type(t.grad_fn).__name__


@pytest.mark.parametrize("levels, features, log2_table, base_res, max_res",
                         [(12, 2, 15, 16, 512), (8, 4, 12, 8, 256), (3, 1, 9, 2, 16)])
def test_hash_grid_matches_the_reference(native, levels, features, log2_table, base_res, max_res):
    g = torch.Generator().manual_seed(levels)
    enc = HashGridEncoding(levels, features, log2_table, base_res, max_res)
    assert 0 < enc.n_dense_levels < enc.n_levels  # both kinds of level are exercised
    with torch.no_grad():
        enc.table.normal_(generator=g)
    edges = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.2, -0.1, 0.5], [0.5, 0.25, 1.0], [0.999999, 0.3, 0.0]])
    points = torch.cat([edges, ray_points(64, 40, g)])
    grad_out = torch.randn(points.shape[0], enc.out_dim, generator=g)

    pos_fast = points.clone().requires_grad_()
    out_fast = enc(pos_fast)
    assert grad_fn_name(out_fast) == "_NativeHashGridBackward"
    table_fast, grad_pos_fast = torch.autograd.grad(out_fast, [enc.table, pos_fast], grad_out)
    pos_ref = points.clone().requires_grad_()
    out_ref = enc.reference_forward(enc.table, pos_ref)
    table_ref, grad_pos_ref = torch.autograd.grad(out_ref, [enc.table, pos_ref], grad_out)

    assert_close(out_fast, out_ref)
    assert_close(table_fast, table_ref)
    assert_close(grad_pos_fast, grad_pos_ref, RTOL_SUMS)
    assert grad_pos_fast[2, 0] == 0 and grad_pos_fast[2, 1] == 0  # outside the cube the clamp stops it
    with torch.no_grad():  # the no-grad path (occupancy and culling passes)
        assert_close(enc(points), out_ref)


@pytest.mark.parametrize("in_dim, out_dim, width, n_hidden, first_bias, strided", [
    (24, 16, 64, 1, False, False),   # density head
    (15, 3, 64, 2, True, True),      # colour head on a column slice of the density output
    (15, 5, 32, 1, True, True),      # transient head
    (7, 3, 16, 0, True, False),      # one linear layer
    (24, 8, 64, 2, False, False),    # material head
])
def test_mlp_matches_the_reference(native, in_dim, out_dim, width, n_hidden, first_bias, strided):
    g = torch.Generator().manual_seed(in_dim + n_hidden)
    torch.manual_seed(0)
    mlp = MLP(in_dim, out_dim, width, n_hidden)
    n = 2000  # not a multiple of the kernels' row blocks
    wide = torch.randn(n, in_dim + 1, generator=g, requires_grad=True)
    bias = torch.randn(n, width if n_hidden else out_dim, generator=g, requires_grad=True) if first_bias else None
    grad_out = torch.randn(n, out_dim, generator=g)
    inputs = [wide] + ([bias] if first_bias else []) + list(mlp.parameters())

    def run(forward):
        x = wide[:, 1:] if strided else wide[:, :in_dim].contiguous()
        out = forward(x, bias)
        return out, torch.autograd.grad(out, inputs, grad_out)

    out_fast, grads_fast = run(mlp)
    assert grad_fn_name(out_fast) == "_NativeMLPBackward"
    out_ref, grads_ref = run(mlp.reference_forward)
    assert_close(out_fast, out_ref)
    for fast, ref in zip(grads_fast, grads_ref):
        assert_close(fast, ref, RTOL_SUMS)


def field_loss(field: NerfWField, points, dirs, image) -> torch.Tensor:
    sigma, geo = field.density(points)
    normals = field.surface_normals(points, 0.01) if field.is_sdf else None
    rgb = field.colour(geo, dirs, field.appearance(image), normals=normals)
    sigma_t, rgb_t, beta = field.transient(geo, field.transient_codes(image))
    return sigma.mean() + rgb.square().mean() + sigma_t.mean() + rgb_t.mean() + beta.mean()


def test_field_gradients_match_the_reference(native):
    """A NeRF-W field step through both paths: the same loss and the same gradient everywhere."""
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    field = NerfWField([-1.0] * 3, [1.0] * 3, 5, max_resolution=256)
    with torch.no_grad():
        field.encoding.table.normal_(0, 0.1, generator=g)
    points = ray_points(50, 40, g) * 2 - 1
    dirs = torch.nn.functional.normalize(torch.randn(points.shape[0], 3, generator=g), dim=-1)
    image = torch.randint(0, 5, (points.shape[0],), generator=g)
    params = list(field.parameters())
    loss_fast = field_loss(field, points, dirs, image)
    grads_fast = torch.autograd.grad(loss_fast, params)
    with kernels.reference_path():
        loss_ref = field_loss(field, points, dirs, image)
        grads_ref = torch.autograd.grad(loss_ref, params)
    assert_close(loss_fast, loss_ref)
    for fast, ref in zip(grads_fast, grads_ref):
        assert_close(fast, ref, RTOL_SUMS)


def test_double_backward_matches_the_reference(native):
    """An eikonal-style loss on d(output)/d(position) (what an SDF field trains with)."""
    g = torch.Generator().manual_seed(4)
    torch.manual_seed(0)
    enc = HashGridEncoding(6, 2, 12, max_resolution=64)
    with torch.no_grad():
        enc.table.normal_(0, 0.1, generator=g)
    mlp = MLP(enc.out_dim, 1, 32, 1)
    points = ray_points(20, 30, g).clamp(0.01, 0.99)
    params = [enc.table, *mlp.parameters()]

    def eikonal_grads():
        pos = points.clone().requires_grad_()
        sdf = mlp(enc(pos))
        (normal,) = torch.autograd.grad(sdf.sum(), pos, create_graph=True)
        loss = (normal.norm(dim=-1) - 1).square().mean()
        grads = torch.autograd.grad(loss, params, allow_unused=True)  # the last bias has no say in it
        return normal, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]

    normal_fast, grads_fast = eikonal_grads()
    with kernels.reference_path():
        normal_ref, grads_ref = eikonal_grads()
    assert_close(normal_fast, normal_ref, RTOL_SUMS)
    for fast, ref in zip(grads_fast, grads_ref):
        assert_close(fast, ref, RTOL_SUMS)


def test_fused_adam_takes_the_default_adam_step():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(1000, 2)), torch.nn.Parameter(torch.randn(64))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    opt_a = adam(a, lr=1e-2, betas=(0.9, 0.99), eps=1e-15)
    opt_b = torch.optim.Adam(b, lr=1e-2, betas=(0.9, 0.99), eps=1e-15)
    for step in range(3):
        for p, q in zip(a, b):
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step))
            q.grad = p.grad.clone()
        opt_a.step()
        opt_b.step()
    for p, q in zip(a, b):
        assert torch.allclose(p, q, atol=1e-6)


def run_reference_only_checks() -> None:
    """The encoding and the MLP still give values and gradients, from the PyTorch ops."""
    enc, mlp = HashGridEncoding(4, 2, 10, max_resolution=64), MLP(8, 3, 16, 1)
    pos = torch.rand(100, 3, requires_grad=True)
    out = mlp(enc(pos))
    assert not grad_fn_name(out).startswith("_Native")
    out.square().sum().backward()
    assert pos.grad is not None and enc.table.grad.abs().sum() > 0


def test_empty_batches_give_empty_outputs_and_zero_gradients(native):
    """A step can have no visible sample (all colour evaluations culled)."""
    enc, mlp = HashGridEncoding(4, 2, 10, max_resolution=64), MLP(8, 3, 16, 1)
    pos = torch.zeros(0, 3, requires_grad=True)
    out = mlp(enc(pos))
    assert out.shape == (0, 3) and grad_fn_name(out) == "_NativeMLPBackward"
    out.sum().backward()
    assert pos.grad.shape == (0, 3) and enc.table.grad.abs().sum() == 0 and mlp.net[0].weight.grad.abs().sum() == 0


def test_what_the_kernels_do_not_cover_takes_the_reference(native):
    """Feature counts the kernels are not compiled for, and float64 (gradcheck), run on PyTorch."""
    enc = HashGridEncoding(4, 3, 10, max_resolution=64)
    pos = torch.rand(50, 3)
    assert not grad_fn_name(enc(pos)).startswith("_Native")
    assert not grad_fn_name(MLP(8, 3, 16, 1).double()(torch.rand(5, 8, dtype=torch.float64))).startswith("_Native")


def test_switching_the_fast_path_off_falls_back_with_one_log_line(monkeypatch, caplog):
    monkeypatch.setenv(kernels.DISABLE_ENV, "1")
    with caplog.at_level(logging.INFO, logger="neroic"):
        assert kernels.native_library() is None
        run_reference_only_checks()
    lines = [r.getMessage() for r in caplog.records if "fast field kernels" in r.getMessage()]
    assert len(lines) == 1 and kernels.DISABLE_ENV in lines[0]


def test_a_failed_build_falls_back_with_one_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv(kernels.DISABLE_ENV, raising=False)
    monkeypatch.setenv("NEROIC_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that fails on every source
    with caplog.at_level(logging.INFO, logger="neroic"):
        assert kernels.native_library() is None
        run_reference_only_checks()
    warnings = [r for r in caplog.records if "fast field kernels" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "false failed" in warnings[0].getMessage()


def test_the_library_is_built_once_into_its_cache(monkeypatch, tmp_path, native):
    """A fresh cache gets one build; the next call finds it (what `make setup` leaves behind)."""
    monkeypatch.setenv("NEROIC_KERNEL_CACHE", str(tmp_path))
    path = build_library()
    assert path.parent == tmp_path and path.exists()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left
    mtime = path.stat().st_mtime_ns
    assert build_library() == path and path.stat().st_mtime_ns == mtime
    assert library_path("c++") != library_path("clang++")  # the compiler is part of the key


def test_threads_split_the_work_without_changing_the_result(native):
    """Points, row blocks and levels are split between OpenMP threads: 3 threads (an uneven
    split, more threads than some levels' share) give what 1 thread gives."""
    g = torch.Generator().manual_seed(5)
    enc = HashGridEncoding(5, 2, 12, 4, 128)
    with torch.no_grad():
        enc.table.normal_(generator=g)
    mlp = MLP(enc.out_dim, 4, 32, 2)
    points = ray_points(37, 29, g)
    grad_out = torch.randn(points.shape[0], 4, generator=g)

    def run(threads: int):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            pos = points.clone().requires_grad_()
            out = mlp(enc(pos))
            return [out, *torch.autograd.grad(out, [pos, enc.table, *mlp.parameters()], grad_out)]
        finally:
            torch.set_num_threads(before)

    for one, three in zip(run(1), run(3)):
        assert_close(three, one, RTOL_SUMS)
