"""Per-photo latent codes (NeRF-W): appearance codes condition colour, transient codes the transient head.

Photos of one object differ in exposure, white balance and lighting; a code per photo lets the
field explain those differences without bending the shared geometry. Held-out or new views use
a neutral code (the mean over the training photos).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class PerImageEmbedding(nn.Module):
    """A learned vector per training photo: image_idx [N] int64 -> codes [N, dim].

    Initialised near zero so all photos start identical and only drift apart where the photos
    demand it.
    """

    def __init__(self, n_images: int, dim: int, init_std: float = 0.01):
        super().__init__()
        self.n_images, self.dim = n_images, dim
        self.weight = nn.Parameter(torch.randn(n_images, dim) * init_std)

    def forward(self, image_idx: Tensor) -> Tensor:
        return nn.functional.embedding(image_idx, self.weight)  # a backward that sums in a fixed order

    def neutral(self) -> Tensor:
        """The mean code [dim]: the appearance of 'a typical training photo'."""
        return self.weight.mean(dim=0)
