"""Environment images for relighting: Radiance .hdr, OpenEXR, or an LDR photo, as linear RGB.

An order-2 SH projection (stages.common.sh.project_env_to_sh) low-passes the map; bright
sources are clipped first (NeROIC clips at 20) so a sun does not ring through the SH bands.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stages.errors import NeroicError
from stages.common.colour import srgb_to_linear


def _read_hdr(path: Path) -> np.ndarray:
    """A Radiance .hdr or OpenEXR file -> [H, W, 3] float32 linear RGB (OpenCV decodes both,
    honouring the file's orientation flags)."""
    os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")  # read before cv2 is first imported
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # its errors become ours, below
    bgr = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_COLOR)
    if bgr is None:
        raise NeroicError(f"{path} is not a readable .hdr or .exr file (truncated or corrupt?)")
    return np.ascontiguousarray(bgr[..., ::-1], dtype=np.float32)


def read_environment(path: Path, clip: float = 20.0, max_pixels: int = 100_000_000) -> np.ndarray:
    """An equirectangular environment image -> [H, W, 3] linear RGB radiance, clipped at `clip`."""
    from stages.common.images import UnreadableImage, load_photo

    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise NeroicError(f"cannot read {path}: {e.strerror}") from None
    if magic.startswith(b"#?") or magic == b"\x76\x2f\x31\x01":  # Radiance, OpenEXR
        env = _read_hdr(path)
    else:
        try:
            rgb = load_photo(path, max_pixels).rgb
        except UnreadableImage as e:
            raise NeroicError(f"environment image {path}: {e}") from None
        env = srgb_to_linear(rgb.astype(np.float32) / 255)
    return np.minimum(env, clip)
