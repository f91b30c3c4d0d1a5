"""The hash-grid encoding on the native kernels, as an autograd Function.

    features = hash_grid_features(lib, table, unit_positions, resolutions, multipliers, log2_table,
                                  reference)     # [N, L*F], same values as reference(table, positions)

Gradients: the table's (dense [L << log2_table, F], written by a level-parallel scatter without
atomics) and, when the positions require one, the positions' (d features / d position, for
camera refinement or an SDF's normals). A backward pass that must itself be differentiable
(`create_graph=True`, e.g. an eikonal loss) recomputes the features with `reference`, the
differentiable PyTorch path, and differentiates that: double backward works, at reference speed.
"""
from __future__ import annotations

import ctypes
from collections.abc import Callable

import torch
from torch import Tensor


FEATURES = (1, 2, 4, 8)  # feature counts the kernels are compiled for


def _check(status: int, what: str) -> None:
    if status != 0:
        raise ValueError(f"native hash grid: unsupported shape for {what}")


class _NativeHashGrid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table: Tensor, positions: Tensor, lib: ctypes.CDLL, resolutions: Tensor,
                multipliers: Tensor, log2_table: int, reference: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        n_levels, n_features = resolutions.shape[0], table.shape[1]
        pos, values = positions.detach().contiguous(), table.detach().contiguous()
        out = torch.empty(pos.shape[0], n_levels * n_features, dtype=table.dtype)
        _check(lib.neroic_hash_grid_forward(
            pos.shape[0], n_levels, n_features, log2_table, pos.data_ptr(), values.data_ptr(),
            resolutions.data_ptr(), multipliers.data_ptr(), out.data_ptr(), torch.get_num_threads()), "forward")
        ctx.save_for_backward(table, positions)
        ctx.lib, ctx.resolutions, ctx.multipliers, ctx.log2_table = lib, resolutions, multipliers, log2_table
        ctx.reference = reference
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        table, positions = ctx.saved_tensors
        need_table, need_pos = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if torch.is_grad_enabled():  # create_graph: the gradient must be differentiable itself
            inputs = [t for t, need in ((table, need_table), (positions, need_pos)) if need]
            grads = iter(torch.autograd.grad(ctx.reference(table, positions), inputs, grad_out, create_graph=True))
            return (next(grads) if need_table else None, next(grads) if need_pos else None,
                    None, None, None, None, None)
        lib, n_threads = ctx.lib, torch.get_num_threads()
        n_levels, n_features = ctx.resolutions.shape[0], table.shape[1]
        grad = grad_out.contiguous()
        pos = positions.detach().contiguous()
        shape = (pos.shape[0], n_levels, n_features, ctx.log2_table, pos.data_ptr())
        grid = (ctx.resolutions.data_ptr(), ctx.multipliers.data_ptr())
        grad_table = grad_pos = None
        if need_table:
            grad_table = torch.zeros_like(table)
            _check(lib.neroic_hash_grid_table_grad(*shape, grad.data_ptr(), *grid, grad_table.data_ptr(), n_threads),
                   "table gradient")
        if need_pos:
            grad_pos = torch.empty_like(pos)
            values = table.detach().contiguous()
            _check(lib.neroic_hash_grid_position_grad(*shape, values.data_ptr(), grad.data_ptr(), *grid,
                                                      grad_pos.data_ptr(), n_threads), "position gradient")
        return grad_table, grad_pos, None, None, None, None, None


def hash_grid_features(lib: ctypes.CDLL, table: Tensor, unit_positions: Tensor, resolutions: Tensor,
                       multipliers: Tensor, log2_table: int,
                       reference: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """table [L << log2_table, F] float32 CPU, unit_positions [N, 3] float32 CPU,
    resolutions [L] float32, multipliers [L, 3] int32 (the hash primes, or dense strides)
    -> features [N, L*F] (level-major within a row, like the reference). Other feature counts
    than FEATURES take the reference."""
    if table.shape[1] not in FEATURES:
        return reference(table, unit_positions)
    return _NativeHashGrid.apply(table, unit_positions, lib, resolutions, multipliers, log2_table, reference)
