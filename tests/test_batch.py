"""`neroic batch` on rendered captures, through the command line: a local Ray cluster with 2 CPUs
and one logical GPU runs 3 tiny captures and a capture of bad photos; one stage's Ray worker is
killed mid-stage and the stage retried; a second batch computes nothing; the local engine sees the
same fingerprints. Each stage of a capture runs in its own process, so the tests read what
happened from the workdirs (manifests, neroic.log) and OUT/batch.json."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.batch import GPU_STAGES, find_captures
from pipeline.batch_stage import error_message
from pipeline.runner import thread_budget
from stages import STAGE_NAMES

REPO = Path(__file__).resolve().parent.parent
CAPTURES = ("cap1", "cap2", "cap3")
TINY = ["--profile", "preview"] + [arg for setting in (  # a logical GPU must not pick the gpu profile
    "geometry.steps=30", "geometry.eikonal_points=2048", "geometry.max_seconds=0", "geometry.target_samples=8192",
    "geometry.hash_levels=8", "geometry.hash_log2_table=12", "geometry.steps_across=64",
    "geometry.occupancy_resolution=32", "geometry.density_grid_resolution=32", "geometry.heldout_image_size=48",
    "normals.resolution=32", "normals.tighten_resolutions=[32]",
    "material.steps=10", "material.shadows=false", "material.contact_sheet_photos=2",
    "material.max_pixels_per_photo=500", "material.hash_log2_table=12",
    "export.resolution=32", "export.texture_size=64", "export.face_budget=2000", "export.turntable_frames=0",
    "export.screenshot=false",
) for arg in ("--set", setting)]


def batch_command(*args) -> list[str]:
    return [sys.executable, "-m", "pipeline", "batch", *map(str, args)]


def batch_env() -> dict[str, str]:
    """One thread per process (the test machine has 2 cores); this checkout's code in every process."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))


def neroic_batch(*args, timeout=900) -> subprocess.CompletedProcess:
    done = subprocess.run(batch_command(*args), capture_output=True, text=True, timeout=timeout, env=batch_env(),
                          cwd=REPO)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def captures(tmp_path_factory) -> Path:
    """CAPTURES/: three rendered Spot captures (RGBA photos + transforms.json) and one of junk files."""
    from tests.synthetic.spot_capture import make_spot_capture

    root = tmp_path_factory.mktemp("captures")
    for seed, name in enumerate(CAPTURES):
        make_spot_capture(root / name, size=48, n_train=12, n_heldout=0, lighting="constant", seed=seed,
                          supersample=1, nthreads=1)
    (root / "bad").mkdir()
    (root / "bad" / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (root / "bad" / "b.png").write_text("not a PNG")
    (root / "bad" / "notes.txt").write_text("not a photo")
    return root


def stage_processes(stage: str, under: Path) -> list[tuple[int, int, Path]]:
    """(pid, parent pid, workdir) of every running `neroic stage STAGE --workdir under/...`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0")]
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if "stage" in args and stage in args and "--workdir" in args:
            workdir = Path(args[args.index("--workdir") + 1])
            if workdir.is_relative_to(under):
                found.append((int(proc.name), ppid, workdir))
    return found


def command_line(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_mid_stage(batch: subprocess.Popen, stage: str, out: Path, kill_worker: bool) -> tuple[Path, str]:
    """Wait until a capture's STAGE has been computing for a second (a new "running stage" line in its
    log), then SIGKILL its Ray worker (the stage process's parent) or the stage process itself.
    Returns that capture's workdir and the killed process's command line."""
    def starts(workdir: Path) -> int:
        log = workdir / "neroic.log"
        return log.read_text().count(f"running stage {stage} (fingerprint") if log.exists() else 0

    before = {workdir: starts(workdir) for workdir in out.glob("*.neroic")}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and batch.poll() is None:
        for pid, worker, workdir in stage_processes(stage, out):
            if starts(workdir) > before.get(workdir, 0):
                time.sleep(1.0)
                victim = worker if kill_worker else pid
                victim_command = command_line(victim)
                os.kill(victim, signal.SIGKILL)
                for _ in range(100):  # the stage process dies (with its worker)
                    if not alive(pid):
                        return workdir, victim_command
                    time.sleep(0.1)
                pytest.fail(f"the {stage} process {pid} outlived its killed worker {worker}")
        time.sleep(0.2)
    pytest.fail(f"no {stage} stage started before the batch ended: {batch.poll()}")


def listening_addresses(root: int) -> set[str]:
    """The local addresses of the TCP sockets that process ROOT and its descendants listen on."""
    parents = {}
    for proc in Path("/proc").iterdir():
        try:
            parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError, IndexError):
            continue
    family, grown = {root}, True
    while grown:
        more = {pid for pid, parent in parents.items() if parent in family} - family
        family, grown = family | more, bool(more)
    inodes = set()
    for pid in family:
        try:
            fds = list((Path("/proc") / str(pid) / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(fd)
            except OSError:  # closed meanwhile
                continue
            if link.startswith("socket:["):
                inodes.add(link[len("socket:["):-1])
    found = set()
    for table, family_ in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in (Path("/proc/net") / table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                raw = bytes.fromhex(fields[1].split(":")[0])
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # per 32-bit word, host order
                found.add(socket.inet_ntop(family_, raw))
    return found


def log_counts(workdir: Path) -> dict[str, tuple[int, int]]:
    """stage -> (times started, times finished), from the workdir's neroic.log (appended to by every run)."""
    text = (workdir / "neroic.log").read_text()
    return {s: (text.count(f"running stage {s} (fingerprint"), text.count(f"stage {s} done in")) for s in STAGE_NAMES}


def manifests(workdir: Path) -> dict[str, dict]:
    return {s: json.loads((workdir / s / "manifest.json").read_text()) for s in STAGE_NAMES}


@pytest.fixture(scope="module")
def ray_batch(captures, tmp_path_factory):
    """The first Ray batch, with one geometry worker killed mid-stage: (out, stdout, killed workdir, worker command)."""
    pytest.importorskip("ray", reason="the Ray engine is an optional extra: pip install -e '.[ray]'")
    out = tmp_path_factory.mktemp("ray") / "out"
    batch = subprocess.Popen(batch_command(captures, "--out", out, "--engine", "ray", "--cpus", 2, "--gpus", 1,
                                           "--keep-going", *TINY),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(batch_env(), OMP_NUM_THREADS="2"), cwd=REPO)
    try:
        killed, worker = kill_mid_stage(batch, "geometry", out, kill_worker=True)
        listening = listening_addresses(batch.pid)  # the embedded cluster's servers, while it runs
        stdout, stderr = batch.communicate(timeout=900)
    finally:
        if batch.poll() is None:
            batch.kill()
    assert "Traceback" not in stderr, stderr[-3000:]
    assert batch.returncode == 1, stdout + stderr  # the bad capture failed
    return out, stdout, stderr, killed, worker, listening


def test_ray_batch_retries_a_killed_worker_and_fails_only_the_bad_capture(ray_batch):
    out, stdout, stderr, killed, worker, listening = ray_batch
    assert "ray::" in worker, worker  # what was killed was a Ray worker process
    assert listening and listening <= {"127.0.0.1", "::1", "::ffff:127.0.0.1"}, listening  # Ray bound to loopback
    table = stdout[stdout.index("capture  "):]
    rows = {line.split()[0]: line for line in table.splitlines()[1:] if line.split()}
    for name in CAPTURES:
        assert rows[name].split()[1:8] == ["ran"] * 7, table
        assert (out / f"{name}.glb").read_bytes()[:4] == b"glTF"
    assert rows["bad"].split()[1] == "FAILED" and "usable photo" in rows["bad"], table
    assert "1 of 4 captures failed: bad" in stderr
    assert "3 of 4 captures done, 1 failed" in table

    for name in CAPTURES:  # every stage ran to completion exactly once; only the killed one started twice
        workdir = out / f"{name}.neroic"
        counts = log_counts(workdir)
        for stage in STAGE_NAMES:
            started = 2 if (workdir == killed and stage == "geometry") else 1
            assert counts[stage] == (started, 1), (name, stage, counts)
        stamps = manifests(workdir)
        for earlier, later in zip(STAGE_NAMES, STAGE_NAMES[1:]):  # one chain: each stage after the one before
            assert stamps[later]["started"] >= stamps[earlier]["started"], (name, earlier, later)


def test_ray_batch_gives_the_gpu_to_one_field_stage_at_a_time(ray_batch):
    out = ray_batch[0]
    record = json.loads((out / "batch.json").read_text())
    outcomes = [o for o in record["outcomes"] if o["status"] == "ran"]
    assert len(outcomes) == 3 * 7
    for o in outcomes:
        assert o["gpus"] == ("0" if o["stage"] in GPU_STAGES else ""), o  # the other stages see no GPU
        assert o["threads"] == 1
    gpu = sorted((o["started"], o["finished"]) for o in outcomes if o["gpus"])
    for (_, end), (start, _) in zip(gpu, gpu[1:]):
        assert start >= end, gpu
    for name in CAPTURES:  # the batch ran with OMP_NUM_THREADS=2: the stage's single CPU won
        assert json.loads((out / f"{name}.neroic" / "export" / "export.json").read_text())["torch_threads"] == 1


def test_second_ray_batch_computes_nothing_and_local_engine_agrees(captures, ray_batch):
    out = ray_batch[0]
    before = {name: (manifests(out / f"{name}.neroic"), log_counts(out / f"{name}.neroic")) for name in CAPTURES}
    for engine in (["--engine", "ray", "--cpus", 2, "--gpus", 1], ["--engine", "local", "--cpus", 2]):
        again = neroic_batch(captures, "--out", out, "--keep-going", *engine, *TINY)
        assert again.returncode == 1, again.stderr
        table = again.stdout[again.stdout.index("capture  "):]
        for name in CAPTURES:
            row = next(line for line in table.splitlines() if line.startswith(name))
            assert row.split()[1:8] == ["cached"] * 7, table
            assert (manifests(out / f"{name}.neroic"), log_counts(out / f"{name}.neroic")) == before[name]

    status = neroic_batch("--out", out, "--status")
    assert status.returncode == 0
    for name in CAPTURES:
        assert next(line for line in status.stdout.splitlines() if line.startswith(name)).split()[1:8] == ["done"] * 7
    assert "bad      FAILED" in status.stdout
    page = (out / "report.html").read_text()
    assert all(f"<b>{name}</b>" in page for name in (*CAPTURES, "bad"))
    assert page.count("data:image/jpeg;base64") == 3  # a thumbnail per finished capture


def test_local_engine_retries_a_killed_stage_process(captures, ray_batch):
    """A stage process killed by a signal (the OOM killer, a crash) is retried; only what is missing reruns."""
    out = ray_batch[0]
    workdir = out / "cap1.neroic"
    shutil.rmtree(workdir / "export")  # as if lost: cap1's export must run again
    (out / "cap1.glb").unlink()
    before = log_counts(workdir)
    batch = subprocess.Popen(batch_command(captures, "--out", out, "--keep-going", "--cpus", 2, *TINY),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=batch_env(), cwd=REPO)
    try:
        killed, command = kill_mid_stage(batch, "export", out, kill_worker=False)
        stdout, stderr = batch.communicate(timeout=600)
    finally:
        if batch.poll() is None:
            batch.kill()
    assert killed == workdir and "stage export" in command
    assert batch.returncode == 1 and "killed by SIGKILL; retrying" in stderr, stderr
    assert "cap1 export 7/7 ran" in stdout and (out / "cap1.glb").exists()
    after = log_counts(workdir)
    assert after["export"] == (before["export"][0] + 2, before["export"][1] + 1)
    assert {s: after[s] for s in STAGE_NAMES[:-1]} == {s: before[s] for s in STAGE_NAMES[:-1]}


def test_ray_refuses_a_request_no_node_can_meet(captures, tmp_path):
    pytest.importorskip("ray", reason="the Ray engine is an optional extra: pip install -e '.[ray]'")
    done = neroic_batch(captures, "--out", tmp_path / "out", "--engine", "ray", "--cpus", 1, "--cpus-per-stage", 2,
                        timeout=300)
    assert done.returncode == 1
    assert "each stage asks for 2 CPUs, but this machine's Ray cluster (--cpus) has only 1" in done.stderr
    assert not (tmp_path / "out" / "batch.json").exists()  # nothing ran


def test_usage_errors_are_one_message(captures, tmp_path):
    for args, code, message in (
        ((captures, "--out", tmp_path / "o", "--address", "auto"), 2, "add --engine ray"),
        (("--out", tmp_path / "o"), 2, "give the CAPTURES folder"),
        ((captures, "--out", tmp_path / "o", "--cpus", 1, "--cpus-per-stage", 2), 1, "each stage asks for 2 CPUs"),
        ((captures, "--out", tmp_path / "o", "--set", "geometry.nosuch=1"), 2, "unknown config key geometry.nosuch"),
        ((captures / "bad", "--out", tmp_path / "o"), 1, "holds no capture folders"),
        (("--out", tmp_path / "nothing", "--status"), 1, "holds no batch output"),
        ((captures, "--out", tmp_path / "o", "--engine", "ray", "--address", "127.0.0.1:1"), 1,
         "cannot reach the Ray cluster at 127.0.0.1:1"),
    ):
        done = neroic_batch(*args, timeout=120)
        assert done.returncode == code and message in done.stderr, (args, done.stderr)


def test_capture_layouts(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "01.jpg").write_bytes(b"")
    nested = tmp_path / "nested"
    (nested / "images").mkdir(parents=True)
    (nested / "masks").mkdir()
    (nested / "sparse" / "0").mkdir(parents=True)
    (nested / "sparse" / "0" / "cameras.bin").write_bytes(b"")
    (tmp_path / ".hidden").mkdir()
    found, plain = find_captures(tmp_path)  # sorted by name; hidden folders ignored
    assert (found.name, found.photos, found.masks, found.poses) == ("nested", nested / "images", nested / "masks",
                                                                     nested / "sparse" / "0")
    assert (plain.name, plain.photos, plain.masks, plain.poses) == ("plain", tmp_path / "plain", None, None)


def test_rembg_session_follows_the_thread_budget():
    from stages.masks import RembgMasker, weights_home

    if not (weights_home() / "u2netp.onnx").exists():
        pytest.skip("the u2netp weights are not installed (make setup installs them)")
    options = RembgMasker("u2netp", threads=1)._session.inner_session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)


def test_thread_budget_and_stage_error_message(monkeypatch):
    monkeypatch.setenv("NEROIC_THREADS", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert thread_budget() == 3
    monkeypatch.delenv("NEROIC_THREADS")
    assert thread_budget() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    assert thread_budget() == 0
    stderr = "warning: skipped x.jpg\nerror: only 0 usable photo(s)\n  hint: add photos\n"
    assert error_message(stderr, 1) == "only 0 usable photo(s)\n  hint: add photos"
    assert error_message("Segmentation fault\n", 139) == "exit status 139: Segmentation fault"
