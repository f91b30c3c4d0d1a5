"""The optimiser the fields train with: Adam, as torch's fused single-pass kernel where it has one.

    optimizer = adam([{"params": field.parameters(), "lr": 1e-2}], betas=(0.9, 0.99), eps=1e-15)

The same update as torch.optim.Adam's default (multi-tensor) implementation, in one pass over
each parameter instead of about ten: on a 2-core CPU the step over the default field (a 786k-row
hash table and small MLPs) takes ~1 ms instead of ~10 ms. torch builds without a fused kernel for
the parameters' device (torch < 2.4 on the CPU) get the default implementation. Checkpoints of
either load into the other (same state_dict).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch


def adam(params: Iterable, **kwargs) -> torch.optim.Adam:
    """torch.optim.Adam(params, fused=True, **kwargs), or without `fused` where that is unsupported."""
    params = list(params)
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, **kwargs)
