"""`neroic batch`: many captures through the seven stages, on this machine or a Ray cluster.

    plan = plan_batch(Path("captures"), Path("out"), profile=None, overrides=("geometry.steps=400",))
    engine = make_engine("ray", address=None, cpus=None, gpus=None, cpus_per_stage=1, max_retries=3)
    record = run_batch(plan, engine, keep_going=True, on_outcome=print)
    print(format_table(run_rows(record)))

Inputs   CAPTURES/NAME/ per capture: the photos themselves, or `images/` with optional `masks/`
         (like --masks) and `transforms.json` or `sparse/` (a COLMAP model, like --poses).
Outputs  OUT/NAME.glb and its workdir OUT/NAME.neroic/ (a normal workdir: `neroic status`,
         `neroic render` work on it); OUT/batch.json (the last batch: its options and every
         stage outcome); OUT/report.html (every capture with its key figures and a thumbnail).
Engines  each stage of a capture is one job, started when the capture's previous stage is done
         (pipeline.batch_engines: CPU/GPU requests, retries, threads); at most a few captures per
         free slot are in flight, so captures finish one after another rather than all at the end.
Cache    the workdirs' stage manifests are the truth: a job whose fingerprint matches computes
         nothing, so an interrupted batch resumes and a second batch only reports "cached".
Status   `neroic batch --status` reads only the manifests and batch.json (safe while a batch
         runs): done / running / not run / FAILED per stage.
Failures a failing stage stops its capture (the table names it and says why); without
         --keep-going no new stage starts after a failure (the running ones finish). Bad
         options and captures are refused before anything runs.
"""
from __future__ import annotations

import datetime as dt
import json
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.batch_stage import StageJob, StageOutcome, code_version
from pipeline.cache import read_manifest, write_json_atomic
from pipeline.config import resolve
from stages.context import Sources
from stages.errors import NeroicError
from pipeline.workdir import Workdir
from stages import STAGE_NAMES, STAGES

GPU_STAGES = frozenset({"geometry", "normals", "material", "export"})  # the stages that run the neural field
RECORD_NAME = "batch.json"
CAPTURES_IN_FLIGHT_PER_SLOT = 2


@dataclass(frozen=True)
class Capture:
    name: str
    photos: Path
    masks: Path | None = None
    poses: Path | None = None


def read_capture(folder: Path) -> Capture:
    """A capture folder: its photos, or images/ beside optional masks/ and transforms.json or sparse/."""
    images = folder / "images"
    if not images.is_dir():
        return Capture(folder.name, folder)
    masks = folder / "masks"
    poses = next((p for p in (folder / "transforms.json", folder / "sparse" / "0", folder / "sparse")
                  if p.is_file() or (p / "cameras.bin").exists() or (p / "cameras.txt").exists()), None)
    return Capture(folder.name, images, masks if masks.is_dir() else None, poses)


def find_captures(root: Path) -> list[Capture]:
    folders = sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise NeroicError(f"{root} holds no capture folders",
                          hint="put each capture's photos in a folder of its own: CAPTURES/NAME/")
    return [read_capture(p) for p in folders]


@dataclass
class BatchPlan:
    out: Path
    captures: list[Capture]
    profile: str | None
    overrides: tuple[str, ...]

    def workdir(self, capture: str) -> Path:
        return (self.out / f"{capture}.neroic").resolve()

    def model(self, capture: str) -> Path:
        return (self.out / f"{capture}.glb").resolve()

    def stage_overrides(self, capture: str, gpu: bool) -> tuple[str, ...]:
        """The --set values for every stage of a capture, its profile pinned: with none chosen (by
        --profile, --set run.profile or its config.toml), the gpu profile when the engine has GPUs,
        as `neroic run` picks it, so that every stage, wherever it runs, sees the same settings."""
        chosen = resolve(Workdir(self.workdir(capture)).config_path, self.profile, self.overrides,
                         fallback_profile="gpu" if gpu else None)["run"]["profile"]
        return (*self.overrides, f"run.profile={chosen}")

    def jobs(self, capture: str, gpu: bool) -> list[StageJob]:
        """The capture's stage jobs, in order; `gpu`: the engine has GPUs."""
        code, overrides = code_version(), self.stage_overrides(capture, gpu)
        return [StageJob(capture, spec.name, i + 1, self.workdir(capture), self.model(capture), overrides,
                         gpu=spec.name in GPU_STAGES, code=code) for i, spec in enumerate(STAGES)]


def plan_batch(captures_root: Path, out: Path, profile: str | None, overrides: tuple[str, ...]) -> BatchPlan:
    """Find the captures and make their workdirs; bad options fail here, before anything runs."""
    captures = [c for c in find_captures(captures_root)  # OUT inside CAPTURES is no capture
                if (Path(captures_root) / c.name).resolve() != Path(out).resolve()]
    plan = BatchPlan(Path(out), captures, profile, tuple(overrides))
    try:
        plan.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NeroicError(f"cannot create --out {out}: {e.strerror}") from None
    for capture in plan.captures:
        wd = Workdir(plan.workdir(capture.name))
        wd.create()
        wd.write_sources(Sources(photos=capture.photos, masks=capture.masks, poses=capture.poses))
        resolve(wd.config_path, profile, plan.overrides)  # a bad --set or config.toml: ConfigError now
    return plan


@dataclass
class BatchRecord:
    """What a batch did, kept in OUT/batch.json (rewritten after every finished stage)."""

    out: Path
    engine: str
    profile: str | None
    overrides: list[str]
    captures: list[str]
    started: str
    outcomes: list[StageOutcome] = field(default_factory=list)
    wall_seconds: float = 0.0

    def save(self) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "out"}
        write_json_atomic(self.out / RECORD_NAME, data)

    @classmethod
    def load(cls, out: Path) -> BatchRecord | None:
        path = Path(out) / RECORD_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise NeroicError(f"cannot read {path}: {e}") from None
        data["outcomes"] = [StageOutcome(**o) for o in data.get("outcomes", [])]
        return cls(out=Path(out), **data)

    def last_outcomes(self, capture: str) -> dict[str, StageOutcome]:
        return {o.stage: o for o in self.outcomes if o.capture == capture}

    def failures(self) -> dict[str, StageOutcome]:
        """capture -> its failed stage's outcome."""
        return {o.capture: o for o in self.outcomes if o.status == "failed"}


def progress_line(outcome: StageOutcome) -> str:
    head = f"{outcome.capture} {outcome.stage} {outcome.position}/{len(STAGES)}"
    if outcome.status == "failed":
        return f"{head} FAILED: {outcome.error.splitlines()[0] if outcome.error else ''}"
    if outcome.status == "cached":
        return f"{head} cached   {outcome.figure}"
    return f"{head} ran in {outcome.seconds:.1f} s   {outcome.figure}"


def run_batch(plan: BatchPlan, engine, keep_going: bool,
              on_outcome: Callable[[StageOutcome], None] = lambda o: None) -> BatchRecord:
    """Run every capture's stages, each after its predecessor, on `engine`; returns the record."""
    record = BatchRecord(plan.out, engine.describe(), plan.profile, list(plan.overrides),
                         [c.name for c in plan.captures], dt.datetime.now().astimezone().isoformat(timespec="seconds"))
    record.save()
    waiting = deque(c.name for c in plan.captures)
    jobs = {name: plan.jobs(name, engine.has_gpu) for name in waiting}
    active: set[str] = set()
    stopping = False
    t0 = time.perf_counter()

    def fill() -> None:
        while waiting and not stopping and len(active) < CAPTURES_IN_FLIGHT_PER_SLOT * engine.slots:
            name = waiting.popleft()
            active.add(name)
            engine.submit(jobs[name][0])

    fill()
    while engine.outstanding:
        outcome = engine.wait()
        record.outcomes.append(outcome)
        record.wall_seconds = round(time.perf_counter() - t0, 3)
        record.save()
        on_outcome(outcome)
        if outcome.status == "failed":
            active.discard(outcome.capture)
            stopping = stopping or not keep_going
        elif outcome.position == len(STAGES):
            active.discard(outcome.capture)
        elif not stopping:
            engine.submit(jobs[outcome.capture][outcome.position])
        else:
            active.discard(outcome.capture)
        fill()
    return record


@dataclass
class CaptureRow:
    name: str
    cells: dict[str, str]  # stage -> what happened / its state
    note: str  # the model, or what failed and why
    failed: bool = False

    @property
    def done(self) -> bool:
        return not self.failed and all(v in ("ran", "cached", "done") for v in self.cells.values())


def run_rows(record: BatchRecord) -> list[CaptureRow]:
    """The table of one batch: ran / cached / FAILED / - (not reached) per capture and stage."""
    rows = []
    for name in record.captures:
        outcomes = record.last_outcomes(name)
        cells = {stage: outcomes[stage].status if stage in outcomes else "-" for stage in STAGE_NAMES}
        failed = next((o for o in outcomes.values() if o.status == "failed"), None)
        if failed:
            cells[failed.stage] = "FAILED"
            note = f"{failed.stage}: {failed.error}"
        elif len(outcomes) == len(STAGES):
            note = str(record.out / f"{name}.glb")
        else:
            note = "not finished (the batch stopped after a failure)"
        rows.append(CaptureRow(name, cells, note, failed is not None))
    return rows


def _stage_cell(workdir: Path, stage: str, failure: StageOutcome | None) -> str:
    manifest = read_manifest(workdir / stage)
    if failure is not None and failure.stage == stage and (
            manifest is None or dt.datetime.fromisoformat(manifest["started"]).timestamp() < failure.started - 1):
        return "FAILED"
    if (workdir / ".tmp" / stage).exists():
        return "running"
    return "done" if manifest else "not run"


def status_rows(out: Path) -> list[CaptureRow]:
    """The table of OUT from its stage manifests (safe while a batch runs: it only reads):
    done / running / not run per stage, and the failures that batch.json recorded."""
    out = Path(out)
    record = BatchRecord.load(out)
    names = record.captures if record else sorted(p.name[:-len(".neroic")] for p in out.glob("*.neroic")
                                                  if (p / "config.toml").exists())
    if not names:
        raise NeroicError(f"{out} holds no batch output (no {RECORD_NAME}, no NAME.neroic workdirs)")
    failures = record.failures() if record else {}
    rows = []
    for name in names:
        workdir, failure = out / f"{name}.neroic", failures.get(name)
        cells = {stage: _stage_cell(workdir, stage, failure) for stage in STAGE_NAMES}
        if "FAILED" in cells.values():
            rows.append(CaptureRow(name, cells, f"{failure.stage}: {failure.error}", True))
        elif all(v == "done" for v in cells.values()) and (out / f"{name}.glb").exists():
            rows.append(CaptureRow(name, cells, str(out / f"{name}.glb")))
        else:
            rows.append(CaptureRow(name, cells, "not finished"))
    return rows


def format_table(rows: list[CaptureRow]) -> str:
    """capture x stage, then the model or the reason of a failure (its first line)."""
    width = max([len("capture")] + [len(r.name) for r in rows]) + 2
    cols = {s: max(len(s), *(len(r.cells[s]) for r in rows)) + 2 for s in STAGE_NAMES}
    lines = ["capture".ljust(width) + "".join(s.ljust(cols[s]) for s in STAGE_NAMES) + "result"]
    for r in rows:
        first = r.note.splitlines()[0] if r.note else ""
        lines.append(r.name.ljust(width) + "".join(r.cells[s].ljust(cols[s]) for s in STAGE_NAMES) + first)
    lines.append(f"{sum(r.done for r in rows)} of {len(rows)} captures done, {sum(r.failed for r in rows)} failed")
    return "\n".join(lines)


def make_engine(kind: str, address: str | None, cpus: int | None, gpus: int | None, cpus_per_stage: int,
                max_retries: int):
    from pipeline.batch_engines import LocalEngine, RayEngine

    if kind == "ray":
        return RayEngine(address, cpus, gpus, cpus_per_stage, max_retries)
    return LocalEngine(cpus, gpus, cpus_per_stage, max_retries)
