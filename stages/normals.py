"""Stage 5, normals: surface normals from the density field by 3-D Sobel filtering.

Inputs   geometry/ (the trained field, occupancy grid and cameras.json, whose mask_path entries
         lead to the masks), poses/.
Method   (NeROIC) evaluate the density on grids over the object's box, tightening the box at
         each resolution to 1.2x the extent of the cells with density > `tighten_threshold`;
         correlate with the smoothed Sobel-like 5x5x5 kernel K(d) = -d/|d|^2 (one per axis),
         which gives a smoothed -grad: of an SDF field's signed distance (the normal is +grad d,
         normalised), or of a density field's remapped density s' = -(1/a) exp(-a s) (so the
         huge densities inside the object stop dominating; the normal is -grad s').
         Then for every pixel inside a photo's mask (grown by 2 px), the volume-rendered sum of
         grid normals along its ray, marched front to back until opaque, is the target the
         material stage fits.
Outputs  normals/normal_grid.npz   {normals [G,G,G,3] float16 world unit vectors (axis 0 = x),
                                    density [G,G,G] float32, aabb_min [3], aabb_max [3]}
         normals/views/<stem>.npz  {normal [H,W,3] float16 world, alpha [H,W] float16; zero
                                    outside the grown mask}
         normals/preview.png       rendered normals of a few photos beside the photos
Config   [normals] resolution, tighten_resolutions, tighten_threshold, remap_a, view_max_size
         (targets rendered at most this many pixels across, upsampled), preview_photos.
Cache    reruns when geometry, poses or the config change.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from stages.field.grids import evaluate_on_grid, sample_grid

MASK_MARGIN_PX = 2  # views are rendered inside the masks grown by this much


def sobel_kernels(radius: int = 2) -> Tensor:
    """[3, 1, k, k, k] correlation kernels K(d) = -d/|d|^2 for d in the (2r+1)^3 cube.

    Scaled so that correlating a linear function f(p) = g.p gives exactly -g: the kernel is
    then a smoothed estimate of the negative gradient in voxel units.
    """
    r = torch.arange(-radius, radius + 1, dtype=torch.float32)
    d = torch.stack(torch.meshgrid(r, r, r, indexing="ij"))  # [3, k, k, k]
    norm2 = (d ** 2).sum(0)
    norm2[radius, radius, radius] = 1.0
    kernels = -d / norm2
    # sum_d K_x(d) d_x = -sum_d d_x^2/|d|^2 =: -c, the same for every axis by symmetry
    c = (d[0] ** 2 / norm2).sum()
    return (kernels / c).unsqueeze(1)


def remap_density(sigma: Tensor, a: float) -> Tensor:
    """s' = -(1/a) exp(-a s): monotonic in s, flat deep inside the object."""
    return -torch.exp(-a * sigma) / a


def _negative_gradient(volume: Tensor, voxel_size: Tensor, radius: int) -> Tensor:
    """Smoothed -grad of a grid [X, Y, Z] -> [X, Y, Z, 3] per world unit (Sobel-like kernels,
    borders padded by replication)."""
    s = F.pad(volume[None, None], (radius,) * 6, mode="replicate")
    neg_grad = F.conv3d(s, sobel_kernels(radius).to(s), padding=0)[0]  # [3, X, Y, Z], voxel units
    return (neg_grad / voxel_size.to(neg_grad).view(3, 1, 1, 1)).permute(1, 2, 3, 0)


def sobel_normals(density: Tensor, voxel_size: Tensor, a: float, radius: int = 2) -> Tensor:
    """density [X, Y, Z] -> outward unit normals [X, Y, Z, 3] (world axes): -grad of the remapped
    density. voxel_size: [3] world size of a cell along x, y, z (the gradient is divided by it, so
    boxes that are not cubes still give true normals)."""
    return F.normalize(_negative_gradient(remap_density(density, a), voxel_size, radius), dim=-1, eps=1e-12)


def sdf_normals(sdf: Tensor, voxel_size: Tensor, radius: int = 2) -> Tensor:
    """Signed distance [X, Y, Z] (negative inside) -> outward unit normals [X, Y, Z, 3]: its
    gradient, by the same smoothed Sobel filter (a distance needs no remapping)."""
    return F.normalize(-_negative_gradient(sdf, voxel_size, radius), dim=-1, eps=1e-12)


def tighten_box(density: Tensor, aabb_min: Tensor, aabb_max: Tensor, threshold: float,
                margin: float = 1.2) -> tuple[Tensor, Tensor]:
    """The box around the cells with density > threshold, grown `margin` times about its centre
    (clipped to the old box). An empty grid keeps the old box."""
    occupied = (density > threshold).nonzero()
    if occupied.shape[0] == 0:
        return aabb_min, aabb_max
    res = torch.tensor(density.shape, device=aabb_min.device)
    cell = (aabb_max - aabb_min) / res
    lo = aabb_min + occupied.amin(0) * cell
    hi = aabb_min + (occupied.amax(0) + 1) * cell
    centre, half = (lo + hi) / 2, (hi - lo) / 2 * margin
    return torch.maximum(centre - half, aabb_min), torch.minimum(centre + half, aabb_max)


@torch.no_grad()
def render_grid_normals(density: Tensor, normals: Tensor, aabb_min: Tensor, aabb_max: Tensor,
                        grid, origins: Tensor, directions: Tensor, step_size: float,
                        chunk: int = 1 << 14) -> tuple[Tensor, Tensor, Tensor]:
    """Volume-render the normal grid along rays [R, 3]: (normal [R, 3] unit, alpha [R], depth [R]).

    Weights come from the density grid (the field sampled on it), marched through the occupancy
    grid and stopped where a ray turns opaque; each pixel's normal is the weight-sum of grid
    normals, renormalised.
    """
    from stages.field.rendering import render_front_to_back

    def density_and_normal(part):
        return (sample_grid(density[..., None], part.positions, aabb_min, aabb_max)[:, 0],
                sample_grid(normals, part.positions, aabb_min, aabb_max))

    outs = [], [], []
    for start in range(0, origins.shape[0], chunk):
        acc, n, depth = render_front_to_back(origins[start:start + chunk], directions[start:start + chunk], grid,
                                             step_size, density_and_normal)
        depth = depth / acc.clamp(min=1e-6)
        outs[0].append(F.normalize(n, dim=-1, eps=1e-12))
        outs[1].append(acc)
        outs[2].append(depth)
    return tuple(torch.cat(o) for o in outs)


def render_view_normals(density: Tensor, normals: Tensor, aabb_min: Tensor, aabb_max: Tensor, grid, frame,
                        mask, step_size: float, max_size: int = 0) -> tuple[Tensor, Tensor]:
    """A photo's per-pixel normal targets: (normal [H, W, 3], alpha [H, W]), zero outside its mask
    grown by MASK_MARGIN_PX. Rendered at most `max_size` pixels across (0: every pixel) and
    upsampled bilinearly: the normal grid is much coarser than a large photo's pixels."""
    import numpy as np
    from scipy.ndimage import binary_dilation

    from stages.common.images import resize
    from stages.field.rays import Cameras

    device = density.device
    h, w = frame.h, frame.w
    inside = binary_dilation(mask, iterations=MASK_MARGIN_PX)
    small, small_inside = frame.shrunk(max_size), inside
    if small is not frame:
        small_inside = binary_dilation(resize(inside.astype(np.uint8) * 255, (small.w, small.h)) > 0, iterations=1)
    py, px = (torch.from_numpy(a).to(device) for a in np.nonzero(small_inside))
    origins, dirs = Cameras.from_frames([small]).to(device).rays(torch.zeros_like(px), px, py)
    normal_px, alpha_px, _ = render_grid_normals(density, normals, aabb_min, aabb_max, grid, origins, dirs, step_size)
    normal = torch.zeros(small.h, small.w, 3, device=device)
    alpha = torch.zeros(small.h, small.w, device=device)
    normal[py, px], alpha[py, px] = normal_px, alpha_px
    if small is not frame:
        both = F.interpolate(torch.cat([normal, alpha[..., None]], -1).permute(2, 0, 1)[None], size=(h, w),
                             mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
        normal, alpha = F.normalize(both[..., :3], dim=-1, eps=1e-12), both[..., 3]
    keep = torch.from_numpy(inside).to(device)
    return normal * keep[..., None], alpha * keep


def normal_to_rgb(normal: Tensor, alpha: Tensor) -> Tensor:
    """World normals [H, W, 3] and alpha [H, W] -> uint8 [H, W, 3] ((n+1)/2 on grey background)."""
    rgb = (normal + 1) / 2 * alpha[..., None] + 0.5 * (1 - alpha[..., None])
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8)


def run(ctx):
    import json

    import numpy as np

    from stages.errors import NeroicError
    from stages.common.images import read_rgb, write_png
    from stages.common.sheets import contact_sheet
    from stages.field.trained import frame_masks, load_trained_field

    cfg, device = ctx.config, ctx.device
    trained = load_trained_field(ctx.input("geometry"), device)
    field, grid = trained.field, trained.grid

    def density_fn(points: Tensor) -> Tensor:
        return torch.where(grid.lookup(points), field.density(points)[0], torch.zeros((), device=points.device))

    lo, hi = grid.occupied_aabb()
    for res in cfg["tighten_resolutions"]:
        lo, hi = tighten_box(evaluate_on_grid(density_fn, lo, hi, res), lo, hi, cfg["tighten_threshold"])
    res = cfg["resolution"]
    density = evaluate_on_grid(density_fn, lo, hi, res)
    if not bool((density > cfg["tighten_threshold"]).any()):
        raise NeroicError("the geometry field is empty: no density above the threshold anywhere",
                          hint="check geometry/heldout/*.png; rerun geometry with more steps")
    if field.is_sdf:
        normals = sdf_normals(evaluate_on_grid(lambda p: field.sdf(p)[0], lo, hi, res), (hi - lo) / res)
    else:
        normals = sobel_normals(density, (hi - lo) / res, cfg["remap_a"])
    np.savez_compressed(ctx.out / "normal_grid.npz", normals=normals.cpu().numpy().astype(np.float16),
                        density=density.cpu().numpy(), aabb_min=lo.cpu().numpy(), aabb_max=hi.cpu().numpy())

    (ctx.out / "views").mkdir()
    ingest = ctx.input("ingest")
    tiles, labels = [], []
    masks = frame_masks(ctx.input("geometry"), trained.frames)
    for view in ctx.progress(range(len(trained.frames)), desc="rendering normals", unit="photo"):
        frame = trained.frames[view]
        normal, alpha = render_view_normals(density, normals, lo, hi, grid, frame, masks[view], trained.step_size,
                                            int(cfg["view_max_size"]))
        stem = frame.stem
        np.savez_compressed(ctx.out / "views" / f"{stem}.npz", normal=normal.cpu().numpy().astype(np.float16),
                            alpha=alpha.cpu().numpy().astype(np.float16))
        if len(tiles) < 2 * cfg["preview_photos"]:
            tiles += [read_rgb(ingest / "images" / f"{stem}.png"), normal_to_rgb(normal, alpha).cpu().numpy()]
            labels += [stem, f"{stem} normals"]
    write_png(ctx.out / "preview.png", contact_sheet(tiles, labels, tile_height=200, columns=4))
    ctx.log.info("normal grid %d^3 over [%s]..[%s]", res, lo.tolist(), hi.tolist())
    (ctx.out / "normals.json").write_text(json.dumps(
        {"resolution": res, "aabb_min": lo.tolist(), "aabb_max": hi.tolist(), "views": len(trained.frames)}))
    return {"figure": f"{res}^3 normal grid, {len(trained.frames)} views", "resolution": res}
