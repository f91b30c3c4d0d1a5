"""Reading photos safely and uniformly; writing the PNGs every stage exchanges.

Photos arrive in every form (JPEG, PNG, HEIC, camera RAW, greyscale, palette, 16-bit, with or
without alpha, rotated by EXIF). `load_photo` turns any of them into 8-bit sRGB RGB plus an
optional alpha, upright, after refusing files whose header announces more pixels than allowed (a
decompression bomb is refused before it is decoded).

Camera RAW files (RAW_SUFFIXES) are developed by LibRaw (rawpy) the way a camera's JPEG engine
would: the camera's white balance, its colour matrix to sRGB, the sRGB tone curve and LibRaw's
automatic brightness, turned upright by the file's own orientation. They are recognised by their
suffix, because most are TIFF containers whose first image Pillow would happily return: a small
embedded preview, not the photo. Their EXIF (focal length, camera) is read from that container
(tifffile: DNG, CR2, NEF, ARW, ...); it is empty for RAW formats that are no TIFF (CR3, RAF).
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


RAW_SUFFIXES = frozenset({".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf",
                          ".rw2", ".rwl", ".pef", ".srw", ".3fr", ".erf", ".kdc", ".mrw", ".x3f", ".iiq"})


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


# EXIF values of a RAW file's TIFF container that ingest reads as numbers (rationals arrive as
# (numerator, denominator)), and tifffile's names for those Pillow names differently.
_RAW_RATIONALS = ("FocalLength", "FocalPlaneXResolution", "FocalPlaneYResolution")
_RAW_RENAMED = {"PixelXDimension": "ExifImageWidth", "PixelYDimension": "ExifImageHeight"}


def _raw_exif(path: Path) -> dict:
    """The EXIF of a TIFF-based RAW file (its first IFD merged with its Exif IFD, as Pillow names
    them), read without decoding any image; {} when it is no TIFF container (CR3, RAF) or a broken one."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            tags = {tag.name: tag.value for tag in tif.pages[0].tags}
    except Exception:  # no EXIF must not make a good photo unusable
        return {}
    exif = tags.pop("ExifTag", None)
    merged = tags | (exif if isinstance(exif, dict) else {})
    merged = {_RAW_RENAMED.get(k, k): v for k, v in merged.items()}
    for name in _RAW_RATIONALS:
        value = merged.get(name)
        if isinstance(value, tuple) and len(value) == 2 and value[1]:
            merged[name] = value[0] / value[1]
    return merged


def _load_raw(path: Path, max_pixels: int) -> Photo:
    """Develop a camera RAW file (see the module docstring) -> an upright 8-bit sRGB Photo."""
    import rawpy

    try:
        with rawpy.imread(str(path)) as raw:
            w, h = raw.sizes.width, raw.sizes.height
            if w * h > max_pixels:
                raise UnreadableImage(f"{w}x{h} = {w * h:,} pixels is over the limit of "
                                      f"{max_pixels:,} (ingest.max_pixels)")
            rgb = raw.postprocess(use_camera_wb=True, output_color=rawpy.ColorSpace.sRGB, gamma=(2.4, 12.92),
                                  output_bps=8)  # sRGB tone curve (LibRaw defaults to BT.709)
    except UnreadableImage:
        raise
    except (rawpy.LibRawError, OSError, ValueError) as e:
        raise UnreadableImage(f"camera RAW file LibRaw cannot develop ({e})") from None
    if rgb.shape[0] < 16 or rgb.shape[1] < 16:
        raise UnreadableImage(f"too small ({rgb.shape[1]}x{rgb.shape[0]} pixels)")
    return Photo(np.ascontiguousarray(rgb), None, _raw_exif(path))


def load_photo(path: Path, max_pixels: int) -> Photo:
    """Decode a photo upright, as 8-bit RGB (+ alpha), refusing oversized or broken files."""
    if Path(path).suffix.lower() in RAW_SUFFIXES:
        return _load_raw(Path(path), max_pixels)
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
        raise UnreadableImage("not an image format neroic reads (JPEG, PNG, HEIC, TIFF, WebP, camera RAW)") from None
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


def sharpness(rgb: np.ndarray, mask: np.ndarray, scale: float = 1.0) -> float:
    """Energy of the Laplacian of the photo's grey levels inside the mask (shrunk by a few pixels,
    so the silhouette's own edge does not count) over the energy of their gradient. Blurring an
    edge by s pixels lowers the ratio as 1/s^2, while contrast, exposure and how much of the
    object is flat colour cancel out (the Laplacian over the grey levels' variance scored a
    close-up of the milk carton, mostly flat red, 13 % of the median; this ratio 41 %).
    Measured with the photo first resized by `scale` (< 1: `object_scales` brings a close-up to
    the object's typical size)."""
    import cv2
    from scipy.ndimage import binary_erosion

    if scale < 1.0:
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    inner = binary_erosion(mask, iterations=3)
    if inner.sum() < 64:
        return 0.0
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gradient = (cv2.Sobel(grey, cv2.CV_32F, 1, 0) ** 2 + cv2.Sobel(grey, cv2.CV_32F, 0, 1) ** 2)[inner].mean() / 64
    if gradient < 1e-6:
        return 0.0
    return float((cv2.Laplacian(grey, cv2.CV_32F)[inner] ** 2).mean() / gradient)
