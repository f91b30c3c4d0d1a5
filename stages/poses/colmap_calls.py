"""Running COLMAP calls from Python: its log into ours, Ctrl-C at once, its errors as NeroicError."""
from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path

import pycolmap

from stages.errors import NeroicError


@contextlib.contextmanager
def colmap_log(folder: Path, log: logging.Logger):
    """Send COLMAP's (glog) chatter to a file while inside, then into `log` (errors as warnings)."""
    flags = pycolmap.logging
    saved = (flags.logtostderr, flags.alsologtostderr, flags.stderrthreshold)
    folder.mkdir(parents=True, exist_ok=True)
    prefix = folder / "colmap."
    flags.logtostderr, flags.alsologtostderr, flags.stderrthreshold = False, False, 3
    flags.set_log_destination(flags.INFO, str(prefix))
    finished = False
    try:
        yield
        finished = True
    finally:
        flags.set_log_destination(flags.INFO, "")  # closes (and so flushes) the file
        if finished:  # after Ctrl-C a cancelled COLMAP thread may still be winding down: keep it quiet
            flags.logtostderr, flags.alsologtostderr, flags.stderrthreshold = saved
        for path in sorted(folder.glob("colmap.*")):
            for line in path.read_text(errors="replace").splitlines():
                log.log(logging.WARNING if line.startswith(("E", "F")) else logging.DEBUG, "colmap: %s", line)
            path.unlink()


def interruptible(what: str, fn, *args, token=None, **kwargs):
    """Run a pycolmap call in a worker thread so Ctrl-C is noticed at once (pycolmap releases the
    GIL, but the main thread would only see the signal when the call returns). Errors from
    COLMAP become NeroicError."""
    result, error = {}, {}

    def work():
        try:
            result["value"] = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - re-raised in the caller's thread
            error["value"] = e

    thread = threading.Thread(target=work, name=f"colmap-{what}", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.2)
    except KeyboardInterrupt:
        if token is not None:
            token.cancel()
            thread.join(10.0)
        raise
    if "value" in error:
        raise NeroicError(f"COLMAP failed during {what}: {error['value']}",
                          hint="see the log file for COLMAP's messages") from None
    return result.get("value")
