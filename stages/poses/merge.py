"""Cameras one SfM model lacks, taken from another model of the same photos.

    added, why = cameras_from(primary, secondary)   # dicts stem -> Frame

Two kinds of features fail on different photos: on ethiopian_head SIFT placed five frontal views
of the symmetric, shiny face wrong (they were taken out), while XFeat posed all 66, less precisely
(0.54 deg median against the dataset's cameras where SIFT gave 0.19). Keeping the precise model and
adding only the photos it lacks from the other gets both. The two models live in arbitrary SfM
frames: the similarity between them comes from the camera centres they share (Umeyama, fitted
again on the cameras it maps well), and the models must agree on those cameras' rotations, or
nothing is taken. The caller checks the added cameras against the masks.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from stages.common.cameras import Frame, robust_similarity, rotation_angle, transform_c2w

MIN_SHARED = 6  # cameras both models hold, at least, to fit the similarity between them
REFIT_FACTOR = 3.0  # the fit is repeated on the shared cameras it maps within this many times the median error
# After the fit, the shared cameras' rotations must agree this well (median, degrees); two right
# models of ethiopian_head (SIFT, XFeat) agreed to 0.5 deg.
MAX_ROTATION_DEG = 2.0


def cameras_from(primary: dict[str, Frame], secondary: dict[str, Frame]) -> tuple[dict[str, Frame], str]:
    """The frames of `secondary` for photos `primary` lacks, moved into primary's frame, and a
    sentence on how the models were tied (or why nothing was taken: then the dict is empty)."""
    shared = sorted(set(primary) & set(secondary))
    missing = sorted(set(secondary) - set(primary))
    if not missing:
        return {}, "nothing to add"
    if len(shared) < MIN_SHARED:
        return {}, f"only {len(shared)} cameras in common (at least {MIN_SHARED} needed)"
    T, keep = robust_similarity(np.array([secondary[s].centre for s in shared]),
                                np.array([primary[s].centre for s in shared]), REFIT_FACTOR, MIN_SHARED)
    turns = [rotation_angle(primary[s].c2w[:3, :3].T @ transform_c2w(T, secondary[s].c2w)[:3, :3])
             for s, k in zip(shared, keep) if k]
    if np.median(turns) > MAX_ROTATION_DEG:
        return {}, f"the models disagree on the cameras they share ({np.median(turns):.1f} deg median)"
    added = {s: replace(secondary[s], c2w=transform_c2w(T, secondary[s].c2w)) for s in missing}
    return added, (f"tied by {int(keep.sum())} shared cameras (rotations agree to {np.median(turns):.2f} deg median)")
