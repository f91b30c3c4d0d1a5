"""Masks checked against each other: a photo's object cannot reach outside what the other photos'
visual hull allows.

    surface = hull_surface_cells(hull)                                       # [G, G, G] bool
    silhouette = hull_silhouette(surface, aabb_min, aabb_max, cameras, view)  # [H, W] bool
    repaired, verdicts = agree_masks(masks, silhouettes, editable)

Background removal on a cluttered or bright background often keeps a piece of it (a patch of
sky, a railing) attached to the object. The visual hull carved with a tolerance of a few
disagreeing photos does not contain such a piece (the other photos see empty space there), so its
silhouette in that photo shows what to cut away. Only extra pixels are removed: a hole in a mask
cannot be filled from the hull (the hull is larger than the object). A mask that, once cut,
still overlaps the hull's silhouette far less than the other photos' do is no repair job: that
photo shows something else (another object, an occluder, a wrong camera) and is left out of
training.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import binary_dilation, distance_transform_edt
from torch import Tensor

from stages.field.rays import Cameras

MARGIN_PX = 3  # pixels kept beyond the hull's silhouette (pose and mask edge slack)
MIN_CHANGE = 0.005  # a repair must remove at least this fraction of the mask to count
# A mask whose overlap (IoU) with the hull's silhouette, once cut to it, falls below this share of
# the median photo's is no repair job. Judged after the cut, not by how much is cut: rembg kept
# ethiopian_head's white turntable in half the photos (30-39 % of those masks cut), and the
# object left after the cut agreed with the others as well as any.
MIN_RELATIVE_IOU = 0.5


@dataclass
class MaskVerdict:
    """What the hull said of one photo's mask: "agrees", "repaired" (`removed` of its pixels cut)
    or "dropped" (the photo disagrees wholesale; `why` says how); `iou` of mask and silhouette."""

    status: str
    removed: float = 0.0
    iou: float = 1.0
    why: str = ""


def hull_surface_cells(hull: Tensor) -> Tensor:
    """[G, G, G] bool: the hull's cells with an empty neighbour (of 26) or on the grid's border.
    A ray through any hull cell enters the hull through one of these, so they alone cast the
    hull's silhouette (about a fifth of the cells of a solid object)."""
    solid = hull.float()[None, None]
    interior = -torch.nn.functional.max_pool3d(-solid, 3, stride=1, padding=1)[0, 0] > 0.5
    interior[[0, -1]] = interior[:, [0, -1]] = interior[:, :, [0, -1]] = False
    return hull & ~interior


def hull_silhouette(surface: Tensor, aabb_min: Tensor, aabb_max: Tensor, cameras: Cameras, view: int) -> np.ndarray:
    """[H, W] bool: the pixels of camera `view` onto which some cell of the hull's surface
    (`hull_surface_cells`: [G, G, G] bool over the box) projects, each cell splatted as a disc of
    its projected half-diagonal."""
    g = surface.shape[0]
    cell = (aabb_max - aabb_min) / g
    centres = aabb_min + (surface.nonzero().float() + 0.5) * cell
    pix, depth = cameras.project(centres, view)
    w, h = (int(v) for v in cameras.size[view].tolist())
    front = depth > 1e-6
    pix, depth = pix[front], depth[front]
    col, row = pix[:, 0].floor().long(), pix[:, 1].floor().long()
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    image = torch.zeros(h * w, dtype=torch.bool, device=surface.device)
    image[row[inside] * w + col[inside]] = True
    radius = 0.5 * float(cell.norm()) * float(cameras.intrinsics[view, :2].max()) / float(depth.min()) if len(depth) else 0
    disc = int(np.ceil(radius))
    silhouette = image.view(h, w).cpu().numpy()
    if disc > 0 and silhouette.any():
        # grown by the disc through a distance transform: a dilation with a disc of 20 px took 4 s
        # and gigabytes per 1000 x 1000 photo (ethiopian_head: 276 s, 14.8 GB peak for 66 photos)
        silhouette = distance_transform_edt(~silhouette) <= disc
    return silhouette


def agree_masks(masks: list[np.ndarray], silhouettes: list[np.ndarray],
                editable: list[bool]) -> tuple[list[np.ndarray], list[MaskVerdict]]:
    """Each mask [H, W] bool against its hull silhouette: repaired masks and a verdict per photo.
    Masks the user gave (editable False) are trusted as they are."""
    allowed = [binary_dilation(silhouette, iterations=MARGIN_PX) for silhouette in silhouettes]
    cut = [mask & ok if may_edit else mask for mask, ok, may_edit in zip(masks, allowed, editable)]
    ious = [float((m & sil).sum()) / max(int((m | sil).sum()), 1) for m, sil in zip(cut, silhouettes)]
    typical = float(np.median(ious))
    repaired, verdicts = [], []
    for mask, ok, trimmed, may_edit, iou in zip(masks, allowed, cut, editable, ious):
        removed = float((mask & ~ok).sum()) / max(int(mask.sum()), 1)
        if not may_edit:
            repaired.append(mask)
            verdicts.append(MaskVerdict("agrees", 0.0, iou, "given by the user"))
        elif iou < MIN_RELATIVE_IOU * typical:
            repaired.append(mask)
            why = (f"even cut to the other photos' visual hull ({100 * removed:.0f}% of it lay outside), its mask "
                   f"overlaps where they put the object {iou:.2f} (IoU; typical {typical:.2f})")
            verdicts.append(MaskVerdict("dropped", removed, iou, why + ": another object, an occluder, or a wrong camera?"))
        elif removed > MIN_CHANGE:
            repaired.append(trimmed)
            verdicts.append(MaskVerdict("repaired", removed, iou,
                                        f"cut {100 * removed:.1f}% of its mask that lay outside the other photos' visual hull"))
        else:
            repaired.append(mask)
            verdicts.append(MaskVerdict("agrees", removed, iou))
    return repaired, verdicts
