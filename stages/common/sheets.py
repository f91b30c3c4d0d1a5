"""Contact sheets: many small labelled pictures on one PNG, so a person can check a stage
at a glance (masks over photos, renders beside photos, lit spheres)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

BACKGROUND = (32, 32, 32)


def contact_sheet(tiles: list[np.ndarray], labels: list[str], tile_height: int = 160,
                  columns: int | None = None, label_colours: list[tuple] | None = None) -> np.ndarray:
    """Lay [H, W, 3] uint8 tiles out on a grid, each scaled to `tile_height`, label below.

    Returns an [H, W, 3] uint8 image.
    """
    if not tiles:
        raise ValueError("no tiles")
    scaled = [Image.fromarray(t).resize((max(1, round(t.shape[1] * tile_height / t.shape[0])), tile_height),
                                        Image.Resampling.BILINEAR) for t in tiles]
    cell_w = max(im.width for im in scaled) + 8
    cell_h = tile_height + 22
    columns = columns or max(1, min(len(tiles), round((len(tiles) * cell_h / cell_w) ** 0.5 * 1.6)))
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, (im, label) in enumerate(zip(scaled, labels)):
        x, y = (i % columns) * cell_w + 4, (i // columns) * cell_h + 4
        sheet.paste(im, (x + (cell_w - 8 - im.width) // 2, y))
        colour = label_colours[i] if label_colours else (230, 230, 230)
        draw.text((x, y + tile_height + 2), label[: cell_w // 6], fill=colour)
    return np.asarray(sheet)


def mask_overlay(rgb: np.ndarray, mask: np.ndarray, threshold: int = 128) -> np.ndarray:
    """Photo with its background dimmed and tinted red, and the mask edge in green."""
    fg = mask >= threshold
    out = rgb.astype(np.float32)
    out[~fg] = out[~fg] * 0.35 + np.array([120, 0, 0], np.float32)
    edge = fg ^ (np.pad(fg, 1, mode="edge")[2:, 1:-1] & np.pad(fg, 1, mode="edge")[:-2, 1:-1]
                 & np.pad(fg, 1, mode="edge")[1:-1, 2:] & np.pad(fg, 1, mode="edge")[1:-1, :-2])
    out[edge] = (0, 255, 0)
    return np.clip(out, 0, 255).astype(np.uint8)
