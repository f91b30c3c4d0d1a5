"""Reading photos safely and uniformly; writing the PNGs every stage exchanges.

Photos arrive in every form (JPEG, PNG, greyscale, palette, 16-bit, with or without alpha,
rotated by EXIF). `load_photo` turns any of them into 8-bit sRGB RGB plus an optional alpha,
upright, after refusing files whose header announces more pixels than allowed (a
decompression bomb is refused before it is decoded).
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's own bomb guard is replaced by the explicit pixel limit passed to load_photo.
Image.MAX_IMAGE_PIXELS = None
try:  # iPhone photos: HEIC/HEIF through libheif
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover - pillow-heif is a dependency; without it HEIC is "not an image"
    pass


class UnreadableImage(Exception):
    """The file is not an image we can use; the message says why, for the user."""


@dataclass
class Photo:
    rgb: np.ndarray  # [H, W, 3] uint8, sRGB
    alpha: np.ndarray | None  # [H, W] uint8, None when the file has no (non-trivial) alpha
    exif: dict  # tag name -> value (base IFD and Exif IFD), before orientation is applied


def _exif_dict(img: Image.Image) -> dict:
    from PIL import ExifTags

    try:
        exif = img.getexif()
        merged = dict(exif.items()) | dict(exif.get_ifd(ExifTags.IFD.Exif).items())
    except Exception:  # malformed EXIF must not make a good photo unusable
        return {}
    return {ExifTags.TAGS.get(k, str(k)): v for k, v in merged.items()}


def _to_srgb(img: Image.Image) -> Image.Image:
    """Colours converted from the photo's embedded ICC profile (Display P3 on iPhones, Adobe RGB,
    a CMYK press profile) to sRGB, which every later stage assumes; unchanged without a profile
    (or with one that cannot be read)."""
    from PIL import ImageCms

    icc = img.info.get("icc_profile")
    if not icc or img.mode not in ("RGB", "RGBA", "CMYK"):
        return img
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        out_mode = "RGBA" if img.mode == "RGBA" else "RGB"
        return ImageCms.profileToProfile(img, source, ImageCms.createProfile("sRGB"), outputMode=out_mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return img


def _to_8bit_channels(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Any Pillow mode -> ([H, W, 3] uint8 RGB, [H, W] uint8 alpha or None)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = np.asarray(img, dtype=np.uint32)
        grey = (grey >> 8 if grey.max() > 255 else grey).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2), None
    if img.mode == "F":
        grey = np.clip(np.asarray(img) * (255.0 if np.asarray(img).max() <= 1.0 else 1.0), 0, 255)
        return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2), None
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    rgba = np.asarray(img.convert("RGBA" if has_alpha else "RGB"))
    if not has_alpha:
        return rgba, None
    alpha = rgba[..., 3]
    return np.ascontiguousarray(rgba[..., :3]), (None if alpha.min() == 255 else alpha)


def load_photo(path: Path, max_pixels: int) -> Photo:
    """Decode a photo upright, as 8-bit RGB (+ alpha), refusing oversized or broken files."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(path)
            w, h = img.size
            if w * h > max_pixels:
                raise UnreadableImage(f"{w}x{h} = {w * h:,} pixels is over the limit of "
                                      f"{max_pixels:,} (ingest.max_pixels)")
            exif = _exif_dict(img)
            img.load()
            img = ImageOps.exif_transpose(img)
            img = _to_srgb(img)
            rgb, alpha = _to_8bit_channels(img)
    except UnreadableImage:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise UnreadableImage("not an image format neroic reads (JPEG, PNG, HEIC, TIFF, WebP)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UnreadableImage(f"corrupt or truncated image ({e})") from None
    if rgb.shape[0] < 16 or rgb.shape[1] < 16:
        raise UnreadableImage(f"too small ({rgb.shape[1]}x{rgb.shape[0]} pixels)")
    return Photo(rgb, alpha, exif)


def read_rgb(path: Path) -> np.ndarray:
    """A PNG written by a stage -> [H, W, 3] uint8 sRGB."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def read_mask(path: Path) -> np.ndarray:
    """A mask PNG -> [H, W] uint8 (0-255)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("L"))


def write_png(path: Path, array: np.ndarray) -> None:
    """[H, W], [H, W, 3] or [H, W, 4] uint8 -> PNG."""
    Image.fromarray(np.ascontiguousarray(array)).save(path, optimize=False, compress_level=4)


def resize(array: np.ndarray, size: tuple[int, int], resample=Image.Resampling.LANCZOS) -> np.ndarray:
    """Resize an [H, W(, C)] uint8 array to (width, height); a bool mask stays a bool mask (area
    coverage >= 1/2); float data (normals, depths) is sampled at the nearest pixel, never blended."""
    if (array.shape[1], array.shape[0]) == tuple(size):
        return array
    if array.dtype.kind == "f":
        rows = ((np.arange(size[1]) + 0.5) * array.shape[0] / size[1]).astype(np.int64)
        cols = ((np.arange(size[0]) + 0.5) * array.shape[1] / size[0]).astype(np.int64)
        return array[rows[:, None], cols[None, :]]
    if array.dtype == bool:
        return resize(array.astype(np.uint8) * 255, size, Image.Resampling.BOX) >= 128
    return np.asarray(Image.fromarray(array).resize(size, resample))


def shrink_view(frame, max_size: int, *images: np.ndarray) -> tuple:
    """(frame.shrunk(max_size), each image [H, W(, C)] (uint8 or bool) resized to match): one
    photo's view at a working size."""
    small = frame.shrunk(max_size)
    return (small, *(resize(image, (small.w, small.h)) for image in images))


def sample_bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of image [H, W, C] at glTF UVs [N, 2] (v down, texel centres at +0.5),
    clamped at the border -> [N, C] float64 in the image's own units."""
    h, w = image.shape[:2]
    x = np.clip(uv[:, 0] * w - 0.5, 0.0, w - 1.0)
    y = np.clip(uv[:, 1] * h - 0.5, 0.0, h - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]

    def at(rows, cols):  # gather first: converting the whole image per call would cost more
        return image[rows, cols].astype(np.float64)

    top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
    bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy
