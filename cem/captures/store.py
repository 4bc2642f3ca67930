"""The append-only capture store on disk, and its writer.

Layout of a capture directory::

    index.sqlite            SQLite (WAL) index: one row per shard, one per captured request
    shards/<name>.safetensors

A shard holds a batch of records: one uint8 tensor per record with the raw wire
payload, and the records' metadata as JSON in the safetensors header, so a shard
describes itself. It is written to a temporary name, fsync'd, renamed into
place and the directory fsync'd; only then is the index transaction committed.
A crash therefore leaves at worst a temporary file (deleted on the next open)
or a complete shard the index does not know yet (indexed from its own header on
the next open); it never leaves an index row pointing at a missing or partial
shard. No pickle anywhere: payloads are raw bytes, metadata is JSON.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as save_safetensors

from cem.captures.records import CaptureRecord
from cem.durable import TMP_PREFIX, write_durably
from cem.errors import CaptureStoreError

logger = logging.getLogger(__name__)

INDEX_FILE = "index.sqlite"
SHARD_DIR = "shards"
SHARD_SUFFIX = ".safetensors"
SHARD_FORMAT = "cem-captures/1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS shards (
    name TEXT PRIMARY KEY,
    records INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    written_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS captures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    shard TEXT NOT NULL REFERENCES shards(name),
    key TEXT NOT NULL,
    captured_at REAL NOT NULL,
    method TEXT NOT NULL,
    model_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    dtype TEXT NOT NULL,
    shape TEXT NOT NULL,
    scale REAL NOT NULL,
    offset REAL NOT NULL,
    batch INTEGER NOT NULL,
    nbytes INTEGER NOT NULL,
    sample_ids TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS captures_by_model ON captures(model_id, id);
"""


def connect_index(root: Path) -> sqlite3.Connection:
    """Open (creating if needed) the WAL-mode index of a capture directory."""
    conn = sqlite3.connect(root / INDEX_FILE, timeout=10.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(SCHEMA)
    return conn


def encode_shard(records: Sequence[CaptureRecord]) -> bytes:
    """Records -> safetensors bytes: tensor "<i>" = record i's payload (uint8), header = metadata."""
    tensors = {str(i): np.frombuffer(r.data, dtype=np.uint8) for i, r in enumerate(records)}
    headers = [r.to_header() for r in records]
    return save_safetensors(tensors, metadata={"format": SHARD_FORMAT, "records": json.dumps(headers)})


def read_shard_headers(path: Path) -> list[dict[str, object]]:
    """The JSON metadata of every record in a shard, in key order."""
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CaptureStoreError(f"shard {path.name} is not a readable safetensors file: {exc}") from exc
    if metadata.get("format") != SHARD_FORMAT:
        raise CaptureStoreError(
            f"expected shard format {SHARD_FORMAT!r} in {path.name}, got {metadata.get('format')!r}"
        )
    return json.loads(metadata["records"])


def read_shard_payloads(path: Path, keys: Iterable[str]) -> dict[str, bytes]:
    """Raw wire payloads of the given records of one shard."""
    try:
        with safe_open(str(path), framework="numpy") as handle:
            return {key: handle.get_tensor(key).tobytes() for key in keys}
    except (SafetensorError, OSError) as exc:
        raise CaptureStoreError(f"shard {path.name} is not a readable safetensors file: {exc}") from exc


def insert_shard(conn: sqlite3.Connection, name: str, headers: Sequence[dict[str, object]], size: int) -> None:
    """Index a durable shard and its records in one transaction."""
    rows = [
        (
            name,
            str(i),
            h["captured_at"],
            h["method"],
            h["model_id"],
            h["request_id"],
            h["dtype"],
            json.dumps(h["shape"]),
            h["scale"],
            h["offset"],
            int(h["shape"][0]) if h["shape"] else 0,  # type: ignore[index]
            h["nbytes"],
            json.dumps(h["sample_ids"]),
        )
        for i, h in enumerate(headers)
    ]
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO shards(name, records, bytes, written_at) VALUES (?, ?, ?, ?)",
            (name, len(headers), size, time.time()),
        )
        conn.executemany(
            "INSERT INTO captures(shard, key, captured_at, method, model_id, request_id, dtype, shape, scale,"
            " offset, batch, nbytes, sample_ids) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


class CaptureWriter:
    """Appends batches of records to a capture directory; one writer per directory at a time."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.shard_dir = self.root / SHARD_DIR
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self._conn = connect_index(self.root)
        self._sequence = itertools.count()
        self.recover()

    def recover(self) -> int:
        """Delete half-written temporaries and index complete shards a crash left unindexed."""
        for tmp in self.shard_dir.glob(TMP_PREFIX + "*"):
            logger.warning("removing incomplete shard %s left by an earlier crash", tmp.name)
            tmp.unlink(missing_ok=True)
        known = {row[0] for row in self._conn.execute("SELECT name FROM shards")}
        recovered = 0
        for path in sorted(self.shard_dir.glob("*" + SHARD_SUFFIX)):
            name = path.name[: -len(SHARD_SUFFIX)]
            if name in known:
                continue
            try:
                headers = read_shard_headers(path)
            except (CaptureStoreError, ValueError, KeyError) as exc:
                logger.warning("leaving unreadable shard %s out of the index: %s", path.name, exc)
                continue
            insert_shard(self._conn, name, headers, path.stat().st_size)
            recovered += 1
        if recovered:
            logger.info("indexed %d shard(s) written before an earlier crash", recovered)
        return recovered

    def append(self, records: Sequence[CaptureRecord]) -> str:
        """Write one shard durably, then index it; returns the shard name. Raises OSError/sqlite3.Error."""
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._sequence):06d}"
        data = encode_shard(records)
        path = self.shard_dir / (name + SHARD_SUFFIX)
        write_durably(path, data)
        try:
            insert_shard(self._conn, name, [r.to_header() for r in records], len(data))
        except sqlite3.Error:
            path.unlink(missing_ok=True)  # dropped means dropped: do not let recover() resurrect it later
            raise
        return name

    def close(self) -> None:
        self._conn.close()
