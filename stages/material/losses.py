"""Losses of the material stage (NeROIC's rendering network, with a specular regulariser that acts).

All take plain tensors and return a scalar; weights are applied by the training loop.
"""
from __future__ import annotations

import torch
from torch import Tensor


def colour_loss(rendered_srgb: Tensor, photo_srgb: Tensor, huber: float = 0.0) -> Tensor:
    """Error of sRGB-encoded colours [N, 3] (the photos are compared as they were stored): squared
    up to `huber`, growing linearly beyond it (0: squared everywhere). What an order-2 light cannot
    hold (a sun's sharp shadow or highlight, light bounced off the object) leaves large residuals
    in a few photos; counted linearly, they pull the albedo less than the photos that agree."""
    residual = (rendered_srgb - photo_srgb).abs()
    if huber <= 0:
        return residual.square().mean()
    return torch.where(residual < huber, residual.square(), huber * (2.0 * residual - huber)).mean()


def normal_loss(refined: Tensor, target: Tensor) -> Tensor:
    """Mean |n - n*|^2 of unit normals [N, 3] (= 2 (1 - cos)): keeps the refined normal near the
    normals stage's target, which is the only thing tying it to the frozen geometry."""
    return (refined - target).square().sum(-1).mean()


def normal_smoothness(normals: Tensor, jittered_normals: Tensor) -> Tensor:
    """Mean |n(x) - n(x + eps)|^2 of refined normals [N, 3] at points and at slightly moved points:
    the offset the material adds to the normal must vary smoothly over the surface."""
    return (normals - jittered_normals).square().sum(-1).mean()


def albedo_smoothness(albedo: Tensor, jittered_albedo: Tensor) -> Tensor:
    """Mean |a(x) - a(x + eps)| of linear albedos [N, 3] at points and slightly moved points: an L1
    (edge-keeping) prior against the speckle the albedo otherwise grows to cancel the small bumps
    of the learned geometry's shading."""
    return (albedo - jittered_albedo).abs().mean()


def specular_regulariser(specular: Tensor, glossiness: Tensor) -> Tensor:
    """Mean absolute deviation of specular strength [N] and log-glossiness [N] from their batch means.

    An object is made of few materials, so its specular lobe varies little over the surface; a lobe
    that changes from texel to texel would be explaining albedo texture. NeROIC's release applies
    its regulariser to a detached tensor, so it has no effect. A penalty on the lobe's size (tried
    first) biases the specular towards zero, and the missed highlights go into the albedo: on dark
    albedo the lobe outshines the diffuse term, so dark patches came out twice too bright.
    """
    log_gloss = glossiness.log()
    return (specular - specular.mean()).abs().mean() + 0.1 * (log_gloss - log_gloss.mean()).abs().mean()


def light_positivity(negative_radiance: Tensor) -> Tensor:
    """Mean of relu(-L) over sampled directions, channels and photos ([P, D, 3]): a light may not
    send negative radiance from any direction (order-2 SH can, and the fit would exploit it)."""
    return negative_radiance.mean()
