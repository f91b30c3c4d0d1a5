"""The working folder: made from workdir_template/, it holds the config, the user's source
paths, the log, and one published folder per stage (see workdir_template/README.md)."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from pipeline.cache import write_json_atomic
from pipeline.config import CONFIG_NAME, TEMPLATE_DIR, commented_template
from stages.context import Sources
from stages.errors import NeroicError

SOURCES_NAME = "sources.json"
LOCK_NAME = ".lock"
LOG_NAME = "neroic.log"


class Workdir:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    def stage_dir(self, name: str) -> Path:
        return self.root / name

    def tmp_dir(self, name: str) -> Path:
        return self.root / ".tmp" / name

    def checkpoint_dir(self, name: str) -> Path:
        return self.root / ".checkpoints" / name

    @property
    def trash(self) -> Path:
        return self.root / ".trash"

    def exists(self) -> bool:
        return self.config_path.exists()

    def create(self) -> None:
        """Copy the template (per-stage READMEs, and the config with its settings commented out);
        an existing workdir is kept."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for item in TEMPLATE_DIR.iterdir():
                target = self.root / item.name
                if target.exists():
                    continue
                if item.name == CONFIG_NAME:
                    target.write_text(commented_template(), encoding="utf-8")
                elif item.is_dir():
                    shutil.copytree(item, target)
                else:
                    shutil.copy2(item, target)
        except OSError as e:
            raise NeroicError(f"cannot create workdir {self.root}: {e.strerror}") from None

    @contextlib.contextmanager
    def exclusive(self):
        """This process alone runs stages here while inside (an advisory lock on WORKDIR/.lock,
        released when the process ends, however it ends)."""
        import fcntl

        fd = os.open(self.root / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise NeroicError(f"another neroic is already running stages in {self.root}",
                                  hint="wait for it to finish (`neroic status` shows where it is), or use "
                                       "another --workdir") from None
            yield
        finally:
            os.close(fd)

    def require(self) -> None:
        if not self.exists():
            raise NeroicError(f"{self.root} is not a neroic workdir (no {CONFIG_NAME})",
                              hint="create one with `neroic run PHOTOS --workdir DIR`, or pass --workdir")

    def read_sources(self) -> Sources:
        try:
            raw = json.loads((self.root / SOURCES_NAME).read_text())
        except FileNotFoundError:
            return Sources()
        except (OSError, ValueError) as e:
            raise NeroicError(f"cannot read {self.root / SOURCES_NAME}: {e}") from None
        return Sources(**{k: Path(v) if v else None for k, v in raw.items() if k in Sources.__annotations__})

    def write_sources(self, sources: Sources) -> None:
        values = {k: str(Path(v).resolve()) if v else None for k, v in asdict(sources).items()}
        if self.read_sources() == Sources(**{k: Path(v) if v else None for k, v in values.items()}):
            return
        write_json_atomic(self.root / SOURCES_NAME, values)

    def attach_log(self) -> logging.Handler:
        """Send neroic's own messages (DEBUG and up) and other libraries' warnings to WORKDIR/neroic.log."""
        handler = logging.FileHandler(self.root / LOG_NAME)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("neroic").setLevel(logging.DEBUG)
        logging.getLogger().addHandler(handler)
        return handler
