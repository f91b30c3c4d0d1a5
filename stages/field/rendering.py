"""Volume rendering over packed samples, and rendering rays/images from a trained field.

    T = exclusive_transmittance(sigma * deltas, samples.ray_idx, n_rays)   # [S]
    w = T * (1 - exp(-sigma * deltas))                                     # per-sample weights
    rgb = composite(w, colours, samples.ray_idx, n_rays)                   # [R, 3]

Transmittance is a cumulative sum of optical depth within each ray's segment, computed for all
rays at once: one global cumsum (float64, so a long batch loses no precision) minus its value at
the segment start. NeRF-W composition: static and transient densities share the transmittance,
each contributes its own weights; `render_rays` returns the static image (what held-out views and
later stages use) and, when asked, the transient part.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from stages.field.nerfw_field import NerfWField
from stages.field.occupancy import OccupancyGrid
from stages.field.sampling import PackedSamples, march_rays, ray_aabb


def exclusive_transmittance(optical_depth: Tensor, ray_idx: Tensor, n_rays: int) -> Tensor:
    """optical_depth [S] (sigma*delta) of packed samples sorted by ray -> T [S] before each sample."""
    if optical_depth.shape[0] == 0:
        return optical_depth
    csum = torch.cumsum(optical_depth.double(), dim=0)
    exclusive = csum - optical_depth.double()
    counts = torch.bincount(ray_idx, minlength=n_rays)
    starts = (torch.cumsum(counts, 0) - counts).clamp(max=optical_depth.shape[0] - 1)
    return torch.exp(-(exclusive - exclusive.index_select(0, starts.index_select(0, ray_idx)))).to(optical_depth.dtype)


def composite(weights: Tensor, values: Tensor, ray_idx: Tensor, n_rays: int) -> Tensor:
    """Sum weights [S] * values [S, C] (or [S]) per ray -> [R, C] (or [R])."""
    contrib = weights[:, None] * values if values.dim() == 2 else weights * values
    out = torch.zeros((n_rays,) + tuple(values.shape[1:]), dtype=contrib.dtype, device=contrib.device)
    return out.index_add_(0, ray_idx, contrib)


def nerfw_weights(sigma: Tensor, deltas: Tensor, ray_idx: Tensor, n_rays: int,
                  sigma_transient: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Static weights [S] and transient weights [S] (or None) sharing one transmittance."""
    total = sigma if sigma_transient is None else sigma + sigma_transient
    trans = exclusive_transmittance(total * deltas, ray_idx, n_rays)
    w_static = trans * (1.0 - torch.exp(-sigma * deltas))
    w_transient = None if sigma_transient is None else trans * (1.0 - torch.exp(-sigma_transient * deltas))
    return w_static, w_transient


def render_front_to_back(origins: Tensor, directions: Tensor, grid: OccupancyGrid, step_size: float,
                         evaluate: Callable[[PackedSamples], tuple[Tensor, Tensor]], steps_per_pass: int = 24,
                         opaque: float = 0.999) -> tuple[Tensor, Tensor, Tensor]:
    """Volume rendering of rays [R, 3] that marches `steps_per_pass` steps at a time, front to back,
    and drops each ray once it is opaque: inference on an opaque object then costs a few steps
    per ray instead of a march through its whole inside (and the empty space behind it).

    evaluate(samples) -> (sigma [S], values [S, C]). Returns per ray (acc [R], sum of w * values
    [R, C], sum of w * t [R]): one full march's result, up to the last `1 - opaque` of light.
    """
    n, device = origins.shape[0], origins.device
    lo, hi = grid.occupied_aabb()
    t_near, t_far = ray_aabb(origins, directions, lo, hi)
    acc, depth, summed = torch.zeros(n, device=device), torch.zeros(n, device=device), None
    active = (t_far > t_near).nonzero()[:, 0]
    start = t_near.clone()
    while True:
        end = start[active] + steps_per_pass * step_size
        part = march_rays(origins[active], directions[active], grid, step_size, jitter=False,
                          t_min=start[active], t_max=end)
        sigma, values = evaluate(part)
        if summed is None:
            summed = torch.zeros((n,) + tuple(values.shape[1:]), dtype=values.dtype, device=device)
        if active.numel() == 0:
            break
        w, _ = nerfw_weights(sigma, part.deltas, part.ray_idx, part.n_rays)  # as if the ray began here
        w = w * (1.0 - acc[active])[part.ray_idx]
        rays = active[part.ray_idx]
        acc.index_add_(0, rays, w)
        depth.index_add_(0, rays, w * part.t)
        summed.index_add_(0, rays, w[:, None] * values if values.dim() == 2 else w * values)
        start[active] = end
        active = active[(acc[active] < opaque) & (end < t_far[active])]
    return acc, summed, depth


def render_rays(field: NerfWField, grid: OccupancyGrid, origins: Tensor, directions: Tensor,
                appearance: Tensor, step_size: float, transient_codes: Tensor | None = None,
                jitter: bool = False, t_min: Tensor | None = None, t_max: Tensor | None = None,
                cull: bool = False, min_weight: float = 1e-4, opaque_transmittance: float = 1e-3) -> dict[str, Tensor]:
    """Render rays [R, 3] with per-ray appearance codes [R, A] (and transient codes [R, T] or None).

    Returns rgb [R, 3] (sRGB, composited on black), acc [R] static opacity, depth [R] (sum of
    weight x distance; divide by acc for the expected hit distance), t_opaque [R] (distance where
    the transmittance fell below `opaque_transmittance`, inf if it never did), n_samples, positions
    [S, 3] (where the field was evaluated); with
    transient codes also rgb_transient [R, 3], acc_transient [R], beta [R] and sigma_transient [S].
    Colour is evaluated only where a sample's weight exceeds `min_weight`: the rest cannot change
    a pixel visibly. With `cull`, a cheap
    density pass without gradients first drops samples behind opaque matter (most samples of a
    ray through a solid object), so the pass with gradients evaluates far fewer.
    """
    samples = march_rays(origins, directions, grid, step_size, jitter=jitter, t_min=t_min, t_max=t_max)
    if cull:
        with torch.no_grad():
            sigma_nograd, _ = field.density(samples.positions)
            trans = exclusive_transmittance(sigma_nograd * samples.deltas, samples.ray_idx, samples.n_rays)
            samples = samples.select(trans > opaque_transmittance * 0.1)
    ray_idx, n = samples.ray_idx, origins.shape[0]
    sigma, geo = field.density(samples.positions)
    out: dict[str, Tensor] = {}
    sigma_t = None
    if transient_codes is not None:
        sigma_t, rgb_t, beta_t = field.transient(geo, transient_codes, ray_idx)
    w, w_t = nerfw_weights(sigma, samples.deltas, ray_idx, n, sigma_t)
    with torch.no_grad():
        trans_after = exclusive_transmittance(sigma * samples.deltas, ray_idx, n) * torch.exp(-sigma * samples.deltas)
        opaque = trans_after < opaque_transmittance
        out["t_opaque"] = torch.full((n,), float("inf"), device=origins.device).scatter_reduce_(
            0, ray_idx[opaque], samples.t[opaque], reduce="amin")
    visible = (w.detach() > min_weight).nonzero()[:, 0]
    vis_ray = ray_idx[visible]
    normals = field.surface_normals(samples.positions[visible], 0.5 * step_size) if field.is_sdf else None
    rgb = field.colour(geo[visible], directions, appearance, vis_ray, normals)
    out["rgb"] = composite(w[visible], rgb, vis_ray, n)
    out["acc"] = composite(w, torch.ones_like(w), ray_idx, n)
    out["depth"] = composite(w, samples.t, ray_idx, n)
    out["n_samples"] = torch.tensor(samples.ray_idx.shape[0])
    out["positions"] = samples.positions
    if w_t is not None:
        out["rgb_transient"] = composite(w_t, rgb_t, ray_idx, n)
        out["acc_transient"] = composite(w_t, torch.ones_like(w_t), ray_idx, n)
        out["beta"] = composite(w_t, beta_t, ray_idx, n) + field.beta_min
        out["sigma_transient"] = sigma_t
    return out


@torch.no_grad()
def render_image(field: NerfWField, grid: OccupancyGrid, origins: Tensor, directions: Tensor,
                 appearance: Tensor, step_size: float, chunk: int = 1 << 14, segment_steps: int = 24,
                 min_transmittance: float = 1e-4, min_weight: float = 1e-3) -> dict[str, Tensor]:
    """Static rendering of many rays [R, 3] (an image, flattened) with one appearance code [A].

    Rays are marched in windows of `segment_steps` steps; a ray stops once its transmittance falls
    below `min_transmittance` (early termination), so a solid object's inside is never evaluated.
    Windows compose exactly: out += T * window_out, T *= 1 - window_acc. Colour (and an SDF's
    normals) only where a sample's weight exceeds `min_weight`: on the skull 1e-3 renders 16 %
    faster than training's 1e-4 and within 70 dB of it.
    """
    n, device = origins.shape[0], origins.device
    lo, hi = grid.occupied_aabb()
    t_near, t_far = ray_aabb(origins, directions, lo, hi)
    rgb = torch.zeros(n, 3, device=device)
    acc = torch.zeros(n, device=device)
    depth = torch.zeros(n, device=device)
    trans = torch.ones(n, device=device)
    active = (t_far > t_near).nonzero()[:, 0]
    t_start = t_near.clone()
    window = segment_steps * step_size
    while active.shape[0] > 0:
        for start in range(0, active.shape[0], chunk):
            rays = active[start:start + chunk]
            res = render_rays(field, grid, origins[rays], directions[rays], appearance.expand(rays.shape[0], -1),
                              step_size, t_min=t_start[rays], t_max=t_start[rays] + window, min_weight=min_weight)
            t_ray = trans[rays]
            rgb[rays] += t_ray[:, None] * res["rgb"]
            acc[rays] += t_ray * res["acc"]
            depth[rays] += t_ray * res["depth"]
            trans[rays] = t_ray * (1.0 - res["acc"])
        t_start[active] += window
        active = active[(trans[active] > min_transmittance) & (t_start[active] < t_far[active])]
    return {"rgb": rgb, "acc": acc, "depth": depth}
