"""`make gpu-check`: everything a GPU should show, in one run with one summary.

    python -m bench.gpu_check [--out bench-runs/gpu-check] [--skip-example]

1. the CPU-vs-CUDA parity tests (tests/test_gpu.py);
2. field throughput on the GPU (bench.field_throughput --device cuda);
3. the shipped skull example end to end on the GPU (`neroic run --device cuda`, the gpu profile
   chosen automatically): each stage's time, host and GPU peak memory, and the result line.
Exits non-zero when there is no CUDA device or a step fails.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def step(title: str, command: list[str]) -> float:
    print(f"\n== {title} ==\n$ {' '.join(command)}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"gpu-check: {title} failed (exit code {done.returncode})")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench-runs" / "gpu-check")
    parser.add_argument("--skip-example", action="store_true", help="only the tests and the throughput")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu-check: PyTorch sees no CUDA device (install a CUDA build of torch)")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    step("CPU vs CUDA parity", [sys.executable, "-m", "pytest", "-q", "tests/test_gpu.py"])
    step("field throughput on the GPU", [sys.executable, "-m", "bench.field_throughput", "--device", "cuda"])
    if args.skip_example:
        return
    out = args.out / "skull.glb"
    wall = step("the skull example on the GPU", [sys.executable, "-m", "pipeline", "run", "examples/skull/images",
                                                 "--out", str(out), "--device", "cuda", "-q"])
    print(f"\n{'stage':<10}{'seconds':>9}{'host MB':>10}{'GPU MB':>9}  result")
    for name in ("ingest", "masks", "poses", "geometry", "normals", "material", "export"):
        manifest = json.loads((out.with_suffix(".neroic") / name / "manifest.json").read_text())
        gpu = manifest.get("peak_gpu_mb")
        print(f"{name:<10}{manifest['seconds']:9.1f}{manifest['peak_rss_mb']:10.0f}{gpu if gpu is not None else '-':>9}"
              f"  {manifest['summary'].get('figure', '')}")
    print(f"photos -> GLB: {wall:.0f} s wall")


if __name__ == "__main__":
    main()
