"""Input encodings: a multiresolution hash grid for positions, spherical harmonics for directions.

The hash grid follows the published idea of Instant-NGP (Mueller et al. 2022): L levels of
feature tables at geometrically growing resolutions, trilinearly interpolated and concatenated.
For float32 on the CPU it runs on the native kernels (stages/field/kernels: same rows, weights
and gradients, ~10x faster); everywhere else, and as their reference and fallback, it runs on
the PyTorch implementation below (`reference_forward`), shaped by what is fast on a small CPU:

- every level owns a slab of 2^log2_table rows in ONE table, so a single `embedding_bag`
  gathers and weights the 8 corners of all levels at once (it is several times faster than
  indexing + sum on CPU);
- coarse levels whose (power-of-two padded) grid fits in the slab are dense (no collisions):
  the row is x | y<<k | z<<2k, which combines with XOR exactly like the spatial hash
  x ^ y*p1 ^ z*p2, so dense and hashed levels share one code path;
- the backward pass is a custom `index_add_` scatter (embedding_bag's own backward sorts and is
  ~10x slower on CPU); the gradient w.r.t. the positions is available for camera refinement;
- tables stay small (2^15 rows per level by default) so they live in cache and a dense Adam step
  over them costs a few milliseconds.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from stages.field.kernels import native_for
from stages.field.kernels.hash_grid import hash_grid_features

_PRIMES = (1, 2654435761, 805459861)


def _wrap_int32(value: int) -> int:
    """The int32 with the same low 32 bits (hash products only need their low bits)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= (1 << 31) else value


class _TrilinearGather(torch.autograd.Function):
    """out[b] = sum_k w[8b+k] * table[idx[8b+k]]: forward by embedding_bag, backward by index_add_.

    The backward scatters one feature column at a time: broadcasting [B, 8] x [B, 1] is several
    times faster on CPU than the [B, 8, 1] x [B, 1, F] product for small F.
    """

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(table, idx, weights)
        offsets = torch.arange(0, idx.shape[0], 8, device=idx.device, dtype=idx.dtype)
        return nn.functional.embedding_bag(idx, table, offsets, mode="sum", per_sample_weights=weights)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        table, idx, weights = ctx.saved_tensors
        n_bags, n_feat = grad_out.shape
        grad_table = grad_weights = None
        if ctx.needs_input_grad[0]:
            idx64 = idx.long()  # index_add_ is far slower with int32 indices on CPU
            grad_cols = grad_out.t().contiguous()  # [F, B]
            grad_table_t = torch.zeros(n_feat, table.shape[0], dtype=table.dtype, device=table.device)
            w = weights.view(n_bags, 8)
            for f in range(n_feat):
                grad_table_t[f].index_add_(0, idx64, (w * grad_cols[f][:, None]).view(-1))
            grad_table = grad_table_t.t().contiguous()
        if ctx.needs_input_grad[2]:
            corners = nn.functional.embedding(idx, table).view(n_bags, 8, n_feat)
            grad_weights = (corners * grad_out.view(n_bags, 1, n_feat)).sum(-1).view(-1)
        return grad_table, None, grad_weights


class HashGridEncoding(nn.Module):
    """Multiresolution hash-grid encoding of points in the unit cube.

    unit_positions: [N, 3] in [0, 1]^3 (callers map their bounds) -> features [N, n_levels * n_features].
    Positions get a gradient only if they require one (camera refinement); the table always does.
    """

    def __init__(self, n_levels: int = 12, n_features: int = 2, log2_table: int = 15,
                 base_resolution: int = 16, max_resolution: int = 1024, init_scale: float = 1e-4):
        super().__init__()
        if log2_table + math.ceil(math.log2(n_levels)) > 31:
            raise ValueError("n_levels << log2_table must fit in int32")
        self.n_levels, self.n_features, self.log2_table = n_levels, n_features, log2_table
        self.base_resolution, self.max_resolution = base_resolution, max_resolution
        growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / max(n_levels - 1, 1))
        resolutions = [math.floor(base_resolution * growth ** level) for level in range(n_levels)]
        multipliers, n_dense = [], 0
        for res in resolutions:
            bits = math.ceil(math.log2(res + 1))
            if 3 * bits <= log2_table:  # dense level: the padded grid fits, rows never collide
                multipliers.append((1, 1 << bits, 1 << (2 * bits)))
                n_dense += 1
            else:
                multipliers.append(tuple(_wrap_int32(p) for p in _PRIMES))
        self.n_dense_levels = n_dense
        # [3, L, 1] layouts: the index arithmetic runs on [3, L, N] tensors with N innermost
        self.register_buffer("resolutions", torch.tensor(resolutions, dtype=torch.float32)[:, None],
                             persistent=False)
        self.register_buffer("multipliers", torch.tensor(multipliers, dtype=torch.int32).t()[:, :, None].contiguous(),
                             persistent=False)
        self.register_buffer("level_offsets", (torch.arange(n_levels, dtype=torch.int32) << log2_table)[:, None],
                             persistent=False)
        table = torch.empty(n_levels << log2_table, n_features).uniform_(-init_scale, init_scale)
        self.table = nn.Parameter(table)
        # coarse to fine: 1 for levels in use, 0 for finer ones (all on unless training says otherwise)
        self.register_buffer("level_weights", torch.ones(n_levels), persistent=False)
        self.all_levels = True

    @property
    def out_dim(self) -> int:
        return self.n_levels * self.n_features

    def set_active_levels(self, levels: float) -> None:
        """Use the `levels` coarsest levels (fractional: the next one fades in), zeroing the finer
        ones: trained coarse to fine, a field first fits the smooth shape and only then the detail
        the photos insist on, instead of fitting noise with its finest levels from the start."""
        ramp = (levels - torch.arange(self.n_levels, device=self.level_weights.device)).clamp(0.0, 1.0)
        self.level_weights.copy_(ramp)
        self.all_levels = bool(ramp.min() >= 1.0)

    def _masked(self, features: Tensor) -> Tensor:
        if self.all_levels:
            return features
        return features * self.level_weights.repeat_interleave(self.n_features)

    def corner_indices_and_weights(self, unit_positions: Tensor) -> tuple[Tensor, Tensor]:
        """unit_positions: [N, 3] -> (rows [L*N*8] int32 into `table`, trilinear weights [L*N*8]).

        Bags of 8 corners are ordered level-major: bag l*N + n is level l of point n.
        Every intermediate is [L, N] with N innermost and the 8 corners are written straight
        into their slots: on a memory-bound CPU the number of passes is what costs.
        """
        n = unit_positions.shape[0]
        scaled = unit_positions.clamp(0.0, 1.0).t()[:, None, :] * self.resolutions  # [3, L, N]
        floor = scaled.detach().floor()
        frac = scaled - floor
        table_mask = (1 << self.log2_table) - 1
        lo = floor.int() * self.multipliers  # int32 products wrap; their low bits are the hash
        hi = (lo + self.multipliers) & table_mask
        lo &= table_mask
        lo[0] |= self.level_offsets
        hi[0] |= self.level_offsets
        one_minus = 1.0 - frac
        rows = torch.empty(self.n_levels, n, 8, dtype=torch.int32, device=unit_positions.device)
        track = frac.requires_grad  # positions need a gradient: build the weights with autograd ops
        weights = None if track else torch.empty(self.n_levels, n, 8, device=unit_positions.device)
        corner_w = []
        for i, (row_x, w_x) in enumerate(((lo[0], one_minus[0]), (hi[0], frac[0]))):
            for j, (row_y, w_y) in enumerate(((lo[1], one_minus[1]), (hi[1], frac[1]))):
                row_xy, w_xy = row_x ^ row_y, w_x * w_y
                torch.bitwise_xor(row_xy, lo[2], out=rows[:, :, 4 * i + 2 * j])
                torch.bitwise_xor(row_xy, hi[2], out=rows[:, :, 4 * i + 2 * j + 1])
                if track:
                    corner_w += [w_xy * one_minus[2], w_xy * frac[2]]
                else:
                    torch.mul(w_xy, one_minus[2], out=weights[:, :, 4 * i + 2 * j])
                    torch.mul(w_xy, frac[2], out=weights[:, :, 4 * i + 2 * j + 1])
        if track:
            weights = torch.stack(corner_w, dim=-1)
        return rows.view(-1), weights.view(-1)

    def forward(self, unit_positions: Tensor) -> Tensor:
        """Runs on the native kernels when they apply (float32 on the CPU), else on PyTorch."""
        lib = native_for(self.table, unit_positions)
        if lib is None:
            return self._masked(self.reference_forward(self.table, unit_positions))
        return self._masked(hash_grid_features(lib, self.table, unit_positions, self.resolutions.view(-1),
                                               self.multipliers.view(3, -1).t().contiguous(), self.log2_table,
                                               self.reference_forward))

    def reference_forward(self, table: Tensor, unit_positions: Tensor) -> Tensor:
        """The pure-PyTorch encoding with `table` in place of self.table: the fast path's
        reference and fallback, and its differentiable backward (double backward)."""
        n = unit_positions.shape[0]
        with torch.set_grad_enabled(torch.is_grad_enabled() and unit_positions.requires_grad):
            rows, weights = self.corner_indices_and_weights(unit_positions)
        out = _TrilinearGather.apply(table, rows, weights)  # [L*N, F], level-major
        return out.view(self.n_levels, n, self.n_features).transpose(0, 1).reshape(n, self.out_dim)


def sh_encode(directions: Tensor, degree: int = 4) -> Tensor:
    """Real spherical harmonics of unit directions: [N, 3] -> [N, degree^2] (degree = number of bands, 1..4).

    Band 0-2 constants and order match the project's SH lighting convention (method.md).
    """
    if not 1 <= degree <= 4:
        raise ValueError("sh_encode supports 1 to 4 bands")
    x, y, z = directions.unbind(-1)
    out = [torch.full_like(x, 0.282095)]
    if degree > 1:
        out += [0.488603 * y, 0.488603 * z, 0.488603 * x]
    if degree > 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [1.092548 * x * y, 1.092548 * y * z, 0.315392 * (3 * zz - 1),
                1.092548 * x * z, 0.546274 * (xx - yy)]
    if degree > 3:
        out += [0.590044 * y * (3 * xx - yy), 2.890611 * x * y * z, 0.457046 * y * (5 * zz - 1),
                0.373176 * z * (5 * zz - 3), 0.457046 * x * (5 * zz - 1), 1.445306 * z * (xx - yy),
                0.590044 * x * (xx - 3 * yy)]
    return torch.stack(out, dim=-1)
