"""neroic's plumbing: command line, configuration, working folder, stage runner and artifact cache.

No science lives here; the stages in `stages/` do the work. A run is
`cli` -> `runner.Pipeline.run` -> for each stage: `cache` decides skip or run,
the stage's `run(ctx)` writes into a temporary folder, `cache` publishes it atomically.
"""
import os

# OpenMP threads that spin while they wait hold a core from whatever else runs (another stage of
# a batch, the user's browser): on a busy 2-core machine that cost training 3.7x. Waiting threads
# sleep instead unless the user says otherwise. Set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
