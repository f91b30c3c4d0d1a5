"""Environment images for relighting: Radiance .hdr (RGBE) or an LDR photo, as linear RGB.

An order-2 SH projection (stages.common.sh.project_env_to_sh) low-passes the map; bright
sources are clipped first (NeROIC clips at 20) so a sun does not ring through the SH bands.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from stages.errors import NeroicError
from stages.common.colour import srgb_to_linear


def _read_rgbe(data: bytes, path: Path) -> np.ndarray:
    """Decode a Radiance RGBE file (flat or new-style run-length encoded) -> [H, W, 3] float32."""
    header_end = data.find(b"\n\n")
    match = re.search(rb"([-+])Y (\d+) ([-+])X (\d+)\n", data[header_end:header_end + 64]) if header_end > 0 else None
    if not data.startswith(b"#?") or match is None:
        raise NeroicError(f"{path} is not a Radiance .hdr file")
    h, w = int(match.group(2)), int(match.group(4))
    pos = header_end + 2 + len(match.group(0))
    buf = np.frombuffer(data, dtype=np.uint8)
    rgbe = np.empty((h, w, 4), np.uint8)
    try:
        for y in range(h):
            if 8 <= w < 32768 and buf[pos] == 2 and buf[pos + 1] == 2 and (buf[pos + 2] << 8 | buf[pos + 3]) == w:
                pos += 4
                for c in range(4):
                    x = 0
                    while x < w:
                        count = int(buf[pos])
                        if count > 128:
                            rgbe[y, x:x + count - 128, c] = buf[pos + 1]
                            x, pos = x + count - 128, pos + 2
                        else:
                            rgbe[y, x:x + count, c] = buf[pos + 1:pos + 1 + count]
                            x, pos = x + count, pos + 1 + count
            else:
                rgbe[y] = buf[pos:pos + 4 * w].reshape(w, 4)
                pos += 4 * w
    except (IndexError, ValueError):
        raise NeroicError(f"{path} is truncated or corrupt") from None
    scale = np.ldexp(1.0, rgbe[..., 3].astype(np.int32) - 136).astype(np.float32)
    return rgbe[..., :3].astype(np.float32) * scale[..., None] * (rgbe[..., 3:] > 0)


def read_environment(path: Path, clip: float = 20.0, max_pixels: int = 100_000_000) -> np.ndarray:
    """An equirectangular environment image -> [H, W, 3] linear RGB radiance, clipped at `clip`."""
    from stages.common.images import UnreadableImage, load_photo

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise NeroicError(f"cannot read {path}: {e.strerror}") from None
    if data.startswith(b"#?"):
        env = _read_rgbe(data, path)
    else:
        try:
            rgb = load_photo(path, max_pixels).rgb
        except UnreadableImage as e:
            raise NeroicError(f"environment image {path}: {e}") from None
        env = srgb_to_linear(rgb.astype(np.float32) / 255)
    return np.minimum(env, clip)
