"""The sRGB transfer curve (IEC 61966-2-1), for numpy arrays and torch tensors alike.

Photos and PNGs are sRGB-encoded; all shading happens in linear RGB. Values are clamped to
[0, 1] first. The power branches are evaluated on clamped inputs so torch gradients stay finite.
"""
from __future__ import annotations

import numpy as np


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def srgb_to_linear(x):
    """sRGB-encoded values in [0, 1] -> linear RGB (numpy array or torch tensor, same type out)."""
    if _is_torch(x):
        import torch

        x = x.clamp(0.0, 1.0)
        return torch.where(x <= 0.04045, x / 12.92, ((x.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((np.maximum(x, 0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x):
    """Linear RGB -> sRGB-encoded values in [0, 1] (numpy array or torch tensor, same type out)."""
    if _is_torch(x):
        import torch

        x = x.clamp(0.0, 1.0)
        return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp(min=0.0031308) ** (1.0 / 2.4) - 0.055)
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.maximum(x, 0.0031308) ** (1.0 / 2.4) - 0.055)
