"""Per-photo spherical-harmonic lighting and camera response, learned jointly with the material.

    lights = PhotoLighting(n_photos, ambient_radiance=0.6)   # every photo starts as white ambient
    coeffs = lights(image_idx)                                # [N] -> [N, 9, 3] linear RGB radiance
    photo_linear = lights.respond(shaded_linear, image_idx)   # the photo's tone curve
    lights.save("lighting.json", "camera_response.json", file_paths)

Order-2 SH (9 coefficients per channel), exactly the shared format, so the learned lights can be
written and read back without loss. Starting from white ambient (NeROIC's initialisation) means
early training explains the photos by albedo alone; the directional bands grow as the colour
loss demands them.

Photos from different cameras differ in exposure, white balance and tone curve. A light's three
colour channels scale independently, so each photo's light already carries its exposure and
white balance in linear light; what it cannot carry is the tone curve, modelled as a per-photo
gamma (NeROIC's): photo = shaded^gamma, gamma = exp(g - mean g) so the photos' mean log-gamma is
zero (a global gamma would only trade against the albedo's). What stays unknown is one colour
scale per channel shared by the albedo and every light; `neutrality` settles it by asking the
lights' ambient colours to average out grey, so no one photo's light tints the albedo.
"""
from __future__ import annotations

import json
from pathlib import Path

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
        self.log_gamma = nn.Parameter(torch.zeros(n_photos))

    def __len__(self) -> int:
        return self.coeffs.shape[0]

    def forward(self, image_idx: Tensor) -> Tensor:
        """image_idx [N] int64 -> [N, 9, 3]."""
        return self.coeffs[image_idx]

    def gamma(self) -> Tensor:
        """Each photo's tone-curve exponent [P] (the photos' mean log-gamma is zero)."""
        return torch.exp(self.log_gamma - self.log_gamma.mean())

    def respond(self, linear: Tensor, image_idx: Tensor) -> Tensor:
        """Shaded linear RGB [N, 3] of photos image_idx [N] -> what their cameras recorded (linear)."""
        return linear.clamp(min=1e-6) ** self.gamma()[image_idx, None]

    def neutrality(self) -> Tensor:
        """How far the lights' mean ambient colour is from grey: the squared deviation of its log
        channels from their mean (scale-free, so only the colour is asked of it)."""
        ambient = self.coeffs[:, 0, :].mean(0).clamp(min=1e-6).log()
        return (ambient - ambient.mean()).square().sum()

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

    def save(self, lighting_path, response_path, file_paths: list[str]) -> None:
        """Write the lights (lighting.json: one entry per photo, in photo order, with the photo's
        file_path) and the tone curves ([{file_path, gamma}])."""
        if len(file_paths) != len(self):
            raise ValueError(f"{len(file_paths)} file paths for {len(self)} lights")
        coeffs = self.coeffs.detach().cpu().double().numpy()
        write_lighting(lighting_path, list(zip(file_paths, coeffs)))
        gammas = self.gamma().detach().cpu().tolist()
        Path(response_path).write_text(json.dumps([{"file_path": f, "gamma": round(g, 5)}
                                                   for f, g in zip(file_paths, gammas)], indent=1) + "\n")


def read_response(path) -> dict[str, float]:
    """camera_response.json -> {photo stem: gamma} (empty when the file is absent)."""
    from stages.common.cameras import frame_stem

    path = Path(path)
    if not path.exists():
        return {}
    return {frame_stem(e["file_path"]): float(e["gamma"]) for e in json.loads(path.read_text(encoding="utf-8"))}


def positivity_directions(n: int, device: str | torch.device = "cpu") -> Tensor:
    """n nearly uniform unit directions [n, 3] on which the light-positivity loss samples the lights."""
    return torch.from_numpy(fibonacci_sphere(n)).float().to(device)
