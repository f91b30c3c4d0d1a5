"""Training losses of the geometry stage (NeRF-W colour, transient, silhouette, eikonal, camera regulariser)."""
from __future__ import annotations

import torch
from torch import Tensor


def nerfw_colour_loss(rgb: Tensor, target: Tensor, beta: Tensor | None = None) -> Tensor:
    """NeRF-W: |C - C*|^2 / (2 beta^2) + log(beta), averaged; rgb, target [R, 3], beta [R] >= beta_min.

    Pixels the transient part claims (large beta) weigh less; log(beta) stops beta from growing
    everywhere. Without beta it is the plain mean squared error.
    """
    sq = (rgb - target).square().mean(dim=-1)
    if beta is None:
        return sq.mean()
    return (sq / (2.0 * beta.square()) + torch.log(beta)).mean()


def transient_density_loss(sigma_transient: Tensor) -> Tensor:
    """Mean transient density [S] (NeRF-W's sparsity term, weight 0.01 in the paper)."""
    if sigma_transient.numel() == 0:
        return sigma_transient.sum()
    return sigma_transient.mean()


def silhouette_loss(acc: Tensor, mask: Tensor) -> Tensor:
    """BCE(0.98 * acc + 0.01, mask): acc [R] rendered opacity, mask [R] in [0, 1] (paper's form;
    the squeeze keeps the log finite for fully empty or fully opaque rays)."""
    p = 0.98 * acc.clamp(0.0, 1.0) + 0.01
    return -(mask * torch.log(p) + (1.0 - mask) * torch.log(1.0 - p)).mean()


def eikonal_loss(gradients: Tensor) -> Tensor:
    """Mean (|grad d| - 1)^2 over gradients [N, 3] of a signed distance d: keeps d a distance
    (IGR, NeuS, VolSDF), which makes its zero level a clean surface and its gradient the normal."""
    return (gradients.norm(dim=-1) - 1.0).square().mean()


def normal_difference(gradients: Tensor, nearby_gradients: Tensor) -> Tensor:
    """Mean 1 - cos between an SDF's gradients [N, 3] and those at nearby points [N, 3]: a bumpy
    surface (texture explained by geometry) costs, a smooth or sharply creased one hardly does."""
    return 1.0 - torch.nn.functional.cosine_similarity(gradients, nearby_gradients, dim=-1, eps=1e-8).mean()


def psnr(mse: Tensor | float) -> float:
    """Peak signal-to-noise ratio (dB) of a mean squared error on [0, 1] values."""
    mse = float(mse)
    return float("inf") if mse <= 0 else -10.0 * torch.log10(torch.tensor(mse)).item()


def camera_refinement_loss(rotation: Tensor, translation: Tensor, log_focal: Tensor) -> Tensor:
    """Mean over photos of |rotation| + |translation| + |log focal|: [P, 3], [P, 3], [P] (the paper
    sums these norms with weight 1); keeps refined cameras near the given ones. Smooth at zero."""
    eps = 1e-12
    return ((rotation.square().sum(-1) + eps).sqrt() + (translation.square().sum(-1) + eps).sqrt()
            + log_focal.abs()).mean()
