"""Benchmarks: `make bench` (python -m bench) runs them all; each is also a module of its own."""
from pathlib import Path

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"  # beside the repository, when present
SHARED_DATA = SHARED / "data"  # the project's larger test data (its README gives their licences)
