"""Native CPU kernels for the neural field (the fast path), and the one switch that selects them.

    lib = native_for(table, positions)   # ctypes handle of the compiled kernels, or None when
    if lib is None: ...                  # they do not apply (not float32 on the CPU) or are not
                                         # available: callers then use their PyTorch reference

What     C++/OpenMP kernels behind the same Python interfaces as the reference code:
         hash_grid.cpp/.py  the hash-grid encoding: forward, table gradient, position gradient
         mlp.cpp/.py        a small ReLU MLP fused over blocks of rows: forward and backward
         Callers (stages/field/encodings.py, mlp.py) choose them for float32 tensors on the CPU;
         CUDA tensors and other dtypes take the PyTorch reference.
Build    `make setup` runs `python -m stages.field.kernels`; otherwise the first process that
         needs them compiles them (a few seconds, build.py). The library lives in a cache folder
         ($NEROIC_KERNEL_CACHE, else ~/.cache/neroic/kernels) under a name that hashes the
         sources, compiler flags and CPU, so an edited source or another machine rebuilds.
Fallback NEROIC_NO_FAST_KERNELS=1, no compiler, a failed build or a library that does not load:
         the reference path runs, and one log line says why (once per process).
Threads  every call runs on torch.get_num_threads() OpenMP threads, in the OpenMP runtime torch
         has already loaded (the library links libgomp by soname, which resolves to torch's copy).
"""
from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch  # noqa: F401  (loads torch's libgomp before the library asks for it)

from stages.field.kernels.build import BuildError, build_library

log = logging.getLogger("neroic")

DISABLE_ENV = "NEROIC_NO_FAST_KERNELS"

_I64, _INT, _PTR = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
_SIGNATURES = {  # every function returns 0 on success, 1 for an unsupported shape
    "neroic_hash_grid_forward": (_I64, _INT, _INT, _INT, _PTR, _PTR, _PTR, _PTR, _PTR, _INT),
    "neroic_hash_grid_table_grad": (_I64, _INT, _INT, _INT, _PTR, _PTR, _PTR, _PTR, _PTR, _INT),
    "neroic_hash_grid_position_grad": (_I64, _INT, _INT, _INT, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _INT),
    "neroic_mlp_forward": (_I64, _INT, _PTR, _PTR, _PTR, _PTR, _I64, _PTR, _PTR, _PTR, _INT),
    "neroic_mlp_backward": (_I64, _INT, _PTR, _PTR, _PTR, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _INT),
}

_state: dict[str, object] = {}


def disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip() not in ("", "0")


def load_library() -> ctypes.CDLL:
    """Build (if needed) and load the library; raises BuildError or OSError."""
    lib = ctypes.CDLL(str(build_library()))
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return lib


def native_library() -> ctypes.CDLL | None:
    """The loaded kernels, or None when the reference path must be used (logged once)."""
    if "lib" not in _state:
        lib = None
        if disabled():
            log.info("fast field kernels switched off (%s): the PyTorch reference path runs", DISABLE_ENV)
        else:
            try:
                lib = load_library()
            except (BuildError, OSError, AttributeError) as e:
                log.warning("fast field kernels unavailable (%s): the slower PyTorch reference path runs", e)
        _state["lib"] = lib
    return _state["lib"]


def native_for(*tensors: torch.Tensor | None) -> ctypes.CDLL | None:
    """The kernels if they apply to these tensors (all float32 on the CPU; None entries are
    ignored) and are available, else None."""
    if _state.get("reference_only"):
        return None
    for t in tensors:
        if t is not None and (t.device.type != "cpu" or t.dtype != torch.float32):
            return None
    return native_library()


@contextmanager
def reference_path() -> Iterator[None]:
    """Within the block every caller takes the PyTorch reference path (benchmarks and tests
    compare the two paths in one process)."""
    previous = _state.get("reference_only", False)
    _state["reference_only"] = True
    try:
        yield
    finally:
        _state["reference_only"] = previous


def reset() -> None:
    """Forget the decision (tests switch the fast path off and on within one process)."""
    _state.clear()
