"""`python -m stages.field.kernels` (run by `make setup`): build the fast kernels now, say what runs."""
from __future__ import annotations

import sys

from stages.field.kernels import DISABLE_ENV, disabled, load_library
from stages.field.kernels.build import BuildError, build_library


def main() -> int:
    if disabled():
        print(f"fast field kernels: switched off by {DISABLE_ENV}; the PyTorch reference path runs")
        return 0
    try:
        load_library()
    except (BuildError, OSError, AttributeError) as e:
        # not fatal: everything still runs on the reference path, only slower
        print(f"fast field kernels: unavailable ({e}); the PyTorch reference path runs")
        return 0
    print(f"fast field kernels: built and loaded ({build_library()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
