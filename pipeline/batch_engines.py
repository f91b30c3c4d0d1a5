"""Where a batch's stage jobs run: this machine (`LocalEngine`) or a Ray cluster (`RayEngine`).

Both take StageJobs in any order and hand back StageOutcomes as they finish:

    engine = LocalEngine(cpus=8, gpus=1, cpus_per_stage=2, max_retries=3)
    engine.submit(job)
    outcome = engine.wait()     # blocks until some job is done
    engine.close()

Resources: every job asks for `cpus_per_stage` CPUs, which is also its thread count; a GPU
stage asks for one GPU as well when the engine has any, and sees only that GPU
(CUDA_VISIBLE_DEVICES); every other stage sees none. A request that no machine can meet is
refused before anything runs, with one message (Ray would otherwise wait forever).
Retries: a stage process killed by a signal, or a Ray worker lost mid-stage, is retried up to
`max_retries` times; the stage cache makes a retry redo only the unfinished stage.

Ray is optional (`pip install 'neroic[ray]'`) and imported only by RayEngine. Without an address
it starts an embedded one-machine cluster bound to 127.0.0.1 (Ray listens on every interface
otherwise); with an address it joins a running cluster (`ray start`), whose nodes must have
neroic installed and see the workdirs at the same paths (a shared filesystem).
"""
from __future__ import annotations

import logging
import os
import queue
import socket
import subprocess
import threading

from pipeline.batch_stage import StageJob, StageOutcome, StageProcessLost, run_stage_job
from stages.errors import NeroicError

log = logging.getLogger("neroic")


def failed_outcome(job: StageJob, error: str) -> StageOutcome:
    return StageOutcome(job.capture, job.stage, job.position, "failed", error=error)


def visible_gpus() -> list[str]:
    """CUDA device ids this process may use: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(l for l in listing.splitlines() if l.startswith("GPU "))]


def check_reachable(address: str) -> None:
    """Fail at once when nothing answers at HOST:PORT (Ray would retry for about ten minutes)."""
    if address == "auto":  # Ray looks for a cluster started on this machine and says if there is none
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise NeroicError(f"--address {address}: expected auto or HOST:PORT (the head's `ray start --port`)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as e:
        raise NeroicError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}",
                          hint="is `ray start --head` running there, and is the port open?") from None


def _too_big(cpus_per_stage: int, largest: float, where: str) -> NeroicError:
    return NeroicError(f"each stage asks for {cpus_per_stage} CPUs, but {where} has only {largest:g}",
                       hint="lower --cpus-per-stage (or give the machine more CPUs with --cpus)")


class LocalEngine:
    """Stage processes on this machine, as many at once as the CPUs and GPUs allow."""

    name = "local"

    def __init__(self, cpus: int | None, gpus: int | None, cpus_per_stage: int, max_retries: int):
        self.cpus = cpus or os.cpu_count() or 1
        detected = visible_gpus()
        count = len(detected) if gpus is None else gpus
        # ids past the detected ones are logical: the stage sees a device number torch may not find
        self.gpu_ids = (detected + [str(i) for i in range(len(detected), count)])[:count]
        if cpus_per_stage > self.cpus:
            raise _too_big(cpus_per_stage, self.cpus, "this machine (--cpus)")
        self.cpus_per_stage, self.max_retries = cpus_per_stage, max_retries
        self.node = socket.gethostname()
        self._free_cpus, self._free_gpus = self.cpus, list(self.gpu_ids)
        self._waiting: list[StageJob] = []
        self._running = 0
        self._done: queue.Queue = queue.Queue()

    @property
    def slots(self) -> int:
        return self.cpus // self.cpus_per_stage

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpu_ids)

    @property
    def outstanding(self) -> int:
        return len(self._waiting) + self._running

    def describe(self) -> str:
        return (f"local engine: {self.cpus} CPUs, {len(self.gpu_ids)} GPU(s), "
                f"{self.cpus_per_stage} CPU(s) per stage")

    def submit(self, job: StageJob) -> None:
        self._waiting.append(job)
        self._start_ready()

    def _start_ready(self) -> None:
        """Start waiting jobs that fit, later stages first (a capture finishes before new ones start)."""
        for job in sorted(self._waiting, key=lambda j: -j.position):
            if self._free_cpus < self.cpus_per_stage:
                return
            gpu = []
            if job.gpu and self.gpu_ids:
                if not self._free_gpus:
                    continue
                gpu = [self._free_gpus.pop(0)]
            self._free_cpus -= self.cpus_per_stage
            self._waiting.remove(job)
            self._running += 1
            threading.Thread(target=self._work, args=(job, gpu), name=f"{job.capture}-{job.stage}",
                             daemon=True).start()

    def _work(self, job: StageJob, gpu: list[str]) -> None:
        outcome = None
        for attempt in range(self.max_retries + 1):
            try:
                outcome = run_stage_job(job, self.cpus_per_stage, gpu, self.node)
                break
            except StageProcessLost as e:
                outcome = failed_outcome(job, f"{e} ({attempt + 1} tries)")
                if attempt < self.max_retries:
                    log.warning("%s; retrying", e)
            except Exception as e:  # noqa: BLE001 - reported in the table, not lost in a thread
                outcome = failed_outcome(job, f"internal error: {type(e).__name__}: {e}")
                break
        self._done.put((outcome, gpu))

    def wait(self) -> StageOutcome:
        outcome, gpu = self._done.get()
        self._running -= 1
        self._free_cpus += self.cpus_per_stage
        self._free_gpus.extend(gpu)
        self._start_ready()
        return outcome

    def cancel(self) -> None:
        """Drop the jobs not started; running stage processes end with this process (or Ctrl-C)."""
        self._waiting.clear()

    def close(self) -> None:
        self.cancel()


def _ray_stage_task(job: StageJob, threads: int) -> StageOutcome:
    """The body of a Ray task: the stage process, on the GPU Ray assigned (if any)."""
    import ray

    context = ray.get_runtime_context()
    gpu_ids = [str(g) for g in context.get_accelerator_ids().get("GPU", [])]
    return run_stage_job(job, threads, gpu_ids, context.get_node_id())


class RayEngine:
    """One Ray task per stage job; Ray places it on a node with the CPUs (and GPU) it asks for."""

    name = "ray"

    def __init__(self, address: str | None, cpus: int | None, gpus: int | None, cpus_per_stage: int,
                 max_retries: int):
        if address is None:  # read when ray is imported: makes Ray bind its servers to loopback
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        else:
            check_reachable(address)
        try:
            import ray
        except ImportError:
            raise NeroicError("--engine ray needs Ray, which is not installed",
                              hint="pip install 'neroic[ray]' (or use --engine local)") from None
        self._ray = ray
        self.address, self.cpus_per_stage, self.max_retries = address, cpus_per_stage, max_retries
        quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        try:
            if address is None:
                ray.init(address="local", num_cpus=cpus, num_gpus=gpus, _node_ip_address="127.0.0.1", **quiet)
            else:
                ray.init(address=address, **quiet)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise NeroicError(f"cannot connect to the Ray cluster at {address}: {e}",
                              hint="is `ray start --head` running there? A cluster with token authentication "
                                   "(Ray's default) also needs RAY_AUTH_MODE=token and its token here "
                                   "(~/.ray/auth_token or RAY_AUTH_TOKEN); see the README's batch section") from None
        self._task = ray.remote(_ray_stage_task)
        self._jobs: dict = {}  # ObjectRef -> StageJob
        self.nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        self.has_gpu = any(n.get("GPU", 0) >= 1 for n in self.nodes)
        try:
            self._check_resources()
        except NeroicError:
            self.close()
            raise

    def _check_resources(self) -> None:
        """Refuse requests no node can meet: Ray would keep such a task waiting forever."""
        where = "this machine's Ray cluster (--cpus)" if self.address is None else "every node of the cluster"
        largest = max((n.get("CPU", 0) for n in self.nodes), default=0)
        if largest < self.cpus_per_stage:
            raise _too_big(self.cpus_per_stage, largest, where)
        if self.has_gpu:
            gpu_cpus = max(n.get("CPU", 0) for n in self.nodes if n.get("GPU", 0) >= 1)
            if gpu_cpus < self.cpus_per_stage:
                raise NeroicError(f"each stage asks for {self.cpus_per_stage} CPUs, but the cluster's GPU nodes "
                                  f"have at most {gpu_cpus:g}, so its GPU stages could never start",
                                  hint="lower --cpus-per-stage, or give the GPU nodes more CPUs (ray start --num-cpus)")

    @property
    def slots(self) -> int:
        return int(sum(n.get("CPU", 0) // self.cpus_per_stage for n in self.nodes)) or 1

    @property
    def outstanding(self) -> int:
        return len(self._jobs)

    def describe(self) -> str:
        cpus = sum(n.get("CPU", 0) for n in self.nodes)
        gpus = sum(n.get("GPU", 0) for n in self.nodes)
        where = "Ray cluster on 127.0.0.1" if self.address is None else f"Ray cluster at {self.address}"
        return (f"{where}: {len(self.nodes)} node(s), {cpus:g} CPUs, {gpus:g} GPU(s), "
                f"{self.cpus_per_stage} CPU(s) per stage" + ("" if self.has_gpu else "; no GPU: every stage on CPUs"))

    def submit(self, job: StageJob) -> None:
        ref = self._task.options(
            num_cpus=self.cpus_per_stage, num_gpus=1 if job.gpu and self.has_gpu else 0,
            max_retries=self.max_retries, retry_exceptions=[StageProcessLost], name=f"{job.capture} {job.stage}",
        ).remote(job, self.cpus_per_stage)
        self._jobs[ref] = job

    def wait(self) -> StageOutcome:
        ray = self._ray
        ready, _ = ray.wait(list(self._jobs), num_returns=1)
        job = self._jobs.pop(ready[0])
        tries = f"{self.max_retries + 1} tries"
        try:
            return ray.get(ready[0])
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, StageProcessLost):
                return failed_outcome(job, f"{e.cause} ({tries})")
            return failed_outcome(job, f"internal error: {type(e.cause).__name__}: {e.cause}")
        except ray.exceptions.RayError as e:  # worker or node lost more often than retries allow
            return failed_outcome(job, f"its Ray worker was lost ({tries}): {type(e).__name__}")

    def cancel(self) -> None:
        """Stop every job now (their stage processes die with their workers)."""
        for ref in list(self._jobs):
            self._ray.cancel(ref, force=True)
        self._jobs.clear()

    def close(self) -> None:
        self._ray.shutdown()
