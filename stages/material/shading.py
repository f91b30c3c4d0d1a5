"""Shading a surface point under an SH light: Lambertian diffuse + a Phong-style SH specular lobe.

    out = shade(albedo, specular, glossiness, normals, view_dirs, coeffs, visibility)
    photo_srgb = linear_to_srgb(out.rgb)

Everything here is linear RGB except the two colour-space conversions. The model (NeROIC's, with
cast shadows made explicit):
  E(n)      = sh_irradiance(c, n)                     irradiance of the full light
  E0        = pi * Y00 * c_00                         irradiance of its ambient (band-0) part
  E_vis     = E - (1 - V) * max(E - E0, 0)            a blocked point keeps only the ambient part
  diffuse   = albedo / pi * E_vis
  specular  = k_s * V * sh_specular(c, reflect(view, n), s)
  rgb       = max(diffuse + specular, 0)
V in [0, 1] is the transmittance from the point towards the light's dominant direction
(visibility.py); V = 1 everywhere gives the published shading without shadows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from stages.common.sh import COSINE_LOBE, sh_irradiance, sh_specular

Y00 = 0.282095


@dataclass
class Shading:
    """Per-point shading terms, linear RGB [N, 3] each: rgb = diffuse + specular (clamped >= 0);
    irradiance is E_vis (what the diffuse term multiplies, before albedo / pi)."""

    rgb: Tensor
    diffuse: Tensor
    specular: Tensor
    irradiance: Tensor


def reflect(view_dirs: Tensor, normals: Tensor) -> Tensor:
    """Mirror direction of incoming view rays: view_dirs [N, 3] (camera -> surface), normals [N, 3] -> [N, 3]."""
    return view_dirs - 2.0 * (view_dirs * normals).sum(-1, keepdim=True) * normals


def ambient_irradiance(coeffs: Tensor) -> Tensor:
    """Irradiance of the band-0 part of a light (the same for every normal): [..., 9, 3] -> [..., 3]."""
    return COSINE_LOBE[0] * Y00 * coeffs[..., 0, :]


def shade(albedo: Tensor, specular: Tensor, glossiness: Tensor, normals: Tensor, view_dirs: Tensor,
          coeffs: Tensor, visibility: Tensor | None = None) -> Shading:
    """Shade N points: albedo [N, 3] linear, specular strength [N], glossiness [N] (>= 1),
    normals [N, 3] unit, view_dirs [N, 3] unit (camera -> surface), coeffs [N, 9, 3] or [9, 3]
    (the light of each point's photo, linear RGB radiance), visibility [N] in [0, 1] or None."""
    irradiance = sh_irradiance(coeffs, normals)
    glossy = sh_specular(coeffs, reflect(view_dirs, normals), glossiness)
    if visibility is not None:
        blocked = (1.0 - visibility)[:, None]
        irradiance = irradiance - blocked * torch.relu(irradiance - ambient_irradiance(coeffs))
        glossy = glossy * visibility[:, None]
    diffuse = albedo / math.pi * irradiance
    spec = specular[:, None] * glossy
    return Shading(torch.clamp(diffuse + spec, min=0.0), diffuse, spec, irradiance)
