"""The seven stages and how they depend on each other: the pipeline as data.

Each stage is a module (or subpackage) exposing `run(ctx) -> summary` (see
`stages.context`). Modules are imported only when their stage runs, so deciding
what is up to date never pays for importing torch, pycolmap or rembg.
"""
from __future__ import annotations

# pycolmap 4.2.1 exports its own zlib symbols: if the system libz loads after it, zlib users
# (PIL's PNG writer, numpy's savez_compressed) crash with a double free. Every stage module is
# imported through this package, so loading zlib here first is enough.
import zlib  # noqa: F401
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """A picture a stage publishes for the run report: files matching `patterns` in its folder."""

    title: str
    patterns: tuple[str, ...]
    caption: str


@dataclass(frozen=True)
class Link:
    """A file a stage publishes for the run report to link to (a page to open, not a picture)."""

    title: str
    pattern: str
    caption: str


@dataclass(frozen=True)
class StageSpec:
    name: str
    module: str
    needs: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()  # user inputs (Sources fields) that this stage reads
    figures: tuple[Figure, ...] = ()  # what report.html shows of its output
    links: tuple[Link, ...] = ()  # what report.html links to
    # files that record how the run went (timings, curves against time): published, but not part
    # of the output's identity, so equal inputs give downstream stages equal fingerprints
    records: tuple[str, ...] = ()


STAGES: tuple[StageSpec, ...] = (
    StageSpec("ingest", "stages.ingest", sources=("photos",)),
    StageSpec("masks", "stages.masks", needs=("ingest",), sources=("masks",), figures=(
        Figure("Photos and masks", ("contact_sheet.png",),
               "Every photo with its background dimmed red and the mask edge in green; red labels are excluded."),)),
    StageSpec("poses", "stages.poses", needs=("ingest", "masks"), sources=("poses",), figures=(
        Figure("Cameras and sparse points", ("cameras.png",),
               "Registered cameras (frusta) around the object's sparse SfM points, world frame, +Y up."),)),
    StageSpec("geometry", "stages.geometry", needs=("ingest", "masks", "poses"), records=("metrics.json", "curves.png"),
              figures=(
        Figure("Geometry training", ("curves.png",), "Loss and held-out PSNR against step and time."),
        Figure("Held-out photos and renders", ("heldout/*.png",),
               "Photos not used for training, beside the field's renders of the same cameras."),
        Figure("What only one photo showed", ("transient.png",),
               "Training photos, their static render, and the transient part (occluders, cast shadows, highlights "
               "of that photo alone), which stays out of the shape and the material."))),
    StageSpec("normals", "stages.normals", needs=("ingest", "poses", "geometry"), figures=(
        Figure("Normals", ("preview.png",), "Volume-rendered Sobel normals."),)),
    StageSpec("material", "stages.material", needs=("ingest", "masks", "poses", "geometry", "normals"),
              records=("metrics.json", "losses.png"), figures=(
        Figure("Material and lights", ("contact_sheet.png", "losses.png"),
               "Per photo: original, re-rendered, albedo, shading, normals, and a sphere lit by its light, "
               "seen from its camera."),)),
    StageSpec("export", "stages.export", needs=("ingest", "masks", "poses", "geometry", "material"),
              records=("export.json", "screenshot.png"), figures=(
        Figure("Exported model", ("turntable*.png", "screenshot*.png"), "The exported GLB, rendered from around it."),),
        links=(Link("Open the 3-D viewer", "viewer.html",
                    "Every detail level, relit by any photo's learned light, a built-in environment or an HDR "
                    "dropped on the page; works offline."),)),
)

STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def get_stage(name: str) -> StageSpec:
    for spec in STAGES:
        if spec.name == name:
            return spec
    raise KeyError(name)
