"""The training loop of the geometry stage: masked photos + cameras -> a trained NeRF-W field.

    pixels = TrainingPixels.from_photos(images, masks, band_px=8)
    cfg = from_section(TrainConfig, config["geometry"], step_size=0.01)
    result = train_field(field, grid, cameras, pixels, cfg, checkpoint_path=...)

Each step draws rays mostly from object pixels plus a band of background pixels just outside the
masks (background far from the object already has no samples: the visual hull removed it). The
background is not learned: each ray gets a random background colour, the target is the photo
composited on that colour through its mask, and the silhouette loss pulls the opacity to the mask.
The number of rays adapts so every step evaluates about `target_samples` samples (both CPU cores
busy, memory bounded). Samples are spent near the surface: the march step starts coarse and
shrinks, samples behind opaque matter are culled by a density pass without gradients, and each
pixel remembers where its ray became opaque so the next visit stops a few steps after that.
Checkpoints are plain tensors and dicts, saved atomically and loaded with
`torch.load(weights_only=True)`; a run resumes from the last one if its settings match.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import binary_dilation
from torch import Tensor

from stages.field.checkpoints import (config_key, generator_state, load_checkpoint, restore_generator,
                                      save_checkpoint)
from stages.field.losses import (camera_refinement_loss, eikonal_loss, nerfw_colour_loss, normal_difference, psnr,
                                 silhouette_loss, transient_density_loss)
from stages.field.nerfw_field import NerfWField
from stages.field.occupancy import OccupancyGrid
from stages.field.optim import adam
from stages.field.rays import CameraRefinement, Cameras
from stages.field.rendering import render_image, render_rays

log = logging.getLogger("neroic")


@dataclass
class TrainConfig:
    """Optimisation settings. Fields named like [geometry] config keys take their values (and
    defaults) from the config: build with `from_section(TrainConfig, config["geometry"], step_size=...)`."""

    steps: int
    target_samples: int  # samples per step (after empty-space skipping)
    lr: float
    lr_final_factor: float  # exponential decay to lr * this at the last step
    refine_cameras: bool
    camera_lr: float
    camera_weight: float
    silhouette_weight: float
    transient_weight: float
    appearance_weight: float  # L2 on the per-photo codes: keeps the neutral (mean) code typical
    eikonal_weight: float  # (|grad d| - 1)^2 of an SDF field
    eikonal_points: int
    curvature_weight: float  # an SDF's normals a march step apart should agree
    background_fraction: float
    coarse_step_factor: float  # the march step starts this many times larger ...
    coarse_fraction: float  # ... and shrinks geometrically to step_size over this part of training
    coarse_to_fine: float  # share of training over which the hash levels switch on, coarse first
    sharpen_surface: float  # share of training over which an SDF's surface width narrows to its minimum
    occupancy_update_every: int
    occupancy_warmup: int  # steps before the field may empty hull cells
    checkpoint_every: int
    max_seconds: float  # training time budget (0: none); schedules then follow max(step, time) progress
    seed: int
    step_size: float  # march step, world units (final): derived from the box, not a config key
    initial_rays: int = 4096
    max_rays: int = 1 << 15
    occupancy_update_fraction: float = 0.25  # of the hull's cells re-evaluated per update
    opaque_margin_steps: float = 8.0  # a ray is marched to where it became opaque last time + this many steps
    log_every: int = 10


@dataclass
class TrainResult:
    curves: dict[str, list[float]]
    steps_done: int
    seconds: float
    resumed_from: int = 0
    stopped_early: bool = False


@dataclass
class TrainingPixels:
    """Drawable pixels of the training photos: object pixels first, then the background band.

    rgb [K, 3] uint8 sRGB, mask [K] uint8 (0/255), image [K], px [K], py [K] int64 pixel indices,
    t_opaque [K]: distance along the pixel's ray where it became opaque when last rendered (inf:
    not yet), so the next visit need not march through the inside of the object.
    """

    rgb: Tensor
    mask: Tensor
    image: Tensor
    px: Tensor
    py: Tensor
    n_object: int
    t_opaque: Tensor | None = None

    def __post_init__(self):
        if self.t_opaque is None:
            self.t_opaque = torch.full((self.rgb.shape[0],), float("inf"), device=self.rgb.device)

    @property
    def n_band(self) -> int:
        return self.rgb.shape[0] - self.n_object

    @staticmethod
    def from_photos(images: list[np.ndarray], masks: list[np.ndarray], band_px: int = 8) -> "TrainingPixels":
        """images: [H, W, 3] uint8 sRGB each; masks: [H, W] bool each (True = object)."""
        groups: dict[str, list[list[Tensor]]] = {"obj": [], "band": []}
        for i, (img, m) in enumerate(zip(images, masks)):
            band = binary_dilation(m, iterations=band_px) & ~m if band_px > 0 else np.zeros_like(m)
            for key, sel in (("obj", m), ("band", band)):
                py, px = np.nonzero(sel)
                groups[key].append([torch.from_numpy(img[py, px]), torch.from_numpy(m[py, px].astype(np.uint8) * 255),
                                    torch.full((len(px),), i, dtype=torch.long),
                                    torch.from_numpy(px.astype(np.int64)), torch.from_numpy(py.astype(np.int64))])
        cols = [torch.cat([g[c] for key in ("obj", "band") for g in groups[key]]) for c in range(5)]
        n_object = sum(len(g[2]) for g in groups["obj"])
        return TrainingPixels(*cols, n_object=n_object)

    def to(self, device: str | torch.device) -> "TrainingPixels":
        return TrainingPixels(self.rgb.to(device), self.mask.to(device), self.image.to(device),
                              self.px.to(device), self.py.to(device), self.n_object, self.t_opaque.to(device))

    def draw(self, n_rays: int, background_fraction: float, generator: torch.Generator) -> Tensor:
        """Indices [n_rays] of a random batch: about (1 - background_fraction) object pixels."""
        n_band = min(int(round(n_rays * background_fraction)), n_rays) if self.n_band > 0 else 0
        device = self.rgb.device
        obj = torch.randint(0, self.n_object, (n_rays - n_band,), generator=generator, device=device)
        band = self.n_object + torch.randint(0, max(self.n_band, 1), (n_band,), generator=generator, device=device)
        return torch.cat((obj, band))


def eikonal_points(sample_positions: Tensor, grid: OccupancyGrid, n: int,
                   generator: torch.Generator) -> tuple[Tensor, int]:
    """Where the eikonal term looks, [n, 3] world: three quarters from this step's ray samples
    (near the surface, where the distance matters most; their count is returned too), a quarter
    anywhere in the grid's box (so the field stays a distance everywhere, and no spurious surface
    hides in empty space)."""
    device = sample_positions.device
    n_box = n // 4
    n_near = min(n - n_box, sample_positions.shape[0])
    pick = torch.randint(0, max(sample_positions.shape[0], 1), (n_near,), generator=generator, device=device)
    anywhere = torch.rand(n_box, 3, generator=generator, device=device)
    anywhere = grid.aabb_min + anywhere * (grid.aabb_max - grid.aabb_min)
    return torch.cat([sample_positions[pick].detach(), anywhere]), n_near


def training_progress(step: int, seconds: float, cfg: TrainConfig) -> float:
    """How far training is, 0..1: by steps, or by time when a time budget is set and runs out
    first, so the learning-rate decay and the coarse-to-fine march still complete in time."""
    progress = step / max(cfg.steps, 1)
    if cfg.max_seconds > 0:
        progress = max(progress, seconds / cfg.max_seconds)
    return min(progress, 1.0)


def active_levels(progress: float, cfg: TrainConfig, n_levels: int, start: int = 4) -> float:
    """Hash levels in use: from `start` to all of them over the first `coarse_to_fine` of training."""
    if cfg.coarse_to_fine <= 0:
        return float(n_levels)
    return start + min(progress / cfg.coarse_to_fine, 1.0) * (n_levels - start)


def geometric_schedule(progress: float, share: float, start: float, end: float) -> float:
    """`start` moving geometrically to `end` over the first `share` of training, then `end`."""
    return start * (end / start) ** min(progress / max(share, 1e-6), 1.0)


def march_step(progress: float, cfg: TrainConfig) -> float:
    """Coarse to fine: early on the field is a blurry fog and fine steps only cost samples."""
    return geometric_schedule(progress, cfg.coarse_fraction, cfg.step_size * cfg.coarse_step_factor, cfg.step_size)


def surface_width_bound(progress: float, cfg: TrainConfig, start: float, end: float) -> float:
    """The widest an SDF's surface may be at this point of training: `start` narrowing geometrically
    to `end` over the first `sharpen_surface` of training (0: no bound but `start`). Left to itself
    the width narrows only as fast as the photos push it, and a short run ends with a wide one."""
    if cfg.sharpen_surface <= 0:
        return start
    return geometric_schedule(progress, cfg.sharpen_surface, start, end)


@contextmanager
def interruptible_training(field, bar, checkpoint: Callable[[], None]) -> Iterator[None]:
    """Around a training loop: Ctrl-C saves a checkpoint before it goes on up (the stage resumes
    from it); whatever happens, every hash level is active again and the progress bar is closed."""
    try:
        yield
    except KeyboardInterrupt:
        checkpoint()
        raise
    finally:
        field.encoding.set_active_levels(float(field.encoding.n_levels))
        if bar is not None:
            bar.close()


def train_field(field: NerfWField, grid: OccupancyGrid, cameras: Cameras, pixels: TrainingPixels,
                cfg: TrainConfig, checkpoint_path: Path | None = None,
                refinement: CameraRefinement | None = None, progress: Callable | None = None,
                evaluate: Callable[[int], dict] | None = None, eval_every: int = 0,
                key_extra: dict | None = None) -> TrainResult:
    """Optimise `field` (and `refinement`, if given) in place; `grid` is refined as training goes.

    cameras: the training cameras (index = image index of `pixels` = embedding index).
    evaluate(step) -> {"heldout_psnr": ...} is called every `eval_every` steps and at the end;
    its time is not counted in the training clock. progress(total=...) -> a tqdm-like bar.
    """
    device = field.aabb_min.device
    key = config_key(cfg, {"field": field.config, "grid": grid.resolution, **(key_extra or {})})
    params = [{"params": list(field.parameters()), "lr": cfg.lr}]
    if refinement is not None and cfg.refine_cameras:
        params.append({"params": list(refinement.parameters()), "lr": cfg.camera_lr})
    optimizer = adam(params, betas=(0.9, 0.99), eps=1e-15)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    width_range = (field.initial_surface_width, field.min_surface_width) if field.is_sdf else None
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    curves: dict[str, list[float]] = {k: [] for k in ("step", "seconds", "loss", "psnr", "rays", "samples",
                                                       "occupied")}
    curves.update(eval_step=[], eval_seconds=[], heldout_psnr=[])
    step, elapsed, n_rays, occupied = 0, 0.0, float(cfg.initial_rays), 1.0
    state = load_checkpoint(checkpoint_path, key) if checkpoint_path is not None else None
    resumed_from = 0
    if state is not None:
        field.load_state_dict(state["field"])
        optimizer.load_state_dict(state["optimizer"])
        if refinement is not None and state.get("refinement") is not None:
            refinement.load_state_dict(state["refinement"])
        restored = OccupancyGrid.from_state_dict(state["occupancy"]).to(device)
        grid.occupied, grid.density = restored.occupied, restored.density
        step, elapsed, n_rays = int(state["step"]), float(state["seconds"]), float(state["n_rays"])
        curves = {k: list(v) for k, v in state["curves"].items()}
        restore_generator(generator, state["generator"], cfg.seed, step)
        if state["t_opaque"].shape == pixels.t_opaque.shape:
            pixels.t_opaque = state["t_opaque"].to(device)
        resumed_from = step
        log.info("resuming geometry training from step %d", step)

    def checkpoint() -> None:
        if checkpoint_path is None:
            return
        save_checkpoint(checkpoint_path, {
            "config_key": key, "step": step, "seconds": elapsed, "n_rays": n_rays,
            "field": field.state_dict(), "optimizer": optimizer.state_dict(),
            "refinement": refinement.state_dict() if refinement is not None else None,
            "occupancy": grid.state_dict(), "curves": curves, "generator": generator_state(generator),
            "t_opaque": pixels.t_opaque})

    def run_eval() -> None:
        if evaluate is None:
            return
        metrics = evaluate(step)
        curves["eval_step"].append(step)
        curves["eval_seconds"].append(elapsed)
        curves["heldout_psnr"].append(metrics["heldout_psnr"])

    bar = progress(total=cfg.steps) if progress is not None else None
    if bar is not None:
        bar.update(step)
    use_refinement = refinement is not None and cfg.refine_cameras
    stopped_early = False
    with interruptible_training(field, bar, checkpoint):
        while step < cfg.steps:
            progress = training_progress(step, elapsed, cfg)
            if progress >= 1.0:
                stopped_early = True
                break
            t0 = time.perf_counter()
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * cfg.lr_final_factor ** progress
            field.encoding.set_active_levels(active_levels(progress, cfg, field.encoding.n_levels))
            batch = pixels.draw(int(n_rays), cfg.background_fraction, generator)
            image_idx = pixels.image[batch]
            origins, dirs = cameras.rays(image_idx, pixels.px[batch], pixels.py[batch],
                                         refinement if use_refinement else None)
            mask = pixels.mask[batch].float() / 255.0
            background = torch.rand(batch.shape[0], 3, generator=generator, device=device)
            target = pixels.rgb[batch].float() / 255.0 * mask[:, None] + background * (1.0 - mask[:, None])
            step_size = march_step(progress, cfg)
            out = render_rays(field, grid, origins, dirs, field.appearance(image_idx), step_size,
                              transient_codes=field.transient_codes(image_idx) if field.has_transient else None,
                              jitter=True, t_max=pixels.t_opaque[batch] + cfg.opaque_margin_steps * step_size,
                              cull=step >= cfg.occupancy_warmup)
            # a pixel drawn twice keeps the farther of its two distances: a rule, not whichever write
            # lands last (with threads that order varies, and so would the run)
            pixels.t_opaque.scatter_reduce_(0, batch, out["t_opaque"], "amax", include_self=False)
            acc_total = out["acc"] + (out["acc_transient"] if field.has_transient else 0.0)
            rgb = out["rgb"] + (out["rgb_transient"] if field.has_transient else 0.0)
            rgb = rgb + background * (1.0 - acc_total)[:, None]
            loss = nerfw_colour_loss(rgb, target, out.get("beta"))
            if cfg.appearance_weight > 0:
                loss = loss + cfg.appearance_weight * field.appearance.weight.square().sum(-1).mean()
            loss = loss + cfg.silhouette_weight * silhouette_loss(out["acc"], mask)
            if field.has_transient:
                loss = loss + cfg.transient_weight * transient_density_loss(out["sigma_transient"])
            if field.is_sdf and (cfg.eikonal_weight > 0 or cfg.curvature_weight > 0):
                points, n_near = eikonal_points(out["positions"], grid, cfg.eikonal_points, generator)
                gradients = field.sdf_gradient(points, 0.5 * step_size)
                loss = loss + cfg.eikonal_weight * eikonal_loss(gradients)
                if cfg.curvature_weight > 0:  # normals a step apart should agree where the photos allow
                    nearby = points[:n_near] + step_size * torch.nn.functional.normalize(
                        torch.randn(n_near, 3, generator=generator, device=device), dim=-1)
                    loss = loss + cfg.curvature_weight * normal_difference(
                        gradients[:n_near], field.sdf_gradient(nearby, 0.5 * step_size))
            if use_refinement:
                loss = loss + cfg.camera_weight * camera_refinement_loss(
                    refinement.rotation, refinement.translation, refinement.log_focal)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if field.is_sdf:
                field.bound_surface_width(surface_width_bound(progress, cfg, *width_range))
            step += 1

            n_samples = int(out["n_samples"])
            n_rays = min(max(n_rays * (0.5 + 0.5 * cfg.target_samples / max(n_samples, 1)), 256.0), cfg.max_rays)
            if step >= cfg.occupancy_warmup and step % cfg.occupancy_update_every == 0:
                occupied = grid.update(lambda p: field.density(p)[0], step_size,
                                       fraction=cfg.occupancy_update_fraction)
            elapsed += time.perf_counter() - t0

            if step % cfg.log_every == 0 or step == cfg.steps:
                loss_value = float(loss.detach())
                with torch.no_grad():
                    fg = mask > 0.5
                    train_psnr = psnr(((rgb[fg] - target[fg]) ** 2).mean()) if bool(fg.any()) else float("nan")
                for name, value in (("step", step), ("seconds", elapsed), ("loss", loss_value),
                                    ("psnr", train_psnr), ("rays", batch.shape[0]), ("samples", n_samples),
                                    ("occupied", occupied)):
                    curves[name].append(value)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_value:.4f}", psnr=f"{train_psnr:.2f}", rays=batch.shape[0],
                                    refresh=False)
            if bar is not None:
                bar.update(1)
            if eval_every > 0 and step % eval_every == 0 and step < cfg.steps:
                run_eval()
            if cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0:
                checkpoint()
    run_eval()
    checkpoint()
    return TrainResult(curves, step, elapsed, resumed_from, stopped_early)


@torch.no_grad()
def render_view(field: NerfWField, grid: OccupancyGrid, cameras: Cameras, view: int, appearance: Tensor,
                step_size: float) -> dict[str, Tensor]:
    """Render camera `view` whole: rgb [H, W, 3] (sRGB on black), acc [H, W], depth [H, W]."""
    w, h = (int(v) for v in cameras.size[view].tolist())
    device = cameras.c2w.device
    py, px = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    idx = torch.full((h * w,), view, dtype=torch.long, device=device)
    origins, dirs = cameras.rays(idx, px.reshape(-1), py.reshape(-1))
    out = render_image(field, grid, origins, dirs, appearance, step_size)
    return {"rgb": out["rgb"].view(h, w, 3).clamp(0, 1), "acc": out["acc"].view(h, w),
            "depth": out["depth"].view(h, w)}


def image_psnr(rendered: Tensor, photo: Tensor, mask: Tensor, coverage: Tensor | None = None) -> tuple[float, float]:
    """(PSNR inside the mask, PSNR of the whole image on black): rendered/photo [H, W, 3] in [0, 1]
    (rendered composited on black), mask [H, W] bool. The photo is composited on black by its
    coverage [H, W] in [0, 1] (a soft mask: photo colours at the object's edge are only partly
    the object's), or by the mask when no coverage is given."""
    target = photo * (mask if coverage is None else coverage)[..., None]
    err = (rendered - target).square().mean(-1)
    inside = psnr(err[mask].mean()) if bool(mask.any()) else float("nan")
    return inside, psnr(err.mean())
