"""Benchmarks: `make bench` (python -m bench) runs them all; each is also a module of its own."""
