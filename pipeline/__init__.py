"""neroic's plumbing: command line, configuration, working folder, stage runner and artifact cache.

No science lives here; the stages in `stages/` do the work. A run is
`cli` -> `runner.run_pipeline` -> for each stage: `cache` decides skip or run,
the stage's `run(ctx)` writes into a temporary folder, `cache` publishes it atomically.
"""
