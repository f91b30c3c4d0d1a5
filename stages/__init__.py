"""The seven stages and how they depend on each other: the pipeline as data.

Each stage is a module (or subpackage) exposing `run(ctx) -> summary` (see
`pipeline.context`). Modules are imported only when their stage runs, so deciding
what is up to date never pays for importing torch, pycolmap or rembg.
"""
from __future__ import annotations

import importlib.util
# pycolmap 4.2.1 exports its own zlib symbols: if the system libz loads after it, zlib users
# (PIL's PNG writer, numpy's savez_compressed) crash with a double free. Every stage module is
# imported through this package, so loading zlib here first is enough.
import zlib  # noqa: F401
from pathlib import Path
from dataclasses import dataclass


@dataclass(frozen=True)
class StageSpec:
    name: str
    module: str
    needs: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()  # user inputs (Sources fields) that this stage reads
    issue: int = 0  # where its work is tracked, for the "not built yet" message

    def is_built(self) -> bool:
        """True once the stage's module defines `run` (checked without importing it)."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or spec.origin is None:  # absent, or a bare folder
            return False
        return "\ndef run(" in Path(spec.origin).read_text()


STAGES: tuple[StageSpec, ...] = (
    StageSpec("ingest", "stages.ingest", sources=("photos",), issue=2),
    StageSpec("masks", "stages.masks", needs=("ingest",), sources=("masks",), issue=2),
    StageSpec("poses", "stages.poses", needs=("ingest", "masks"), sources=("poses",), issue=2),
    StageSpec("geometry", "stages.geometry", needs=("ingest", "masks", "poses"), issue=3),
    StageSpec("normals", "stages.normals", needs=("ingest", "poses", "geometry"), issue=3),
    StageSpec("material", "stages.material", needs=("ingest", "masks", "poses", "geometry", "normals"), issue=4),
    StageSpec("export", "stages.export", needs=("masks", "poses", "geometry", "material"), issue=5),
)

STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def get_stage(name: str) -> StageSpec:
    for spec in STAGES:
        if spec.name == name:
            return spec
    raise KeyError(name)
