"""Files written so that an interruption never leaves half of one, and their digests.

One copy for every writer in certframe (run folders, :mod:`certframe.run.folder`; checkpoints,
training states, converted models): a file is written beside its target under a hidden name,
flushed and fsynced, then renamed over the target (``os.replace`` is atomic on POSIX and Windows),
so a reader sees the old file or the new one, never a mix, whatever kills the process.

=====================================  =====================================================
function                               what it does
=====================================  =====================================================
:func:`atomic_write`                   bytes or text to a file, atomically and durably
:func:`atomic_write_json`              the same for a JSON value
:func:`atomic_path`, :func:`commit`    for writers that need a file name (safetensors, numpy)
:func:`file_sha256`                    ``"sha256:<hex>"`` of a file's bytes
:func:`update_digest`                  a file's bytes fed to a running digest (folder digests)
=====================================  =====================================================
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

BLOCK = 1 << 20
"""Bytes read at a time when hashing (a 2 GB model never sits in memory)."""


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically and durably."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = atomic_path(path)
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | Path, value: Any, **dumps) -> None:
    """``json.dumps(value, indent=2, **dumps)`` written with :func:`atomic_write`."""
    atomic_write(path, json.dumps(value, **{"indent": 2, **dumps}))


def atomic_path(path: str | Path) -> Path:
    """The hidden temporary path a writer that needs a file name (``safetensors.save_file``,
    ``numpy.savez``) writes first; pass it to :func:`commit` afterwards."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def commit(tmp: str | Path, path: str | Path) -> None:
    """fsync ``tmp`` (written at :func:`atomic_path`) and rename it over ``path``."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def update_digest(digest, path: str | Path):
    """Feed the bytes of the file ``path`` to ``digest`` (a ``hashlib`` object) in :data:`BLOCK` pieces; return it."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            digest.update(block)
    return digest


def file_sha256(path: str | Path, *, prefix: str = "sha256:") -> str:
    """``prefix + <hex>`` of the SHA-256 of a file's bytes (``prefix=""``: the bare hex digest)."""
    return prefix + update_digest(hashlib.sha256(), path).hexdigest()
