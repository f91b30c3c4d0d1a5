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
