"""Samples per second of the neural field: forward + backward + Adam step, median of repeats.

    python -m bench.field_throughput [--device cpu|cuda] [--samples 65536] [--repeats 5]
                                     [--path both|fast|reference]

First the machine's matrix-product ceilings in float32 and bfloat16 (a large square product and
the MLPs' shape). Samples lie along ~1000 random rays through the unit box (64 consecutive samples per ray, as
the marcher produces them: neighbouring samples share grid cells, which is what makes the
gathers cache friendly). Rows:
  encoding   hash grid alone (features summed into a dummy loss), table Adam step
  field      density + colour + transient heads as in training (all samples get colour), Adam
  sdf field  the same with the geometry stage's SDF: every sample's normal from four more SDF
             evaluations (`surface_normals`) goes into its colour
  density    density only, no gradient (the culling and occupancy passes)
for the default grid (12 levels x 2^15 rows x 2 features) and, for comparison, a 2^16 table,
environment.md's 16 x 2^19 grid and an 8-level x 4-feature grid. Each on two paths:
  reference  the pure-PyTorch encoding and MLPs, torch.optim.Adam's default implementation
  fast       the native kernels (stages/field/kernels) where they apply and the fused Adam
             (stages/field/optim.py); on CUDA only the optimiser differs
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from stages.field.encodings import HashGridEncoding
from stages.field.kernels import native_library, reference_path
from stages.field.nerfw_field import NerfWField
from stages.field.optim import adam

GRIDS = (  # (label, n_levels, n_features, log2_table, max_resolution)
    ("12x2^15x2 (default)", 12, 2, 15, 512),
    ("12x2^16x2", 12, 2, 16, 512),
    ("16x2^19x2", 16, 2, 19, 2048),
    ("8x2^15x4", 8, 4, 15, 512),
)


def ray_samples(n: int, device: str, per_ray: int = 64, generator: torch.Generator | None = None) -> torch.Tensor:
    """[n, 3] points in [0, 1]^3: runs of `per_ray` consecutive steps along random rays."""
    n_rays = -(-n // per_ray)
    start = torch.rand(n_rays, 1, 3, generator=generator) * 0.5 + 0.25
    direction = torch.nn.functional.normalize(torch.randn(n_rays, 1, 3, generator=generator), dim=-1)
    steps = torch.arange(per_ray).view(1, -1, 1) * (0.5 / per_ray)
    return (start + steps * direction).reshape(-1, 3)[:n].clamp(0, 1).to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: str) -> float:
    """Median seconds of fn() over `repeats` runs after two warm-up runs."""
    for _ in range(2):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_grid(label: str, levels: int, features: int, log2_table: int, max_res: int, n: int, repeats: int,
               device: str, fast: bool) -> list[tuple[str, str, float]]:
    g = torch.Generator().manual_seed(0)
    points = ray_samples(n, device, generator=g)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1).to(device)
    image = torch.randint(0, 40, (n,), generator=g).to(device)

    optimizer = adam if fast else torch.optim.Adam
    enc = HashGridEncoding(levels, features, log2_table, max_resolution=max_res).to(device)
    enc_opt = optimizer(enc.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-15)

    def encoding_step():
        loss = enc(points).square().sum()
        enc_opt.zero_grad(set_to_none=True)
        loss.backward()
        enc_opt.step()

    lo, hi = [0.0] * 3, [1.0] * 3

    def field_step_of(surface: str):
        field = NerfWField(lo, hi, 40, n_levels=levels, n_features=features, log2_table=log2_table,
                           max_resolution=max_res, surface=surface).to(device)
        opt = optimizer(field.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-15)

        def field_step():
            sigma, geo = field.density(points)
            normals = field.surface_normals(points, 1.0 / max_res) if field.is_sdf else None
            rgb = field.colour(geo, dirs, field.appearance(image), normals=normals)
            sigma_t, rgb_t, beta = field.transient(geo, field.transient_codes(image))
            loss = (sigma.mean() + rgb.square().mean() + sigma_t.mean() + rgb_t.mean() + beta.mean())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return field, field_step

    # a density field, as this row has always measured
    field, field_step = field_step_of("density")
    _, sdf_step = field_step_of("sdf")

    @torch.no_grad()
    def density_pass():
        field.density(points)

    passes = [("encoding", encoding_step), ("field", field_step), ("sdf field", sdf_step), ("density", density_pass)]
    with contextlib.nullcontext() if fast else reference_path():
        return [(label, name, n / timed(fn, repeats, device)) for name, fn in passes]


def matmul_rate(m: int, k: int, n: int, dtype: torch.dtype, device: str, repeats: int) -> float:
    """FLOP/s of one [m, k] x [k, n] matrix product in `dtype`: the ceiling a field's MLPs run
    under (bfloat16 is several times float32 on CPUs with AVX-512 BF16 or AMX; where the CPU lacks
    them it is slower, which the ratio shows)."""
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    return 2 * m * k * n / timed(lambda: a @ b, repeats, device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.field_throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--samples", type=int, default=1 << 16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--default-only", action="store_true", help="only the default grid")
    parser.add_argument("--path", default="both", choices=("both", "fast", "reference"),
                        help="the native kernels + fused Adam, the pure-PyTorch reference, or both")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"field throughput: {args.samples} samples per step, median of {args.repeats} ({where}, torch {torch.__version__})")
    for shape, what in (((2048, 2048, 2048), "2048 x 2048 x 2048"), ((args.samples, 64, 64), f"{args.samples} x 64 x 64 (the MLPs')")):
        f32, bf16 = (matmul_rate(*shape, dtype, args.device, args.repeats) for dtype in (torch.float32, torch.bfloat16))
        print(f"matrix product {what}: float32 {f32 / 1e9:.0f} GFLOP/s, bfloat16 {bf16 / 1e9:.0f} GFLOP/s ({bf16 / f32:.1f}x)")
    paths = ("reference", "fast") if args.path == "both" else (args.path,)
    if "fast" in paths and native_library() is None:
        print("(native kernels unavailable: the fast path runs the PyTorch reference ops, fused Adam only)")
    print(f"{'grid':<22}{'pass':<11}" + "".join(f"{p + ' M/s':>16}" for p in paths)
          + (f"{'speed-up':>10}" if len(paths) == 2 else ""))
    for grid in GRIDS[:1] if args.default_only else GRIDS:
        rates = [bench_grid(*grid, args.samples, args.repeats, args.device, fast=p == "fast") for p in paths]
        for rows in zip(*rates):
            label, name = rows[0][:2]
            line = f"{label:<22}{name:<11}" + "".join(f"{rate / 1e6:>16.3f}" for _, _, rate in rows)
            if len(rows) == 2:
                line += f"{rows[1][2] / rows[0][2]:>9.1f}x"
            print(line, flush=True)


if __name__ == "__main__":
    main()
