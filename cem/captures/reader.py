"""Reading a capture directory: what was intercepted (summary) and the features themselves (load).

The reader opens the index read-only and never writes, so the audit service
can read while a tap is still appending (SQLite WAL allows one writer and any
number of readers). Only what the index lists is visible: a shard the tap was
writing when it died is invisible until the next writer indexes it.
Payloads are decoded with the same codec the cloud uses (``cem.codec``).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from cem.captures.store import INDEX_FILE, SHARD_DIR, SHARD_SUFFIX, read_shard_payloads
from cem.codec import decode_tensor, dtype_to_enum
from cem.errors import CaptureStoreError, ConfigError, TensorCodecError
from protos import cem_split_pb2 as pb

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CapturedFeatures:
    """Intercepted features (N, C, H, W) as they crossed the wire, and the sample id of each (None: not sent)."""

    features: torch.Tensor
    sample_ids: list[str | None]

    def __post_init__(self) -> None:
        if self.features.dim() != 4:
            raise ConfigError(f"expected captured features of shape (N, C, H, W), got {tuple(self.features.shape)}")
        if len(self.sample_ids) != self.features.shape[0]:
            raise ConfigError(
                f"expected {self.features.shape[0]} sample ids (one per capture), got {len(self.sample_ids)}"
            )


@dataclass(frozen=True)
class ModelCaptures:
    """What was intercepted for one model id. Times are Unix seconds."""

    model_id: str
    requests: int
    samples: int
    samples_with_ids: int  # samples whose request carried sample ids (demo mode)
    sample_shapes: list[list[int]]  # distinct per-sample shapes (C, H, W)
    dtypes: list[str]
    first_at: float
    last_at: float


@dataclass(frozen=True)
class CaptureSummary:
    requests: int
    samples: int
    first_at: float | None
    last_at: float | None
    models: list[ModelCaptures]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class CaptureStore:
    """Read-only view of a capture directory written by ``cem-tap``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _connect(self) -> sqlite3.Connection | None:
        path = self.root / INDEX_FILE
        if not path.is_file():
            return None
        try:
            return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
        except sqlite3.Error as exc:
            raise CaptureStoreError(f"cannot open the capture index {path}: {exc}") from exc

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        conn = self._connect()
        if conn is None:
            return []
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise CaptureStoreError(f"cannot read the capture index in {self.root}: {exc}") from exc
        finally:
            conn.close()

    def summary(self) -> CaptureSummary:
        """Counts per model, per-sample shapes, dtypes and time range."""
        rows = self._query(
            "SELECT model_id, dtype, shape, batch, sample_ids, captured_at FROM captures ORDER BY id"
        )
        groups: dict[str, list[tuple]] = defaultdict(list)
        for row in rows:
            groups[row[0]].append(row)
        models = []
        for model_id, items in sorted(groups.items()):
            shapes = sorted({tuple(json.loads(shape)[1:]) for _, _, shape, _, _, _ in items})
            with_ids = sum(batch for _, _, _, batch, ids, _ in items if len(json.loads(ids)) == batch)
            times = [at for *_, at in items]
            models.append(
                ModelCaptures(
                    model_id=model_id,
                    requests=len(items),
                    samples=sum(batch for _, _, _, batch, _, _ in items),
                    samples_with_ids=with_ids,
                    sample_shapes=[list(s) for s in shapes],
                    dtypes=sorted({dtype for _, dtype, *_ in items}),
                    first_at=min(times),
                    last_at=max(times),
                )
            )
        return CaptureSummary(
            requests=len(rows),
            samples=sum(m.samples for m in models),
            first_at=min((m.first_at for m in models), default=None),
            last_at=max((m.last_at for m in models), default=None),
            models=models,
        )

    def verify(self) -> int:
        """Check every indexed record has its payload in a readable shard; returns the record count."""
        rows = self._query("SELECT shard, key, nbytes FROM captures ORDER BY id")
        by_shard: dict[str, dict[str, int]] = defaultdict(dict)
        for shard, key, nbytes in rows:
            by_shard[shard][key] = nbytes
        for shard, expected in by_shard.items():
            payloads = read_shard_payloads(self.root / SHARD_DIR / (shard + SHARD_SUFFIX), expected)
            for key, nbytes in expected.items():
                if len(payloads[key]) != nbytes:
                    raise CaptureStoreError(
                        f"record {key} of shard {shard}: expected {nbytes} bytes, got {len(payloads[key])}"
                    )
        return len(rows)

    def load(
        self, model_id: str, *, feature_shape: tuple[int, int, int] | None = None, max_samples: int | None = None
    ) -> CapturedFeatures:
        """Every captured sample for ``model_id`` (oldest first), decoded to float32.

        Returns features (N, C, H, W) float32 exactly as intercepted (noise
        included) and N sample ids (None where the request carried none).
        Records that do not decode, or whose per-sample shape differs from
        ``feature_shape`` (default: that of the oldest (N, C, H, W) record),
        are skipped and counted in the log.
        """
        rows = self._query(
            "SELECT shard, key, dtype, shape, scale, offset, batch, sample_ids FROM captures"
            " WHERE model_id = ? ORDER BY id",
            (model_id,),
        )
        if feature_shape is None:
            ranked = [json.loads(row[3]) for row in rows]
            feature_shape = next((tuple(s[1:]) for s in ranked if len(s) == 4), None)
        if feature_shape is None:  # nothing shaped like a feature batch was captured for this model
            return CapturedFeatures(features=torch.empty((0, 0, 0, 0)), sample_ids=[])
        expected = (-1, *feature_shape)
        keys_by_shard: dict[str, list[str]] = defaultdict(list)
        for shard, key, *_ in rows:
            keys_by_shard[shard].append(key)
        payloads: dict[str, bytes] = {}
        loaded_shard = None
        batches: list[torch.Tensor] = []
        sample_ids: list[str | None] = []
        skipped = 0
        for shard, key, dtype, shape, scale, offset, batch, ids in rows:
            if max_samples is not None and len(sample_ids) >= max_samples:
                break
            if shard != loaded_shard:  # a shard's records are consecutive: read each shard once, only if needed
                payloads = read_shard_payloads(self.root / SHARD_DIR / (shard + SHARD_SUFFIX), keys_by_shard[shard])
                loaded_shard = shard
            try:
                message = pb.Tensor(
                    dtype=dtype_to_enum(dtype), shape=json.loads(shape), data=payloads[key], scale=scale, offset=offset
                )
                features = decode_tensor(message, expected_shape=expected)
            except TensorCodecError:
                skipped += 1
                continue
            ids = json.loads(ids)
            batches.append(features)
            sample_ids.extend(ids if len(ids) == batch else [None] * batch)
        if skipped:
            logger.info(
                "skipped %d captured request(s) for model %s that do not decode to %s", skipped, model_id, expected
            )
        if not batches:
            return CapturedFeatures(features=torch.empty((0, *feature_shape)), sample_ids=[])
        features = torch.cat(batches)
        if max_samples is not None:
            features, sample_ids = features[:max_samples], sample_ids[:max_samples]
        return CapturedFeatures(features=features, sample_ids=[s or None for s in sample_ids])
