"""Small fully connected networks: the heads that turn grid features into density and colour."""
from __future__ import annotations

from torch import Tensor, nn

from stages.field.kernels import native_for
from stages.field.kernels.mlp import mlp_output


class MLP(nn.Module):
    """ReLU MLP: [N, in_dim] -> [N, out_dim], `n_hidden` hidden layers of width `width`.

    Kept narrow (64) on purpose: the hash grid carries the detail, and on a CPU every
    extra FLOP per sample is paid millions of times per step.
    """

    def __init__(self, in_dim: int, out_dim: int, width: int = 64, n_hidden: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(n_hidden):
            layers += [nn.Linear(dim, width), nn.ReLU(inplace=True)]
            dim = width
        layers.append(nn.Linear(dim, out_dim))
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: Tensor, first_bias: Tensor | None = None) -> Tensor:
        """x: [N, in_dim]; first_bias: [N, width] added after the first layer (conditioning inputs
        that are constant per ray pass through their share of the first layer once per ray).
        Runs on the fused native kernels when they apply (float32 on the CPU), else on PyTorch."""
        params = [p for layer in self.net if isinstance(layer, nn.Linear) for p in (layer.weight, layer.bias)]
        lib = native_for(x, first_bias, *params)
        if lib is None or (first_bias is not None and first_bias.shape != (x.shape[0], params[0].shape[0])):
            return self.reference_forward(x, first_bias)
        return mlp_output(lib, x, first_bias, params, self.reference_forward)

    def reference_forward(self, x: Tensor, first_bias: Tensor | None = None) -> Tensor:
        """The pure-PyTorch network: the fast path's reference and fallback, and its
        differentiable backward (double backward)."""
        if first_bias is None:
            return self.net(x)
        h = self.net[0](x) + first_bias
        return self.net[1:](h)
