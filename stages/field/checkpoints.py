"""Training checkpoints shared by the geometry and material loops: written atomically, resumed
only with the same settings, and portable between devices.

    key = config_key(cfg, {"field": field.config})
    state = load_checkpoint(path, key)                 # None: start from scratch
    restore_generator(generator, state["generator"], seed, step)
    save_checkpoint(path, {"config_key": key, "step": step, "generator": generator_state(generator), ...})

Tensors are saved as plain tensors (loaded with weights_only=True, onto the CPU; the loops move
them where they train). A random generator's state belongs to its device type (a CPU generator
holds a Mersenne Twister, a CUDA one a seed and an offset), so a run checkpointed on one device
and resumed on another restarts its random stream from (seed, step) instead of failing.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch

log = logging.getLogger("neroic")


def config_key(cfg, extra: dict) -> str:
    """What a checkpoint must match to be resumed: the training settings (a dataclass, bar the
    checkpoint and logging cadences) and `extra` (the model's shape, the data's size)."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("checkpoint_every", "log_every")}
    return json.dumps({"train": settings, **extra}, sort_keys=True)


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save of plain tensors/dicts to a temporary file, then an atomic rename."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, key: str) -> dict | None:
    """The checkpoint at `path` if it is readable and was made with the same settings, else None.

    An unreadable checkpoint is moved aside (`*.corrupt`) and training restarts from scratch;
    one made with other settings is ignored (and overwritten by the next checkpoint).
    """
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "step" not in state:
            raise ValueError("not a neroic checkpoint")
    except Exception as exc:  # any unreadable file: torch raises many types
        path.replace(path.with_suffix(".corrupt"))
        log.warning("checkpoint %s is unreadable (%s); moved it to %s and training starts from scratch",
                    path, exc, path.with_suffix(".corrupt").name)
        return None
    if state.get("config_key") != key:
        log.warning("checkpoint %s was made with other settings; training starts from scratch", path)
        return None
    return state


def generator_state(generator: torch.Generator) -> dict:
    """What a checkpoint keeps of a random generator: its device type and state."""
    return {"device": generator.device.type, "state": generator.get_state()}


def restore_generator(generator: torch.Generator, saved: dict, seed: int, step: int) -> None:
    """Continue `saved`'s random stream when it comes from the same device type; otherwise (a
    checkpoint made on another device) reseed deterministically from (seed, step)."""
    if not isinstance(saved, dict):  # a bare state: written by a CPU run
        saved = {"device": "cpu", "state": saved}
    if saved.get("device") == generator.device.type:
        generator.set_state(saved["state"])
        return
    log.info("the checkpoint was made on %s and training resumes on %s: its random stream restarts",
             saved.get("device"), generator.device.type)
    generator.manual_seed(seed * 1_000_003 + step)
