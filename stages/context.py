"""What a stage receives when it runs: its folders, its config section, its inputs.

A stage is a module with `run(ctx: StageContext) -> dict`. It writes only below
`ctx.out` (a temporary folder the runner publishes atomically on success) and
`ctx.checkpoints` (kept across crashes so long stages can resume; deleted on success).
It returns a summary: {"figure": "<one short line for `neroic status`>", ...metrics}.
It raises `NeroicError` for problems the user can fix.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from stages.errors import NeroicError


@dataclass
class Sources:
    """The user's files outside the workdir: photos, and optional masks and poses."""

    photos: Path | None = None
    masks: Path | None = None
    poses: Path | None = None


@dataclass
class StageContext:
    name: str
    workdir: Path
    out: Path
    checkpoints: Path
    config: dict
    settings: dict
    sources: Sources
    device: str = "cpu"
    inputs: dict[str, Path] = field(default_factory=dict)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("neroic"))
    quiet: bool = False
    threads: int = 0  # CPU threads the stage may use (torch, onnxruntime, COLMAP); 0 = each library's default

    def input(self, stage: str) -> Path:
        """The published folder of a finished upstream stage."""
        try:
            return self.inputs[stage]
        except KeyError:
            raise NeroicError(f"stage '{self.name}' did not declare '{stage}' as an input") from None

    def progress(self, iterable=None, total: int | None = None, desc: str = "", unit: str = "it"):
        """A progress bar on stderr (silent with --quiet)."""
        return tqdm(iterable, total=total, desc=f"{self.name}: {desc}" if desc else self.name,
                    unit=unit, disable=self.quiet, leave=False, dynamic_ncols=True)
