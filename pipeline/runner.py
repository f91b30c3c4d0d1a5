"""The stage runner: decides what is up to date, runs the rest in order, publishes atomically.

    pipe = Pipeline(Workdir(path), settings, sources)
    pipe.run(until="poses", force={"masks"})   # runs what is stale, skips what is done
    pipe.states()                              # done / stale / not run, for `neroic status`
"""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import importlib
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline import cache
from pipeline.config import TEMPLATE_DIR
from stages.context import Sources, StageContext
from stages.errors import NeroicError
from pipeline.workdir import Workdir
from stages import STAGES, StageSpec, get_stage

log = logging.getLogger("neroic")


class StageInterrupted(Exception):
    """Ctrl-C during a stage; finished stages are untouched and the next run resumes."""

    def __init__(self, stage: str):
        super().__init__(stage)
        self.stage = stage


@dataclass
class StageState:
    spec: StageSpec
    status: str  # "done", "stale", "not run"
    manifest: dict | None
    reason: str = ""


@dataclass
class StageResult:
    name: str
    action: str  # "ran" or "skipped"
    seconds: float
    figure: str
    peak_rss_mb: float | None = None
    peak_gpu_mb: float | None = None


def release_freed_memory() -> None:
    """Hand memory that earlier stages freed back to the system (glibc keeps freed heap pages in
    the process). Without it a run's later stages report, and hold, the earlier ones' peaks: the
    skull's export peaked at 2.65 GB in a whole run, where the stage run on its own takes 1.56 GB."""
    import ctypes
    import gc

    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # a libc without malloc_trim (musl)
            ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak resident memory of this process while a stage runs (sampled from /proc)."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0

    def __enter__(self):
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


class GpuPeakMemory:
    """Peak CUDA memory allocated by torch while a stage runs (None on the CPU)."""

    def __init__(self, device: str):
        self.device, self.peak_mb = device, None

    def __enter__(self):
        if self.device == "cuda":
            import torch
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            import torch
            self.peak_mb = round(torch.cuda.max_memory_allocated() / 2**20, 1)


def out_of_memory(error: BaseException, stage: str, device: str) -> NeroicError | None:
    """One clear message for running out of (GPU or host) memory, or None for other errors."""
    if type(error).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (CUDA), without importing torch
        return NeroicError(f"the GPU ran out of memory in stage '{stage}'",
                           hint="close other programs using the GPU, use --profile preview (smaller batches and "
                                "grids), or run on the CPU with --device cpu; finished stages are kept")
    if isinstance(error, MemoryError) or "DefaultCPUAllocator: can't allocate memory" in str(error):
        return NeroicError(f"the computer ran out of memory in stage '{stage}' (on {device})",
                           hint="close other programs, use --profile preview, or lower ingest.max_size; "
                                "finished stages are kept")
    return None


def resolve_device(preference: str) -> str:
    if preference not in ("auto", "cpu", "cuda"):
        raise NeroicError(f"unknown device {preference!r}", hint="use auto, cpu or cuda")
    if preference == "cpu":
        return "cpu"
    import torch
    if torch.cuda.is_available():
        return "cuda"
    if preference == "cuda":
        raise NeroicError("--device cuda was asked for but PyTorch sees no CUDA device",
                          hint="install a CUDA build of torch, or use --device auto")
    return "cpu"


def thread_budget() -> int:
    """Threads a stage may use: $NEROIC_THREADS, else $OMP_NUM_THREADS (set by `neroic batch`,
    Ray and job schedulers), else 0 = each library's default (all cores)."""
    for name in ("NEROIC_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 0


@contextlib.contextmanager
def remembered_ctrl_c() -> Iterator[threading.Event]:
    """Ctrl-C raises KeyboardInterrupt as usual and is also remembered. When the signal lands
    while a finaliser runs, Python prints the exception and drops it; the stage must still not
    publish as if it had finished. Only in the main thread, and only where SIGINT has Python's
    own handler (a caller's SIG_IGN or handler is left alone)."""
    pressed = threading.Event()
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield pressed
        return

    def on_sigint(signum, frame):
        pressed.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class Pipeline:
    def __init__(self, workdir: Workdir, settings: dict, sources: Sources, quiet: bool = False):
        self.workdir, self.settings, self.sources, self.quiet = workdir, settings, sources, quiet
        self._source_hashes: dict[str, str | None] = {}
        self._device: str | None = None
        self._lock_depth = 0

    @contextlib.contextmanager
    def _working(self):
        """Hold the workdir for this process while stages run (reentrant), and on taking it,
        clean up what a crashed run left (so reading a workdir, e.g. `neroic status` while a
        stage runs, never touches a running stage's files)."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        with self.workdir.exclusive():
            for name in cache.recover(self.workdir.root, tuple(s.name for s in STAGES)):
                log.warning("restored the previous '%s' output after an interrupted publication", name)
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0

    # -- fingerprints -------------------------------------------------------------------
    def _source_hash(self, key: str) -> str | None:
        if key not in self._source_hashes:
            path = getattr(self.sources, key)
            if path is None:
                self._source_hashes[key] = None
            elif not Path(path).exists():
                raise NeroicError(f"the {key} path {path} does not exist")
            else:
                self._source_hashes[key] = cache.hash_tree(Path(path))
        return self._source_hashes[key]

    def fingerprint(self, spec: StageSpec) -> str | None:
        """None while an upstream stage has no up-to-date output."""
        upstream = {}
        for name in spec.needs:
            manifest = cache.read_manifest(self.workdir.stage_dir(name))
            if manifest is None:
                return None
            upstream[name] = manifest["output_hash"]
        return cache.hash_json({
            "stage": spec.name,
            "config": self.settings.get(spec.name, {}),
            "code": cache.code_fingerprint(spec.module),
            "upstream": upstream,
            "sources": {key: self._source_hash(key) for key in spec.sources},
        })

    def state(self, spec: StageSpec) -> StageState:
        manifest = cache.read_manifest(self.workdir.stage_dir(spec.name))
        if manifest is None:
            return StageState(spec, "not run", None)
        for name in spec.needs:
            if self.state(get_stage(name)).status != "done":
                return StageState(spec, "stale", manifest, f"upstream '{name}' is not up to date")
        if manifest.get("fingerprint") != self.fingerprint(spec):
            return StageState(spec, "stale", manifest, "its config, code or inputs changed")
        return StageState(spec, "done", manifest)

    def states(self) -> list[StageState]:
        return [self.state(spec) for spec in STAGES]

    # -- running --------------------------------------------------------------------------
    def run(self, until: str | None = None, force: frozenset[str] = frozenset(),
            on_result=None) -> list[StageResult]:
        results = []
        with self._working():
            for spec in STAGES:
                result = self.run_stage(spec, force=spec.name in force)
                results.append(result)
                if on_result:
                    on_result(result)
                if spec.name == until:
                    break
        return results

    def run_stage(self, spec: StageSpec, force: bool = False) -> StageResult:
        with self._working():
            return self._run_stage(spec, force)

    def _run_stage(self, spec: StageSpec, force: bool) -> StageResult:
        for name in spec.needs:
            upstream = self.state(get_stage(name))
            if upstream.status != "done":
                raise NeroicError(
                    f"stage '{spec.name}' needs stage '{name}', which is {upstream.status}"
                    + (f" ({upstream.reason})" if upstream.reason else ""),
                    hint=f"run `neroic stage {name}` or `neroic run` first")
        fingerprint = self.fingerprint(spec)
        manifest = cache.read_manifest(self.workdir.stage_dir(spec.name))
        if not force and manifest and manifest.get("fingerprint") == fingerprint:
            summary = manifest.get("summary", {})
            return StageResult(spec.name, "skipped", 0.0, summary.get("figure", ""))
        return self._execute(spec, fingerprint)

    def _execute(self, spec: StageSpec, fingerprint: str) -> StageResult:
        wd = self.workdir
        tmp, final = wd.tmp_dir(spec.name), wd.stage_dir(spec.name)
        try:
            checkpoints = self._checkpoints_for(spec.name, fingerprint)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            if self._device is None:
                self._device = resolve_device(self.settings["run"]["device"])
            ctx = StageContext(
                name=spec.name, workdir=wd.root, out=tmp, checkpoints=checkpoints,
                config=self.settings.get(spec.name, {}), settings=self.settings, sources=self.sources,
                device=self._device, inputs={n: wd.stage_dir(n) for n in spec.needs},
                log=logging.getLogger(f"neroic.{spec.name}"), quiet=self.quiet, threads=thread_budget())
            log.info("running stage %s (fingerprint %s)", spec.name, fingerprint[:12])
            started = dt.datetime.now().astimezone()
            t0 = time.perf_counter()
            release_freed_memory()
            with PeakMemory() as memory, GpuPeakMemory(self._device) as gpu_memory, remembered_ctrl_c() as ctrl_c:
                module = importlib.import_module(spec.module)
                if ctx.threads and "torch" in sys.modules:  # torch reads only OMP_NUM_THREADS by itself
                    sys.modules["torch"].set_num_threads(ctx.threads)
                summary = module.run(ctx) or {}
                if ctrl_c.is_set():  # pressed, but a library swallowed the exception
                    raise KeyboardInterrupt
            seconds = time.perf_counter() - t0
            readme = TEMPLATE_DIR / spec.name / "README.md"
            if readme.exists() and not (tmp / "README.md").exists():
                shutil.copy2(readme, tmp / "README.md")
            output_hash = cache.hash_json([fingerprint, cache.hash_tree(tmp, spec.records)])
            cache.write_json_atomic(tmp / cache.MANIFEST, {
                "stage": spec.name, "fingerprint": fingerprint, "output_hash": output_hash,
                "started": started.isoformat(timespec="seconds"), "seconds": round(seconds, 3),
                "peak_rss_mb": round(memory.peak / 2**20, 1), "peak_gpu_mb": gpu_memory.peak_mb, "device": self._device,
                "config": ctx.config, "summary": summary,
            })
            cache.publish(tmp, final, wd.trash)
        except KeyboardInterrupt:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StageInterrupted(spec.name) from None
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NeroicError(f"disk full while running stage '{spec.name}'",
                                  hint="free some space and rerun; finished stages are intact") from None
            raise
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            oom = out_of_memory(e, spec.name, self._device or "cpu")
            if oom is not None:
                raise oom from None
            raise
        shutil.rmtree(wd.checkpoint_dir(spec.name), ignore_errors=True)
        log.info("stage %s done in %.1f s: %s", spec.name, seconds, summary.get("figure", ""))
        return StageResult(spec.name, "ran", seconds, summary.get("figure", ""), memory.peak / 2**20, gpu_memory.peak_mb)

    def _checkpoints_for(self, name: str, fingerprint: str) -> Path:
        """A checkpoint folder that only survives while the stage's fingerprint is unchanged."""
        folder = self.workdir.checkpoint_dir(name)
        stamp = folder / "FINGERPRINT"
        if folder.exists() and (not stamp.exists() or stamp.read_text() != fingerprint):
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fingerprint)
        return folder
