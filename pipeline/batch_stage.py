"""One stage of one capture, as a batch engine runs it: `neroic stage NAME --workdir ...` in a
subprocess, so a crash or leak of pycolmap, onnxruntime or torch stays in that process.

    job = StageJob("cap17", "geometry", 4, Path("out/cap17.neroic"), Path("out/cap17.glb"), overrides, gpu=True)
    outcome = run_stage_job(job, threads=2, gpu_ids=["0"], node="host-a")

The subprocess gets `threads` as NEROIC_THREADS, OMP_NUM_THREADS and MKL_NUM_THREADS (the runner
hands it to torch, onnxruntime and COLMAP) and sees only `gpu_ids` (CUDA_VISIBLE_DEVICES; empty for
a CPU stage). It dies with the process that started it (Linux), so a killed engine worker leaves
no orphan behind. The stage cache decides everything: a stage whose fingerprint matches does
nothing (outcome "cached"; checked here first, so that it costs no process), so retrying or
rerunning a job is always safe.

A stage that fails (exit status 1: bad photos, a stage error) gives a "failed" outcome with the
stage's own message; a stage process killed by a signal raises `StageProcessLost`, which engines
retry. After the last stage the model is copied to `job.model` and the capture's report written.
"""
from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.cache import REPO_ROOT, code_fingerprint, hash_json, read_manifest
from pipeline.workdir import Workdir
from stages import STAGE_NAMES, STAGES, get_stage
from stages.errors import NeroicError

log = logging.getLogger("neroic")


@dataclass(frozen=True)
class StageJob:
    capture: str
    stage: str
    position: int  # 1-based place of the stage in the pipeline, for "cap17 geometry 4/7"
    workdir: Path
    model: Path  # where the capture's GLB goes once its last stage is done
    overrides: tuple[str, ...] = ()  # the --set values of every stage of the capture (run.profile pinned)
    gpu: bool = False  # the stage asks for a GPU (when the engine has one)
    code: str = ""  # the submitting machine's code_version(): every node must run the same stages


@dataclass
class StageOutcome:
    capture: str
    stage: str
    position: int
    status: str  # "ran", "cached" (fingerprint matched: nothing computed) or "failed"
    seconds: float = 0.0  # wall time of the stage process
    started: float = 0.0  # epoch seconds, around the stage process
    finished: float = 0.0
    node: str = ""  # where it ran (engine-specific id)
    gpus: str = ""  # the CUDA_VISIBLE_DEVICES it saw
    threads: int = 0
    figure: str = ""  # the stage's one-line result
    error: str = ""  # why it failed


class StageProcessLost(Exception):
    """The stage process was killed by a signal (OOM killer, a crash, a lost worker): worth a retry."""


def stage_command(job: StageJob, gpu_ids: list[str]) -> list[str]:
    """`neroic stage`; without a GPU it says --device cpu (a stage that sees no GPU must not ask for
    one, and its process then skips importing torch just to look for one)."""
    device = () if gpu_ids else ("--device", "cpu")
    return [sys.executable, "-m", "pipeline", "stage", job.stage, "--workdir", str(job.workdir), "--quiet",
            *(arg for o in job.overrides for arg in ("--set", o)), *device]


def stage_environment(threads: int, gpu_ids: list[str]) -> dict[str, str]:
    """The stage process's environment: this neroic's code first on the path, the threads, the GPUs."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, CUDA_VISIBLE_DEVICES=",".join(gpu_ids))
    if threads > 0:
        env.update(NEROIC_THREADS=str(threads), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def _prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: a child may outlive a killed worker
        return None


_PRCTL = _prctl()  # looked up here, not in the forked child, where the loader's lock may be held
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it when its parent dies."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGKILL))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def error_message(stderr: str, returncode: int) -> str:
    """The stage's own `error: ...` message (with its hint), else the end of its stderr."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("error: "):
            return "\n".join([lines[i][len("error: "):], *lines[i + 1:]]).strip()
    tail = "\n".join(lines[-3:])
    return f"exit status {returncode}" + (f": {tail}" if tail else "")


def _same_run(before: dict | None, after: dict | None) -> bool:
    keys = ("fingerprint", "output_hash", "started")
    return bool(before and after) and all(before.get(k) == after.get(k) for k in keys)


def deliver(job: StageJob, stage_ran: bool) -> None:
    """Copy the finished model to job.model (atomically) and (re)write the capture's report."""
    model = job.workdir / STAGE_NAMES[-1] / "model.glb"
    tmp = job.model.with_name(f".{job.model.name}.tmp")
    shutil.copyfile(model, tmp)
    os.replace(tmp, job.model)
    if stage_ran or not (job.workdir / "report.html").exists():
        from pipeline.report import write_report

        try:
            write_report(job.workdir, f"neroic: {job.capture}")
        except Exception:  # a missing report never fails the capture
            log.warning("could not write the report of %s", job.capture, exc_info=True)


def code_version() -> str:
    """A hash of every stage's code, as fingerprints see it: nodes that differ would disagree on
    what is up to date (each redoing the other's work, or refusing it as stale)."""
    return hash_json([code_fingerprint(spec.module) for spec in STAGES])


def up_to_date(job: StageJob) -> dict | None:
    """The stage's manifest if its fingerprint matches under the job's settings, else None. The
    settings are those `neroic stage` resolves (the profile is pinned in the overrides, and
    run.device enters no fingerprint), so this agrees with the stage process, without starting it."""
    from pipeline.config import resolve
    from pipeline.runner import Pipeline

    workdir = Workdir(job.workdir)
    try:
        settings = resolve(workdir.config_path, None, job.overrides)
        state = Pipeline(workdir, settings, workdir.read_sources()).state(get_stage(job.stage))
    except NeroicError:  # the stage process will say what is wrong
        return None
    return state.manifest if state.status == "done" else None


def run_stage_job(job: StageJob, threads: int, gpu_ids: list[str], node: str) -> StageOutcome:
    if job.code and job.code != code_version():
        return StageOutcome(job.capture, job.stage, job.position, "failed", node=node, error=(
            f"node {node} runs other neroic code ({REPO_ROOT}) than the machine that submitted the batch\n"
            "  hint: install the same neroic version on every node of the cluster"))
    cached = up_to_date(job)
    if cached is not None:
        now = time.time()
        outcome = StageOutcome(job.capture, job.stage, job.position, "cached", 0.0, now, now, node,
                               ",".join(gpu_ids), threads, cached.get("summary", {}).get("figure", ""))
        if job.stage == STAGE_NAMES[-1]:
            deliver(job, stage_ran=False)
        return outcome
    before = read_manifest(job.workdir / job.stage)
    started = time.time()
    # cwd: the workdir, so that `-m pipeline` imports this code (PYTHONPATH), never a `pipeline` in the cwd
    done = subprocess.run(stage_command(job, gpu_ids), env=stage_environment(threads, gpu_ids), cwd=job.workdir,
                          capture_output=True, text=True, preexec_fn=_die_with_parent)
    finished = time.time()
    outcome = StageOutcome(job.capture, job.stage, job.position, "failed", round(finished - started, 3), started,
                           finished, node, ",".join(gpu_ids), threads)
    if done.returncode < 0:
        raise StageProcessLost(f"{job.capture} {job.stage}: the stage process was killed by "
                               f"{_signal_name(-done.returncode)}")
    if done.returncode != 0:
        outcome.error = error_message(done.stderr, done.returncode)
        return outcome
    after = read_manifest(job.workdir / job.stage)
    outcome.status = "cached" if _same_run(before, after) else "ran"
    outcome.figure = (after or {}).get("summary", {}).get("figure", "")
    if job.stage == STAGE_NAMES[-1]:
        deliver(job, outcome.status == "ran")
    return outcome
