"""Wall time of the ingest, masks and poses stages on real captures, median of repeats.

    python -m bench.stage_times [--repeats 3] [--capture NAME=PHOTO_FOLDER ...]

Each stage is forced to rerun `repeats` times on a prepared workdir; the table gives the
median and the spread, plus the stage's key figure (e.g. registered photos).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench import SHARED_DATA
from pipeline.config import resolve
from stages.context import Sources
from pipeline.runner import Pipeline
from pipeline.workdir import Workdir
from stages import get_stage

REPO = Path(__file__).resolve().parent.parent
# The shipped example always; kermit (11 photos, 640 px) when ../shared/data has it.
DEFAULT_CAPTURES = {name: folder for name, folder in (("kermit", SHARED_DATA / "kermit" / "images"),
                                                      ("skull", REPO / "examples" / "skull" / "images"))
                    if folder.exists()}
STAGES = ("ingest", "masks", "poses")


def time_capture(photos: Path, repeats: int, overrides: tuple[str, ...]) -> list[tuple[str, list[float], str]]:
    with tempfile.TemporaryDirectory(prefix="neroic-bench-") as tmp:
        wd = Workdir(Path(tmp))
        wd.create()
        wd.write_sources(Sources(photos=photos))
        pipe = Pipeline(wd, resolve(wd.config_path, None, overrides), wd.read_sources(), quiet=True)
        rows = []
        for name in STAGES:
            spec = get_stage(name)
            runs = [pipe.run_stage(spec, force=True) for _ in range(repeats)]
            rows.append((name, [r.seconds for r in runs], runs[-1].figure))
        return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--capture", action="append", default=[], metavar="NAME=FOLDER")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    captures = dict(c.split("=", 1) for c in args.capture) if args.capture else DEFAULT_CAPTURES
    print(f"{'capture':<10}{'stage':<8}{'median s':>10}{'min s':>8}{'max s':>8}  result")
    for label, folder in captures.items():
        for name, seconds, figure in time_capture(Path(folder), args.repeats, tuple(args.overrides)):
            print(f"{label:<10}{name:<8}{statistics.median(seconds):10.2f}{min(seconds):8.2f}"
                  f"{max(seconds):8.2f}  {figure}")


if __name__ == "__main__":
    main()
