"""The `neroic` command as a user meets it: exit codes, messages, caching, Ctrl-C."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import copy_photos, disc_photo, write_image

SET_SMALL = ["--set", "ingest.max_size=200"]
SMALL = [*SET_SMALL, "--quiet"]


def neroic(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)


def assert_one_clear_error(done, code, text):
    assert done.returncode == code, done.stderr
    assert text in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_empty_folder_two_photos_and_bad_out(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_clear_error(neroic("run", empty, "--out", tmp_path / "m.glb"), 1, "no files in")

    two = tmp_path / "two"
    two.mkdir()
    for i in range(2):
        write_image(two / f"{i}.jpg", disc_photo(seed=i)[0])
    (two / "notes.jpg").write_text("a text file named .jpg")
    done = neroic("run", two, "--out", tmp_path / "m.glb", *SMALL)
    assert_one_clear_error(done, 1, "only 2 usable photo(s)")
    assert "skipping notes.jpg" in done.stderr

    (tmp_path / "a_file").write_text("")
    assert_one_clear_error(neroic("run", two, "--out", tmp_path / "a_file" / "m.glb"), 2, "cannot write --out")
    assert_one_clear_error(neroic("run", two, "--out", tmp_path / "m.glb", "--set", "masks.nope=1"),
                           2, "unknown config key masks.nope")


def test_rerun_skips_and_a_masks_change_reruns_only_downstream(real_photos, tmp_path):
    out = tmp_path / "out" / "model.glb"
    first = neroic("run", real_photos, "--out", out, "--until", "masks", *SMALL)
    assert first.returncode == 0, first.stderr
    work = tmp_path / "out" / "model.neroic"
    ingest_manifest = (work / "ingest" / "manifest.json").read_text()

    again = neroic("run", real_photos, "--out", out, "--until", "masks", *SMALL)
    assert again.returncode == 0 and again.stdout.count("up to date") == 2, again.stdout

    changed = neroic("run", real_photos, "--out", out, "--until", "masks", *SMALL, "--set", "masks.threshold=200")
    assert "ingest    up to date" in changed.stdout and "masks     done" in changed.stdout, changed.stdout
    assert (work / "ingest" / "manifest.json").read_text() == ingest_manifest
    assert json.loads((work / "masks" / "masks.json").read_text())["threshold"] == 200

    status = neroic("status", "--workdir", work, *SET_SMALL)
    assert status.returncode == 0
    assert "ingest    done" in status.stdout and "masks     stale" in status.stdout  # --set is for one command


def test_stage_command_names_the_missing_upstream(real_photos, tmp_path):
    out, work = tmp_path / "k.glb", tmp_path / "k.neroic"
    (real_photos / "extra.jpg").write_text("not a photo")
    assert neroic("run", real_photos, "--out", out, "--until", "ingest", *SMALL).returncode == 0
    (real_photos / "extra.jpg").unlink()  # the photo folder changed: ingest is stale
    assert_one_clear_error(neroic("stage", "masks", "--workdir", work, *SET_SMALL), 1,
                           "needs stage 'ingest', which is stale")
    assert neroic("stage", "ingest", "--workdir", work, *SMALL).returncode == 0
    assert neroic("stage", "masks", "--workdir", work, *SMALL).returncode == 0

    for name in ("01.jpg", "02.jpg", "03.jpg"):
        (real_photos / name).unlink()
    fresh = tmp_path / "fresh"
    assert neroic("run", real_photos, "--out", out, "--workdir", fresh, *SMALL).returncode == 1
    assert_one_clear_error(neroic("stage", "masks", "--workdir", fresh), 1, "needs stage 'ingest', which is not run")
    assert_one_clear_error(neroic("status", "--workdir", tmp_path), 1, "is not a neroic workdir")


def _sigint_as_from_a_terminal():
    """A CI runner may start us with SIGINT ignored or blocked, which children inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_keeps_finished_stages_and_rerun_resumes(tmp_path):
    photos = copy_photos(tmp_path / "photos", 11)  # masks takes a few seconds
    out, work = tmp_path / "k.glb", tmp_path / "k.neroic"
    args = ["run", photos, "--out", out, "--until", "masks", "--set", "ingest.max_size=320"]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_as_from_a_terminal)
    deadline = time.time() + 300
    while not list((work / ".tmp" / "masks").glob("*.png")):  # rembg is loaded and working
        assert proc.poll() is None and time.time() < deadline, "masks stage never started"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    # 130, or death by SIGINT (-2) when a library re-raises it at exit: a shell shows 130 for both
    assert proc.returncode in (130, -signal.SIGINT), (proc.returncode, stderr[-600:])
    assert "interrupted during stage 'masks'" in stderr and "Traceback" not in stderr
    assert (work / "ingest" / "manifest.json").exists()
    assert not (work / "masks" / "manifest.json").exists()
    assert not (work / ".tmp" / "masks").exists()

    rerun = neroic(*args, "-q")
    assert rerun.returncode == 0, rerun.stderr
    assert "ingest    up to date" in rerun.stdout and "masks     done" in rerun.stdout


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ctrl_c_that_a_library_drops_still_stops_the_stage():
    """Python drops a KeyboardInterrupt raised while a finaliser runs (CI once saw a Ctrl-C during
    the masks stage end in exit 0 and a published stage); the runner remembers the signal."""
    from pipeline.runner import remembered_ctrl_c

    class Finaliser:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler runs here and its exception is printed and dropped

    # as in `neroic`; a library another test loaded may have put its own handler in
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with remembered_ctrl_c() as pressed:
            Finaliser()
        assert pressed.is_set()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 4 MB tmpfs (needs root, as on CI); the test is skipped where mounting is not allowed."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mount],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", mount], check=False)


def test_full_disk_keeps_finished_stages(real_photos, tiny_disk):
    work, out = tiny_disk / "work", tiny_disk / "k.glb"
    args = ("run", real_photos, "--out", out, "--workdir", work, *SMALL)
    assert neroic(*args, "--until", "ingest").returncode == 0
    ingest_files = sorted(p.name for p in (work / "ingest" / "images").iterdir())
    filler = tiny_disk / "filler"
    with open(filler, "wb") as f:  # leave almost nothing free
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    done = neroic(*args, "--until", "masks")
    assert_one_clear_error(done, 1, "disk full while running stage 'masks'")
    assert sorted(p.name for p in (work / "ingest" / "images").iterdir()) == ingest_files
    assert (work / "ingest" / "manifest.json").exists() and not (work / ".tmp" / "masks").exists()
    filler.unlink()
    again = neroic(*args, "--until", "masks")
    assert again.returncode == 0 and "ingest    up to date" in again.stdout


def test_running_out_of_memory_is_one_message():
    """What torch raises when memory runs out (on the CPU: a RuntimeError from its allocator; on
    CUDA: torch.OutOfMemoryError) becomes a NeroicError with what to try, not an internal error."""
    import torch

    from pipeline.runner import out_of_memory

    try:
        torch.empty(1 << 62, dtype=torch.uint8)
    except RuntimeError as e:
        host = out_of_memory(e, "geometry", "cpu")
    assert host is not None and "ran out of memory in stage 'geometry'" in str(host) and "--profile preview" in str(host)
    gpu = out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), "material", "cuda")
    assert gpu is not None and "GPU ran out of memory" in str(gpu) and "--device cpu" in str(gpu)
    assert out_of_memory(RuntimeError("shape mismatch"), "geometry", "cpu") is None
