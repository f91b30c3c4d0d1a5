"""The material stage's training loop: surface pixels + frozen geometry -> material field + lights.

    result = train_material(field, lights, surface, from_section(MaterialTrainConfig, config["material"]),
                            density=density_grid, checkpoint_path=ctx.checkpoints / "material.pt")

Each step draws a batch of surface pixels (surface.py: one known surface point per pixel), asks
the material field once per pixel, shades with the pixel's photo light (shading.py; cast shadows
from the density grid towards the light's current dominant direction, visibility.py) and compares
with the photo in sRGB. Checkpoints are plain tensors saved atomically and loaded with
weights_only=True (the geometry stage's helpers); a run resumes from the last one if its settings
match.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace, dataclass
from pathlib import Path

import torch

from stages.field.losses import psnr
from stages.field.checkpoints import (config_key, generator_state, load_checkpoint, restore_generator,
                                      save_checkpoint)
from stages.field.optim import adam
from stages.field.training import TrainResult, interruptible_training
from stages.material.lighting import PhotoLighting, positivity_directions
from stages.material.losses import (albedo_smoothness, colour_loss, light_positivity, normal_loss,
                                    normal_smoothness, specular_regulariser)
from stages.material.material_field import MaterialField
from stages.common.colour import linear_to_srgb, srgb_to_linear
from stages.material.shading import shade
from stages.material.surface import SurfacePixels
from stages.material.visibility import DensityGrid

log = logging.getLogger("neroic")


@dataclass
class MaterialTrainConfig:
    """Optimisation settings. Fields named like [material] config keys take their values (and
    defaults) from the config: build with `from_section(MaterialTrainConfig, config["material"])`."""

    steps: int
    batch_size: int
    lr: float  # material field (hash table and MLP)
    light_lr: float
    lr_final_factor: float  # cosine decay to lr * this at the last step
    colour_huber: float  # colour residuals (sRGB) beyond this count linearly (0: squared error)
    normal_weight: float
    smoothness_weight: float
    albedo_smoothness_weight: float
    specular_weight: float
    positivity_weight: float
    response_weight: float  # keeps the tone curves near gamma 1 and the lights' mean colour grey
    coarse_to_fine: float  # share of the steps over which the hash levels are switched on
    shadows: bool  # cast shadows from the density grid (needs `density`)
    shadow_steps: int
    checkpoint_every: int
    max_seconds: float  # stop early after this much training time (0: no limit)
    seed: int
    warmup_steps: int = 20  # linear ramp of the rates at the start
    smoothness_fraction: float = 0.25  # share of the batch also queried at a jittered point
    smoothness_jitter: float = 0.01  # world units
    positivity_directions: int = 128
    start_levels: int = 4  # hash levels in use at the first step
    log_every: int = 10


def _lr_factor(step: int, cfg: MaterialTrainConfig) -> float:
    """A linear warm-up, then cosine decay from 1 to lr_final_factor over the run. Without the
    warm-up Adam's first full-size steps (every weight moves by lr at once) can switch off every
    hidden unit of the head, and the material never leaves a constant grey."""
    progress = min(step / max(cfg.steps, 1), 1.0)
    warmup = min((step + 1) / cfg.warmup_steps, 1.0) if cfg.warmup_steps > 0 else 1.0
    return warmup * (cfg.lr_final_factor + (1.0 - cfg.lr_final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _active_levels(step: int, cfg: MaterialTrainConfig, n_levels: int) -> float:
    """Hash levels in use at `step`: coarse first, so the lights explain the smooth shading before
    fine albedo detail could absorb it; all levels after coarse_to_fine * steps."""
    if cfg.coarse_to_fine <= 0:
        return float(n_levels)
    progress = min(step / (cfg.coarse_to_fine * cfg.steps), 1.0)
    return cfg.start_levels + progress * (n_levels - cfg.start_levels)


def mean_linear_colour(surface: SurfacePixels) -> float:
    """Mean linear intensity of the photos' surface pixels: sets the initial ambient light so a
    0.5 albedo starts at the photos' brightness."""
    return float(srgb_to_linear(surface.rgb).mean())


def render_surface(field: MaterialField, lights: PhotoLighting | None, surface: SurfacePixels, index: torch.Tensor,
                   density: DensityGrid | None, shadow_steps: int = 32, directions: torch.Tensor | None = None,
                   coeffs: torch.Tensor | None = None):
    """Shade the surface pixels `index` [B]: returns (MaterialSample, Shading, visibility [B] or None).

    coeffs [B, 9, 3] overrides the learned lights (re-lighting); directions [P, 3] (indexed by the
    pixels' photo index) overrides the lights' dominant directions used for shadows. `lights` may
    be None when both are given.
    """
    image = surface.image[index]
    positions, normals = surface.positions[index], surface.normals[index]
    material = field(positions, normals)
    if coeffs is None:
        coeffs = lights(image)
    visibility = None
    if density is not None:
        dirs = lights.dominant_directions() if directions is None else directions
        visibility = density.visibility(positions, normals, dirs[image], n_steps=shadow_steps)
    shading = shade(material.albedo, material.specular, material.glossiness, material.normal,
                    surface.view_dirs[index], coeffs, visibility)
    return material, shading, visibility


def train_material(field: MaterialField, lights: PhotoLighting, surface: SurfacePixels, cfg: MaterialTrainConfig,
                   density: DensityGrid | None = None, checkpoint_path: Path | None = None,
                   progress: Callable | None = None) -> TrainResult:
    """Optimise `field` and `lights` in place on `surface` (which must carry photo colours)."""
    if surface.rgb is None or len(surface) == 0:
        raise ValueError("training needs surface pixels with photo colours")
    device = surface.positions.device
    shadow_grid = density if cfg.shadows else None
    key = config_key(replace(cfg, max_seconds=0.0), {"field": field.config, "photos": len(lights), "pixels": len(surface),
                           "shadows": shadow_grid is not None})
    optimizer = adam([{"params": list(field.parameters()), "lr": cfg.lr},
                      {"params": list(lights.parameters()), "lr": cfg.light_lr}], betas=(0.9, 0.99), eps=1e-15)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed)
    sphere = positivity_directions(cfg.positivity_directions, device)
    names = ("step", "seconds", "loss", "colour", "normal", "smoothness", "albedo_smoothness", "specular", "positivity",
             "response", "psnr")
    curves: dict[str, list[float]] = {k: [] for k in names}
    step, elapsed, resumed_from = 0, 0.0, 0

    state = load_checkpoint(checkpoint_path, key) if checkpoint_path is not None else None
    if state is not None:
        field.load_state_dict(state["field"])
        lights.load_state_dict(state["lights"])
        optimizer.load_state_dict(state["optimizer"])
        restore_generator(generator, state["generator"], cfg.seed, int(state["step"]))
        step, elapsed = int(state["step"]), float(state["seconds"])
        curves = {k: list(v) for k, v in state["curves"].items()}
        resumed_from = step
        log.info("resuming material training from step %d", step)

    def checkpoint() -> None:
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, {
                "config_key": key, "step": step, "seconds": elapsed, "field": field.state_dict(),
                "lights": lights.state_dict(), "optimizer": optimizer.state_dict(), "curves": curves,
                "generator": generator_state(generator)})

    bar = progress(total=cfg.steps) if progress is not None else None
    if bar is not None:
        bar.update(step)
    stopped_early = False
    n_smooth = max(1, int(cfg.batch_size * cfg.smoothness_fraction))
    with interruptible_training(field, bar, checkpoint):
        while step < cfg.steps:
            if cfg.max_seconds > 0 and elapsed >= cfg.max_seconds:
                stopped_early = True
                break
            t0 = time.perf_counter()
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * _lr_factor(step, cfg)
            field.encoding.set_active_levels(_active_levels(step, cfg, field.encoding.n_levels))
            index = torch.randint(0, len(surface), (cfg.batch_size,), generator=generator, device=device)
            material, shading, _ = render_surface(field, lights, surface, index, shadow_grid, cfg.shadow_steps)
            rendered = linear_to_srgb(lights.respond(shading.rgb, surface.image[index]))
            target = surface.rgb[index]
            terms = {
                "colour": colour_loss(rendered, target, cfg.colour_huber),
                "response": lights.log_gamma.square().mean() + lights.neutrality(),
                "normal": normal_loss(material.normal, surface.normals[index]),
                "specular": specular_regulariser(material.specular, material.glossiness),
                "positivity": light_positivity(lights.negative_radiance(sphere)),
            }
            sub = index[:n_smooth]
            jitter = cfg.smoothness_jitter * torch.randn(n_smooth, 3, generator=generator, device=device)
            moved = field(surface.positions[sub] + jitter, surface.normals[sub])
            terms["smoothness"] = normal_smoothness(material.normal[:n_smooth], moved.normal)
            terms["albedo_smoothness"] = albedo_smoothness(material.albedo[:n_smooth], moved.albedo)
            loss = (terms["colour"] + cfg.normal_weight * terms["normal"] + cfg.smoothness_weight * terms["smoothness"]
                    + cfg.albedo_smoothness_weight * terms["albedo_smoothness"]
                    + cfg.specular_weight * terms["specular"] + cfg.positivity_weight * terms["positivity"]
                    + cfg.response_weight * terms["response"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            elapsed += time.perf_counter() - t0

            if step % cfg.log_every == 0 or step == cfg.steps:
                train_psnr = psnr(terms["colour"].detach())
                values = {"step": step, "seconds": elapsed, "loss": float(loss.detach()), "psnr": train_psnr,
                          **{k: float(v.detach()) for k, v in terms.items()}}
                for name in names:
                    curves[name].append(values[name])
                if bar is not None:
                    bar.set_postfix(loss=f"{values['loss']:.4f}", psnr=f"{train_psnr:.2f}", refresh=False)
            if bar is not None:
                bar.update(1)
            if cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0:
                checkpoint()
    checkpoint()
    return TrainResult(curves, step, elapsed, resumed_from, stopped_early)
