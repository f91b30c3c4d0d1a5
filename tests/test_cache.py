"""The artifact cache: what a stage's fingerprint covers, and atomic publication."""
import os

from pipeline import cache


def test_code_files_follow_stage_imports():
    names = {f.relative_to(cache.REPO_ROOT).as_posix() for f in cache.code_files("stages.masks")}
    assert {"stages/masks.py", "stages/common/images.py", "stages/common/sheets.py"} <= names
    assert "stages/ingest.py" not in names


def test_hash_tree_sees_content_not_location(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "x.txt").write_text("same")
    assert cache.hash_tree(a) == cache.hash_tree(b)
    (b / "sub" / "x.txt").write_text("changed")
    assert cache.hash_tree(a) != cache.hash_tree(b)


def test_publish_replaces_and_recover_undoes_a_half_publication(tmp_path):
    final, trash = tmp_path / "masks", tmp_path / ".trash"
    final.mkdir()
    (final / cache.MANIFEST).write_text('{"v": 1}')
    new = tmp_path / ".tmp" / "masks"
    new.mkdir(parents=True)
    (new / cache.MANIFEST).write_text('{"v": 2}')
    cache.publish(new, final, trash)
    assert cache.read_manifest(final) == {"v": 2} and not new.exists()

    # A crash after the old folder went to the trash but before the new one was renamed in.
    os.rename(final, trash / "masks-123")
    (tmp_path / ".tmp" / "masks").mkdir(parents=True)
    assert cache.recover(tmp_path, ("ingest", "masks")) == ["masks"]
    assert cache.read_manifest(final) == {"v": 2}
    assert not trash.exists() and not (tmp_path / ".tmp").exists()


def test_a_stage_code_fingerprint_covers_the_native_sources_it_compiles():
    files = {f.name for f in cache.code_files("stages.geometry")}
    assert {"hash_grid.py", "hash_grid.cpp", "mlp.cpp"} <= files
    assert cache.code_fingerprint("stages.geometry")


def test_one_process_at_a_time_runs_stages_in_a_workdir(tmp_path):
    """A second neroic in the same workdir is refused (and a reader never cleans up under a
    running stage); the lock goes with its holder."""
    import subprocess
    import sys

    import pytest

    from pipeline.workdir import Workdir
    from stages.errors import NeroicError

    wd = Workdir(tmp_path / "work")
    wd.create()
    (wd.root / ".tmp" / "geometry").mkdir(parents=True)  # a running stage's folder
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pipeline.workdir import Workdir; "
                               f"w = Workdir({str(wd.root)!r}); cm = w.exclusive(); cm.__enter__(); "
                               "print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(NeroicError, match="another neroic is already running"):
            with wd.exclusive():
                pass
        from pipeline.config import resolve
        from pipeline.runner import Pipeline

        Pipeline(wd, resolve(wd.config_path), wd.read_sources()).states()  # reading is fine
        assert (wd.root / ".tmp" / "geometry").exists()  # and touches nothing
    finally:
        holder.kill()
        holder.wait()
    with wd.exclusive():  # free again once the holder is gone
        pass
