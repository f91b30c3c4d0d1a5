"""What the photos saw of the density grid: per-photo depth maps, and the nodes no photo saw into.

    depths = depth_maps(density, aabb_min, aabb_max, frames, max_size=128)   # [(frame, [h, w])]
    hidden = hidden_from_cameras(density, aabb_min, aabb_max, depths)          # [R, R, R] bool

A NeRF's inside is often foam: low density with blobs above any threshold, behind a shell with
thin spots. Marching cubes would give it hundreds of thousands of inner faces. A node is empty
for sure only if some photo's ray passed through it before reaching the surface the photo
shows; every other node is inside the object (or in a cavity no photo can see), and is filled.
Depth = distance along the ray (world units, from the camera centre) at which the accumulated
opacity 1 - exp(-integral sigma) first reaches `opacity`; inf where it never does.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from stages.common.cameras import Frame
from stages.export.preview import pixel_rays


def _volume(density: np.ndarray) -> torch.Tensor:
    """[R, R, R] (axis 0 = x) -> [1, 1, X, Y, Z] float32 for grid_sample."""
    return torch.from_numpy(np.ascontiguousarray(density, dtype=np.float32))[None, None]


def _sample(volume: torch.Tensor, points: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Trilinear density at world points [N, 3] of a node grid spanning [lo, hi] exactly; 0 outside."""
    unit = (points - lo) / (hi - lo) * 2.0 - 1.0
    grid = unit[:, [2, 1, 0]].view(1, -1, 1, 1, 3)  # grid_sample's (W, H, D) = (z, y, x)
    return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True).view(-1)


def depth_maps(density: np.ndarray, aabb_min, aabb_max, frames: Sequence[Frame], max_size: int = 128,
               opacity: float = 0.3, steps: int | None = None) -> list[tuple[Frame, np.ndarray]]:
    """Per frame: (the frame shrunk to max_size, depth [h, w] float32 where opacity reaches `opacity`).

    Rays are clipped to the box and sampled at `steps` points (default 2 x the grid's size).
    """
    lo = torch.tensor(np.asarray(aabb_min, dtype=np.float32))
    hi = torch.tensor(np.asarray(aabb_max, dtype=np.float32))
    volume = _volume(density)
    steps = steps or 2 * max(density.shape)
    out = []
    for frame in frames:
        small = frame.shrunk(max_size)
        o, d = (torch.from_numpy(a.astype(np.float32)) for a in pixel_rays(small))
        with np.errstate(divide="ignore"):
            inv = 1.0 / d
        t0, t1 = (lo - o) * inv, (hi - o) * inv
        near = torch.minimum(t0, t1).amax(dim=1).clamp(min=0.0)
        far = torch.maximum(t0, t1).amin(dim=1)
        hit = far > near
        depth = torch.full((o.shape[0],), float("inf"))
        if hit.any():
            o, d, near, far = o[hit], d[hit], near[hit], far[hit]
            u = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
            t = near[:, None] + (far - near)[:, None] * u  # [M, S]
            sigma = _sample(volume, (o[:, None] + t[..., None] * d[:, None]).view(-1, 3), lo, hi).view(t.shape)
            optical = torch.cumsum(sigma * ((far - near) / steps)[:, None], dim=1)
            reached = optical >= -np.log(1.0 - opacity)
            first = torch.where(reached.any(dim=1), reached.float().argmax(dim=1), torch.full_like(near, -1).long())
            d_hit = torch.where(first >= 0, t.gather(1, first.clamp(min=0)[:, None])[:, 0], torch.tensor(float("inf")))
            depth[hit] = d_hit
        out.append((small, depth.view(small.h, small.w).numpy()))
    return out


def hidden_from_cameras(density: np.ndarray, aabb_min, aabb_max, depths: Sequence[tuple[Frame, np.ndarray]],
                        margin: float | None = None, stride: int = 2, chunk: int = 1 << 20) -> np.ndarray:
    """bool [R, R, R]: nodes inside some photo's frame that no photo's ray passed through
    before reaching its depth (nodes outside every frame are unknown, and not returned).

    depths: depth_maps' output. A node counts as seen if, in some photo, it projects inside the
    image and lies less than `margin` (default: 2 node spacings) behind that pixel's depth: the
    margin errs towards leaving nodes alone, since a coarse depth map's pixel mixes depths and
    filling in front of the true surface would fatten the object.
    Only every `stride`-th node along each axis is tested, the rest take their block's answer
    (it is a coarse notion anyway: the depth maps are much coarser than the lattice).
    """
    lo = np.asarray(aabb_min, dtype=np.float64)
    hi = np.asarray(aabb_max, dtype=np.float64)
    res = np.asarray(density.shape)
    spacing = (hi - lo) / (res - 1)
    margin = 2.0 * float(spacing.max()) if margin is None else margin
    axes = [torch.linspace(float(lo[a]), float(hi[a]), int(res[a]))[::stride] for a in range(3)]
    full_res, res = res, np.array([len(a) for a in axes])
    seen = torch.zeros(int(np.prod(res)), dtype=torch.bool)
    framed = torch.zeros_like(seen)
    for start in range(0, seen.numel(), chunk):
        idx = torch.arange(start, min(start + chunk, seen.numel()))
        i, j, k = idx // (res[1] * res[2]), (idx // res[2]) % res[1], idx % res[2]
        pts = torch.stack([axes[0][i], axes[1][j], axes[2][k]], dim=1)
        s, f = seen[idx], framed[idx]
        for frame, depth in depths:
            c2w = torch.from_numpy(np.asarray(frame.c2w, dtype=np.float32))
            rel = pts - c2w[:3, 3]
            cam = rel @ c2w[:3, :3]  # OpenGL camera axes: looks along -Z
            z = -cam[:, 2]
            front = z > 1e-6
            x, y = cam[:, 0] / z.clamp(min=1e-6), -cam[:, 1] / z.clamp(min=1e-6)  # OpenCV normalised
            r2 = x * x + y * y
            radial = 1.0 + frame.k1 * r2 + frame.k2 * r2 * r2
            xd = x * radial + 2 * frame.p1 * x * y + frame.p2 * (r2 + 2 * x * x)
            yd = y * radial + frame.p1 * (r2 + 2 * y * y) + 2 * frame.p2 * x * y
            px, py = frame.fl_x * xd + frame.cx, frame.fl_y * yd + frame.cy
            col, row = px.floor().long(), py.floor().long()
            inside = front & (col >= 0) & (col < frame.w) & (row >= 0) & (row < frame.h)
            d = torch.from_numpy(depth)[row.clamp(0, frame.h - 1), col.clamp(0, frame.w - 1)]
            s |= inside & (rel.norm(dim=1) < d + margin)
            f |= inside
        seen[idx], framed[idx] = s, f
    hidden = (framed & ~seen).view(*[int(r) for r in res]).numpy()
    for a in range(3):
        hidden = np.repeat(hidden, stride, axis=a)
    return hidden[:full_res[0], :full_res[1], :full_res[2]]
