"""`python -m pipeline` is the `neroic` command."""
from pipeline.cli import main

main()
