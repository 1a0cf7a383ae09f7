"""Content-addressed cache folders, built once and published atomically.

A cache entry is a folder ``<root>/<kind>-<key>`` where the key hashes everything its contents depend on.
It is built in a private temporary folder and renamed into place, so a reader never sees half an entry; a
lock file makes concurrent builders (parallel ranks, sweep jobs) wait for the first instead of repeating
its work. The rename alone keeps it correct where locks are unreliable (some network filesystems).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CACHE_FORMAT_VERSION = 1  # bump when the layout of any cache entry changes


def stable_hash(*parts: Any, length: int = 16) -> str:
    """Hex digest of JSON-serialisable parts (order matters)."""
    payload = json.dumps([CACHE_FORMAT_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def file_sha256(path: Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def file_identity(path: Path) -> list[Any]:
    """Cheap identity of a file: resolved path, size and modification time (no reading)."""
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_once(final: Path, build: Callable[[Path], None]) -> bool:
    """Make sure the cache folder ``final`` exists, calling ``build(tmp_dir)`` to fill it if it does not.

    Returns True if this call built it, False if it was already there (or another process won the race).
    """
    if final.is_dir():
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(final.parent / f".{final.name}.lock"):
        if final.is_dir():  # another process built it while we waited for the lock
            return False
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            build(tmp)
            try:
                os.rename(tmp, final)  # atomic: readers see the whole folder or nothing
            except OSError:
                if final.is_dir():  # lost a race the lock did not prevent; the winner's copy is equivalent
                    return False
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return True


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
