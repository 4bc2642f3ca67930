"""Crash-safe file writes: after a crash (or a full disk) a file is either complete or absent.

One home for the write-to-temporary, fsync, rename, fsync-the-directory sequence,
used by the capture store, model bundles and the audit service's result files.
Readers that sweep a directory after a crash delete leftover ``TMP_PREFIX`` files.
Each write has its own temporary name, so two processes writing the same file
(a shared cache) never write into each other's temporary: the last rename wins,
whole.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TMP_PREFIX = ".tmp-"


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that after a crash either the whole file exists or none of it."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not also leave a partial file behind
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
