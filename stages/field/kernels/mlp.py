"""The small ReLU MLP on the native kernels, as an autograd Function.

    out = mlp_output(lib, x, first_bias, params, reference)   # same values as reference(x, first_bias)

params: [W0, b0, W1, b1, ...] of the network's Linear layers (ReLU between them). x [N, K] may be
a column slice of a wider tensor (its row stride is passed on, no copy). Gradients: x's,
first_bias's and every weight's and bias's. The forward pass keeps the post-ReLU activations of
the hidden layers for the backward pass (as PyTorch does). A backward pass that must itself be
differentiable (`create_graph=True`) recomputes with `reference` and differentiates that: double
backward works, at reference speed.
"""
from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def _pointers(tensors: Sequence[Tensor]) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def _address(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _row_major(x: Tensor) -> Tensor:
    """x itself when each row is contiguous (any row stride), else a contiguous copy."""
    return x if x.stride(1) == 1 and x.stride(0) >= x.shape[1] else x.contiguous()


class _NativeMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, first_bias: Tensor | None, lib: ctypes.CDLL,
                reference: Callable[[Tensor, Tensor | None], Tensor], keep: bool, *params: Tensor) -> Tensor:
        weights = [p.detach().contiguous() for p in params[0::2]]
        dims = [weights[0].shape[1]] + [w.shape[0] for w in weights]
        x_rows = _row_major(x.detach())
        fb = None if first_bias is None else first_bias.detach().contiguous()
        n = x.shape[0]
        out = torch.empty(n, dims[-1], dtype=x.dtype)
        hidden = [torch.empty(n, d, dtype=x.dtype) for d in dims[1:-1]] if keep else []
        status = lib.neroic_mlp_forward(
            n, len(weights), (ctypes.c_int * len(dims))(*dims), _pointers(weights),
            _pointers([p.detach().contiguous() for p in params[1::2]]), x_rows.data_ptr(), x_rows.stride(0),
            _address(fb), out.data_ptr(), _pointers(hidden) if hidden else None, torch.get_num_threads())
        if status != 0:
            raise ValueError("native MLP: unsupported shape")
        ctx.save_for_backward(x, first_bias, *params, *hidden)
        ctx.dims, ctx.lib, ctx.reference = dims, lib, reference
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        dims, n_layers = ctx.dims, len(ctx.dims) - 1
        x, first_bias, *rest = ctx.saved_tensors
        params, hidden = rest[:2 * n_layers], rest[2 * n_layers:]
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph: the gradient must be differentiable itself
            wanted = [(i, t) for i, t in enumerate((x, first_bias, None, None, None, *params)) if need[i]]
            grads = torch.autograd.grad(ctx.reference(x, first_bias), [t for _, t in wanted], grad_out,
                                        create_graph=True)
            result = [None] * len(need)
            for (i, _), g in zip(wanted, grads):
                result[i] = g
            return tuple(result)
        n = x.shape[0]
        x_rows = _row_major(x.detach())
        grad = grad_out.contiguous()
        weights = [p.detach().contiguous() for p in params[0::2]]
        grad_x = torch.empty(n, dims[0], dtype=x.dtype) if need[0] else None
        grad_fb = torch.empty(n, dims[1], dtype=x.dtype) if need[1] else None
        grad_w = [torch.empty_like(w) for w in weights]
        grad_b = [torch.empty(w.shape[0], dtype=w.dtype) for w in weights]
        status = ctx.lib.neroic_mlp_backward(
            n, n_layers, (ctypes.c_int * len(dims))(*dims), _pointers(weights), x_rows.data_ptr(), x_rows.stride(0),
            _pointers(hidden) if hidden else None, grad.data_ptr(), _address(grad_x), _address(grad_fb),
            _pointers(grad_w), _pointers(grad_b), torch.get_num_threads())
        if status != 0:
            raise ValueError("native MLP: unsupported shape")
        param_grads = []
        for i, (gw, gb) in enumerate(zip(grad_w, grad_b)):
            param_grads += [gw if need[5 + 2 * i] else None, gb if need[6 + 2 * i] else None]
        return (grad_x, grad_fb, None, None, None, *param_grads)


def mlp_output(lib: ctypes.CDLL, x: Tensor, first_bias: Tensor | None, params: Sequence[Tensor],
               reference: Callable[[Tensor, Tensor | None], Tensor]) -> Tensor:
    """x [N, K] float32 CPU, first_bias [N, W0] or None, params [W0 [W0, K], b0 [W0], W1, b1, ...]
    -> [N, out_dim]: ReLU between the layers, first_bias added before the first ReLU."""
    inputs = (x, first_bias, *params)
    keep = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    return _NativeMLP.apply(x, first_bias, lib, reference, keep, *params)
