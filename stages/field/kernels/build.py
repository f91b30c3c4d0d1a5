"""Compile the kernels' C++ sources into one shared library, cached by what went into it.

    path = build_library()      # Path of the .so, compiled now or found in the cache

The library is plain C ABI (loaded with ctypes), so it needs no PyTorch headers, builds in a few
seconds with the machine's own C++ compiler and does not depend on the torch version. It is
compiled with -march=native, so the cache key holds the CPU's feature flags beside the sources,
the compiler command and its flags: a copy of the cache on another machine is not reused there.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCES = ("hash_grid.cpp", "mlp.cpp")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-fopenmp", "-fPIC", "-shared", "-fno-math-errno")
LIBRARY_STEM = "neroic_kernels"


class BuildError(RuntimeError):
    """The library could not be built (no compiler, or it rejected the sources)."""


def cache_dir() -> Path:
    """$NEROIC_KERNEL_CACHE, else $XDG_CACHE_HOME/neroic/kernels, else ~/.cache/neroic/kernels."""
    if os.environ.get("NEROIC_KERNEL_CACHE"):
        return Path(os.environ["NEROIC_KERNEL_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "neroic" / "kernels"


def compiler() -> str | None:
    """$CXX, else the first of c++ / g++ / clang++ on the PATH."""
    if os.environ.get("CXX"):
        return os.environ["CXX"]
    for name in ("c++", "g++", "clang++"):
        if shutil.which(name):
            return name
    return None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def library_path(cxx: str) -> Path:
    """Where the library built from the current sources by `cxx` for this CPU lives."""
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update((Path(__file__).parent / name).read_bytes())
    for part in (cxx, *FLAGS, platform.machine(), _cpu_flags()):
        digest.update(part.encode() + b"\0")
    return cache_dir() / f"{LIBRARY_STEM}-{digest.hexdigest()[:16]}.so"


def build_library() -> Path:
    """The cached library, compiled first if it is not there yet; raises BuildError."""
    cxx = compiler()
    if cxx is None:
        raise BuildError("no C++ compiler found (set CXX, or install g++)")
    target = library_path(cxx)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # compile beside the target and rename: concurrent builders each finish a whole file
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    sources = [str(Path(__file__).parent / name) for name in SOURCES]
    try:
        result = subprocess.run([cxx, *FLAGS, *sources, "-o", tmp], capture_output=True, text=True)
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if "error" in line] or result.stderr.splitlines()
            raise BuildError(f"{cxx} failed: {lines[0] if lines else 'exit status ' + str(result.returncode)}")
        os.replace(tmp, target)
    except OSError as e:
        raise BuildError(f"{cxx} could not be run: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
