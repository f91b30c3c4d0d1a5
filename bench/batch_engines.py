"""`neroic batch` engines on rendered Spot captures (about 10 minutes on 2 cores):

1. the same captures with --engine local and --engine ray (2 CPUs; Ray with one logical GPU):
   wall time of each, and whether each stage's fingerprint and each GLB agree;
2. a two-node Ray cluster on this host (ray.cluster_utils.Cluster: a CPU-only head and a node
   with one logical GPU): where every stage ran; geometry and material must be on the GPU node.

    python -m bench.batch_engines --out bench-runs/batch [--captures 3] [--size 48]

Results in OUT/metrics.json. Stage settings: the tiny ones of tests/test_batch.py.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from stages import STAGE_NAMES
from tests.test_batch import TINY

REPO = Path(__file__).resolve().parent.parent


def batch(captures: Path, out: Path, *args) -> float:
    """Run `neroic batch` in a fresh process; its wall time in seconds."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline", "batch", str(captures), "--out", str(out), *map(str, args),
                           *TINY], env=env, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    print(done.stdout[done.stdout.find("capture  "):], done.stderr[-2000:], sep="\n", flush=True)
    if done.returncode != 0:
        raise SystemExit(f"neroic batch {' '.join(map(str, args))} failed ({done.returncode})")
    return round(seconds, 1)


def fingerprints(out: Path, capture: str) -> dict[str, str]:
    return {s: json.loads((out / f"{capture}.neroic" / s / "manifest.json").read_text())["fingerprint"]
            for s in STAGE_NAMES}


def engines(captures: Path, names: list[str], out: Path) -> dict:
    wall = {"local": batch(captures, out / "local", "--engine", "local", "--cpus", 2),
            "ray": batch(captures, out / "ray", "--engine", "ray", "--cpus", 2, "--gpus", 1)}
    same = {}
    for name in names:
        local, ray = fingerprints(out / "local", name), fingerprints(out / "ray", name)
        glbs = [hashlib.sha256((out / e / f"{name}.glb").read_bytes()).hexdigest() for e in ("local", "ray")]
        same[name] = {"stages_with_equal_fingerprints": [s for s in STAGE_NAMES if local[s] == ray[s]],
                      "same_glb_bytes": glbs[0] == glbs[1]}
    return {"wall_seconds": wall, "agreement": same}


def two_nodes(captures: Path, out: Path) -> dict:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    try:
        gpu_node = cluster.add_node(num_cpus=1, num_gpus=1)
        cluster.wait_for_nodes()
        wall = batch(captures, out / "two-nodes", "--engine", "ray", "--address", cluster.address)
    finally:
        cluster.shutdown()
    outcomes = json.loads((out / "two-nodes" / "batch.json").read_text())["outcomes"]
    placed = {f"{o['capture']} {o['stage']}": ("gpu node" if o["node"] == gpu_node.node_id else "cpu node")
              for o in outcomes}
    neural = [k for k in placed if k.split()[1] in ("geometry", "material")]
    return {"wall_seconds": wall, "placement": placed,
            "neural_stages_on_gpu_node": all(placed[k] == "gpu node" for k in neural)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.batch_engines", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-runs/batch"))
    parser.add_argument("--captures", type=int, default=3)
    parser.add_argument("--size", type=int, default=48, help="photo size in pixels")
    args = parser.parse_args(argv)
    from tests.synthetic.spot_capture import make_spot_capture

    captures = args.out / "captures"
    names = [f"cap{i + 1}" for i in range(args.captures)]
    for seed, name in enumerate(names):
        if not (captures / name / "transforms.json").exists():
            make_spot_capture(captures / name, size=args.size, n_train=12, n_heldout=0, seed=seed, supersample=1,
                              nthreads=1)
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # the two-node cluster and its client authenticate
    metrics = {"engines": engines(captures, names, args.out), "two_nodes": two_nodes(captures, args.out)}
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
