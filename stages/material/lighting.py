"""Per-photo spherical-harmonic lighting, learned jointly with the material.

    lights = PhotoLighting(n_photos, ambient_radiance=0.6)   # every photo starts as white ambient
    coeffs = lights(image_idx)                                # [N] -> [N, 9, 3] linear RGB radiance
    lights.save("lighting.json", file_paths)                  # method.md lighting format

Order-2 SH (9 coefficients per channel), exactly the shared format, so the learned lights can be
written and read back without loss. Starting from white ambient (NeROIC's initialisation) means
early training explains the photos by albedo alone; the directional bands grow as the colour
loss demands them.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from stages.common.sh import N_COEFFS, ambient_sh, fibonacci_sphere, sh_dominant_direction, sh_radiance, write_lighting


class PhotoLighting(nn.Module):
    """coeffs [P, 9, 3]: one SH light per photo (linear RGB radiance, world directions)."""

    def __init__(self, n_photos: int, ambient_radiance: float = 1.0):
        super().__init__()
        init = torch.from_numpy(ambient_sh([ambient_radiance] * 3)).float()
        self.coeffs = nn.Parameter(init.expand(n_photos, N_COEFFS, 3).clone())

    def __len__(self) -> int:
        return self.coeffs.shape[0]

    def forward(self, image_idx: Tensor) -> Tensor:
        """image_idx [N] int64 -> [N, 9, 3]."""
        return self.coeffs[image_idx]

    @torch.no_grad()
    def dominant_directions(self) -> Tensor:
        """Unit direction [P, 3] each photo's light comes from most (its linear band, by luminance)."""
        coeffs = self.coeffs.detach().cpu().double().numpy()
        dirs = np.stack([sh_dominant_direction(c) for c in coeffs])
        return torch.from_numpy(dirs).to(self.coeffs)

    def negative_radiance(self, directions: Tensor) -> Tensor:
        """How far each light dips below zero: directions [D, 3] unit -> relu(-L) [P, D, 3]."""
        radiance = sh_radiance(self.coeffs[:, None], directions[None])  # [P, D, 3]
        return torch.relu(-radiance)

    def save(self, path, file_paths: list[str]) -> None:
        """Write lighting.json: one entry per photo, in photo order, with the photo's file_path."""
        if len(file_paths) != len(self):
            raise ValueError(f"{len(file_paths)} file paths for {len(self)} lights")
        coeffs = self.coeffs.detach().cpu().double().numpy()
        write_lighting(path, list(zip(file_paths, coeffs)))


def positivity_directions(n: int, device: str | torch.device = "cpu") -> Tensor:
    """n nearly uniform unit directions [n, 3] on which the light-positivity loss samples the lights."""
    return torch.from_numpy(fibonacci_sphere(n)).float().to(device)
