"""How well the material/lighting decomposition re-lights: the three measures of issue 4.

    metrics = evaluate_capture(field, {file_path: sh}, capture_dir, density=density)   # true held-out geometry
    metrics = evaluate_relighting(field, learned, heldout, new_lights, true_albedo, true_lights, density)

On a synthetic capture whose held-out photos each have a NEW light:
- relit PSNR: the held-out views rendered with the material and the TRUE new light, against the
  photos;
- albedo PSNR: the albedo at the held-out views' surface points against the true albedo;
- lit-sphere PSNR: a Lambertian sphere lit by each learned training light against the same
  sphere lit by the true light, averaged over the training photos. The sphere is seen from that
  photo's camera: a photo shows its object under the half of its light that faces the camera,
  and only that half can be learned from it (the other half is extrapolated by the SH's
  smoothness). `sphere_psnr_front` sees every sphere from +Z instead, for comparison.
Albedo and light are only known up to a scale per channel (doubling the albedo and halving the
light gives the same photos), so each comparison first fits that scale: one factor per channel,
least squares in linear RGB over all compared pixels (relit: over all held-out pixels; albedo:
over all held-out pixels; lights: the albedo's factor, inverted, since learned albedo x learned
light = true albedo x true light). PSNRs are of sRGB-encoded values in [0, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from stages.common.cameras import read_transforms
from stages.common.sh import read_lighting, render_lit_sphere, sh_dominant_direction
from bench.ground_truth import read_gt_albedo, surface_from_capture
from stages.material.material_field import MaterialField
from stages.common.colour import linear_to_srgb, srgb_to_linear
from stages.material.shading import shade
from stages.material.surface import SurfacePixels
from stages.material.visibility import DensityGrid


@dataclass
class RelightingMetrics:
    """The three measures (dB), the fitted per-channel scales, the per-photo sphere PSNRs and, per
    held-out view, sRGB images [H, W, 3] in [0, 1]: photo, relit, albedo (scaled), true albedo."""

    relit_psnr: float
    albedo_psnr: float
    sphere_psnr: float
    sphere_psnr_front: float
    relit_scale: list[float]
    albedo_scale: list[float]
    sphere_psnrs: list[float]
    images: dict[str, list[np.ndarray]] = dataclass_field(default_factory=dict)

    def summary(self) -> dict:
        return {"relit_psnr": self.relit_psnr, "albedo_psnr": self.albedo_psnr, "sphere_psnr": self.sphere_psnr,
                "sphere_psnr_front": self.sphere_psnr_front, "relit_scale": self.relit_scale, "albedo_scale": self.albedo_scale}


def fit_channel_scale(prediction: Tensor, truth: Tensor) -> Tensor:
    """The factor per channel [3] that makes k * prediction closest to truth ([N, 3] linear values)
    in what srgb_psnr scores: the sRGB encodings, clipped to [0, 1]. Photos clip their highlights
    (a quarter of spot-wild's held-out object pixels), and a least-squares fit in linear light bends
    to those pixels; this starts from it, searches the factor on a log grid and refines the best by
    golden section, so it never scores below the least-squares factor."""
    least_squares = (prediction * truth).sum(0) / (prediction * prediction).sum(0).clamp(min=1e-12)
    target = linear_to_srgb(truth)
    scales = least_squares.clone()
    for c in range(prediction.shape[1]):
        def error(log_k: float) -> float:
            return float((linear_to_srgb(prediction[:, c] * math.exp(log_k)) - target[:, c]).square().mean())

        start = math.log(max(float(least_squares[c]), 1e-12))
        grid = [start + step * 0.02 for step in range(-75, 76)]
        errors = [error(g) for g in grid]
        best = min(range(len(grid)), key=errors.__getitem__)
        lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
        golden = (math.sqrt(5.0) - 1.0) / 2.0
        a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
        ea, eb = error(a), error(b)
        for _ in range(40):
            if ea < eb:
                hi, b, eb = b, a, ea
                a = hi - golden * (hi - lo)
                ea = error(a)
            else:
                lo, a, ea = a, b, eb
                b = lo + golden * (hi - lo)
                eb = error(b)
        refined = (lo + hi) / 2.0
        scales[c] = math.exp(refined if error(refined) <= errors[best] else grid[best])
    return scales


def srgb_psnr(prediction_linear: Tensor, truth_linear: Tensor) -> float:
    """PSNR (dB) of the sRGB encodings of two linear RGB arrays (clipped to [0, 1])."""
    mse = (linear_to_srgb(prediction_linear) - linear_to_srgb(truth_linear)).square().mean()
    return float(-10.0 * torch.log10(mse.clamp(min=1e-20)))


def lit_sphere_psnr(learned: np.ndarray, truth: np.ndarray, size: int = 64, rotation: np.ndarray | None = None) -> float:
    """PSNR over the disc of two spheres lit by lights [9, 3] (linear RGB) and encoded to sRGB, seen
    from +Z or by a camera with camera-to-world rotation [3, 3]."""
    a, alpha = render_lit_sphere(learned, size, rotation=rotation)
    b, _ = render_lit_sphere(truth, size, rotation=rotation)
    disc = torch.from_numpy(alpha > 0)
    return srgb_psnr(torch.from_numpy(a)[disc], torch.from_numpy(b)[disc])


@torch.no_grad()
def evaluate_relighting(field: MaterialField, learned_lights: np.ndarray, heldout: SurfacePixels,
                        new_lights: np.ndarray, true_albedo: list[np.ndarray], true_lights: np.ndarray,
                        density: DensityGrid | None = None, shadow_steps: int = 48,
                        keep_images: bool = True, light_views: np.ndarray | None = None) -> RelightingMetrics:
    """The three measures.

    learned_lights, true_lights [P, 9, 3]: the training photos' lights (linear RGB); heldout: the
    held-out views' surface pixels with their photos' colours; new_lights [Q, 9, 3]: the true light
    of each held-out view; true_albedo: [H, W, 3] linear per held-out view; density: for cast
    shadows towards each new light's dominant direction (None: no shadows); light_views [P, 3, 3]:
    the training photos' camera-to-world rotations, from which their lit spheres are seen.
    """
    device = heldout.positions.device
    material = field(heldout.positions, heldout.normals)
    coeffs = torch.as_tensor(new_lights, dtype=torch.float32, device=device)[heldout.image]
    visibility = None
    if density is not None:
        dirs = torch.from_numpy(np.stack([sh_dominant_direction(c) for c in new_lights])).float().to(device)
        visibility = density.visibility(heldout.positions, heldout.normals, dirs[heldout.image], n_steps=shadow_steps)
    relit = shade(material.albedo, material.specular, material.glossiness, material.normal,
                  heldout.view_dirs, coeffs, visibility).rgb
    photo = srgb_to_linear(heldout.rgb)
    relit_scale = fit_channel_scale(relit, photo)
    relit_psnr = srgb_psnr(relit * relit_scale, photo)

    truth = torch.empty_like(material.albedo)
    for v in range(heldout.n_photos):
        mine = heldout.image == v
        rows, cols = heldout.py[mine].cpu().numpy(), heldout.px[mine].cpu().numpy()
        truth[mine] = torch.from_numpy(np.ascontiguousarray(true_albedo[v][rows, cols])).to(truth)
    albedo_scale = fit_channel_scale(material.albedo, truth)
    albedo_psnr = srgb_psnr(material.albedo * albedo_scale, truth)

    light_scale = albedo_scale.double().cpu().numpy()
    views = light_views if light_views is not None else [None] * len(true_lights)
    sphere = [lit_sphere_psnr(np.asarray(l) / light_scale, np.asarray(t), rotation=r)
              for l, t, r in zip(learned_lights, true_lights, views)]
    front = [lit_sphere_psnr(np.asarray(l) / light_scale, np.asarray(t)) for l, t in zip(learned_lights, true_lights)]

    images: dict[str, list[np.ndarray]] = {}
    if keep_images:
        layers = {"photo": heldout.rgb, "relit": linear_to_srgb(relit * relit_scale),
                  "albedo": linear_to_srgb(material.albedo * albedo_scale), "true_albedo": linear_to_srgb(truth)}
        images = {name: [heldout.paint(v, values).cpu().numpy() for v in range(heldout.n_photos)]
                  for name, values in layers.items()}
    return RelightingMetrics(relit_psnr, albedo_psnr, float(np.mean(sphere)), float(np.mean(front)), relit_scale.tolist(),
                             albedo_scale.tolist(), sphere, images)


def evaluate_capture(field: MaterialField, learned_lights: dict[str, np.ndarray], capture_dir: str | Path,
                     heldout: SurfacePixels | None = None, density: DensityGrid | None = None,
                     min_alpha: float = 0.5, keep_images: bool = True) -> RelightingMetrics:
    """evaluate_relighting against a synthetic capture (tests/synthetic/spot_capture.py layout).

    learned_lights: photo path or stem -> [9, 3] (e.g. read from the stage's lighting.json); they are
    matched to the capture's training photos by file stem, and only matched photos are compared.
    heldout: the held-out views' surface pixels (e.g. from the trained geometry field); by default
    the capture's true geometry, every pixel at least `min_alpha` covered (edges included).
    """
    capture_dir = Path(capture_dir)
    device = next(field.parameters()).device
    if heldout is None:
        heldout = surface_from_capture(capture_dir, "test", min_alpha=min_alpha, device=device)
    new_lights = np.stack([c for _, c in read_lighting(capture_dir / "lighting_test.json")])
    learned = {Path(k).stem: np.asarray(v, dtype=np.float64) for k, v in learned_lights.items()}
    rotation = {f.stem: f.c2w[:3, :3] for f in read_transforms(capture_dir / "transforms.json")}
    triples = [(learned[Path(fp).stem], c, rotation[Path(fp).stem])
               for fp, c in read_lighting(capture_dir / "lighting.json") if Path(fp).stem in learned]
    if not triples:
        raise ValueError("none of the learned lights belongs to a training photo of the capture")
    mine, truth, views = (np.stack(column) for column in zip(*triples))
    return evaluate_relighting(field, mine, heldout, new_lights, read_gt_albedo(capture_dir, "test"), truth,
                               density, keep_images=keep_images, light_views=views)
