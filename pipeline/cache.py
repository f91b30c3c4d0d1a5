"""The artifact cache: fingerprints, manifests and atomic publication of stage folders.

A stage's fingerprint hashes everything that decides its result:
  its resolved config section, its code (the stage's source files and every `stages.*`
  module they import, found by reading the source, not importing it), the fingerprints
  of the upstream stages' outputs, and the content of the user files it reads (photos,
  masks, poses). A published folder whose manifest carries the current fingerprint is
  up to date and is skipped.

Publication is atomic: a stage writes into WORKDIR/.tmp/NAME, the old folder (if any)
is moved to WORKDIR/.trash, the new one renamed into place, the trash deleted. If the
process dies between the two renames, `recover` puts the old folder back.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

MANIFEST = "manifest.json"
REPO_ROOT = Path(__file__).resolve().parent.parent


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_json(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def hash_tree(path: Path, exclude: tuple[str, ...] = ()) -> str:
    """Content hash of a file, or of every file below a folder (names and bytes), leaving out
    hidden files and those whose relative path matches a glob pattern in `exclude`."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    entries = []
    for p in sorted(path.rglob("*")):
        relative = p.relative_to(path)
        if (p.is_file() and not any(part.startswith(".") for part in relative.parts)
                and not any(relative.match(pattern) for pattern in exclude)):
            entries.append((relative.as_posix(), sha256_file(p)))
    return hash_json(entries)


NATIVE_SOURCES = (".cpp", ".h", ".cu")  # compiled beside a module of the same name (stages/field/kernels)


def _module_files(module: str) -> list[Path]:
    """Source files of a dotted module inside this repo (a package means all its .py files), with
    the native sources it compiles (x.cpp beside x.py)."""
    base = REPO_ROOT.joinpath(*module.split("."))
    if base.is_dir():
        return sorted(p for p in base.rglob("*") if p.suffix in (".py", *NATIVE_SOURCES))
    file = base.with_suffix(".py")
    if not file.exists():
        return []
    return [file] + sorted(p for p in (base.with_suffix(s) for s in NATIVE_SOURCES) if p.exists())


def _imported_stage_modules(file: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found.update(n for n in names if n.startswith("stages.") and _module_files(n))
    return found


def code_files(module: str) -> list[Path]:
    """A stage's own source files and, transitively, those of the `stages.*` modules it imports."""
    seen_modules, files, todo = set(), set(), [module]
    while todo:
        mod = todo.pop()
        if mod in seen_modules:
            continue
        seen_modules.add(mod)
        for f in _module_files(mod):
            files.add(f)
            if f.suffix == ".py":
                todo.extend(_imported_stage_modules(f) - seen_modules)
    return sorted(files)


@functools.lru_cache(maxsize=None)
def code_fingerprint(module: str) -> str:
    """Cached per process: the source does not change while neroic runs."""
    return hash_json([(f.relative_to(REPO_ROOT).as_posix(), sha256_file(f)) for f in code_files(module)])


def read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def write_json_atomic(path: Path, value) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def publish(tmp_dir: Path, final_dir: Path, trash_root: Path) -> None:
    """Swap `tmp_dir` into `final_dir`, keeping the old folder until the new one is in place."""
    trash_root.mkdir(parents=True, exist_ok=True)
    old = None
    if final_dir.exists():
        old = trash_root / f"{final_dir.name}-{time.time_ns()}"
        os.rename(final_dir, old)
    os.rename(tmp_dir, final_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def recover(workdir: Path, names: tuple[str, ...]) -> list[str]:
    """Undo a publication cut short between its two renames; drop leftovers of crashed runs."""
    restored = []
    trash = workdir / ".trash"
    if trash.exists():
        for name in names:
            olds = sorted(trash.glob(f"{name}-*"))
            if olds and not (workdir / name / MANIFEST).exists():
                if (workdir / name).exists():
                    shutil.rmtree(workdir / name)
                os.rename(olds[-1], workdir / name)
                restored.append(name)
        shutil.rmtree(trash, ignore_errors=True)
    shutil.rmtree(workdir / ".tmp", ignore_errors=True)
    return restored
