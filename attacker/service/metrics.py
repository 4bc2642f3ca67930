"""The audit service's Prometheus metrics, read from the job store when Prometheus scrapes.

Jobs change state in the worker processes, which talk to the API process only
through SQLite (``attacker.service.jobs``): the API never sees a job finish. So,
like the tap's collector, this one reads at scrape time, and what it reads is
the store itself: a job is in the metrics as soon as its row is written, the
numbers survive a restart of the service (the duration histogram counts every
finished job in the database, so it never resets), and no code path that moves
a job has to remember to update a metric.

Privacy telemetry: per model id and attack, the MSE and PSNR of the audit that
succeeded last, per column (``train``, ``infer``, ``captured``). Failed,
cancelled or interrupted audits have no metrics and leave the gauges as they
were. Labels hold only enum values and model ids (weight hashes): never bundle
folder names, paths, tokens or anything of the images.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from attacker.service.jobs import AuditStatus, Job, JobStore

# An audit takes seconds (a tiny test) to hours (the GAN attack on a large data set).
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0,
                    28800.0, 86400.0)
COLUMNS = ("train", "infer", "captured")


class AuditCollector(Collector):
    """Jobs by status, job durations, and the latest audit's reconstruction quality per model."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        yield self._jobs()
        yield self._durations()
        yield from self._latest()

    def _jobs(self) -> GaugeMetricFamily:
        counts = self._store.count_by_status()
        family = GaugeMetricFamily("cem_audit_jobs", "audit jobs in the store, by status", labels=["status"])
        for status in AuditStatus:
            family.add_metric([status.value], counts.get(status, 0))
        return family

    def _durations(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "cem_audit_job_duration_seconds", "wall time of each finished audit that ran, from its (last) start "
            "to its end, by attack and final status", labels=["attack", "status"])
        groups: dict[tuple[str, str], list[float]] = {}
        for attack, status, seconds in self._store.run_durations():
            groups.setdefault((attack, status.value), []).append(seconds)
        for labels, durations in sorted(groups.items()):
            durations.sort()
            # a bucket counts the durations up to and including its bound (``le``)
            buckets = [(floatToGoString(bound), float(bisect_right(durations, bound))) for bound in DURATION_BUCKETS]
            buckets.append(("+Inf", float(len(durations))))
            family.add_metric(list(labels), buckets, sum_value=math.fsum(durations))
        return family

    def _latest(self) -> Iterator[GaugeMetricFamily]:
        labels = ["model_id", "attack", "column"]
        mse = GaugeMetricFamily("cem_audit_latest_mse", "per-pixel MSE (images in [0, 1]) of the latest succeeded "
                                "audit of this model with this attack, per column; lower = the attacker "
                                "reconstructs better", labels=labels)
        psnr = GaugeMetricFamily("cem_audit_latest_psnr_decibels", "PSNR of the same reconstructions (dB; +Inf for "
                                 "a perfect copy); higher = the attacker reconstructs better", labels=labels)
        finished = GaugeMetricFamily("cem_audit_latest_finished_timestamp_seconds", "when that audit finished "
                                     "(Unix time)", labels=["model_id", "attack"])
        for job in self._store.latest_succeeded():
            model_id, attack = job.request.model_id, str(job.request.attack.value)
            if job.finished_at is not None:
                finished.add_metric([model_id, attack], job.finished_at)
            for column, values in column_metrics(job).items():
                if values["mse"] is not None:
                    mse.add_metric([model_id, attack, column], values["mse"])
                if values["psnr"] is not None:
                    psnr.add_metric([model_id, attack, column], values["psnr"])
        yield from (mse, psnr, finished)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def column_metrics(job: Job) -> dict[str, dict[str, float | None]]:
    """{column: {"mse", "psnr"}} from a stored result. The worker stores a non-finite PSNR as null
    (``worker.json_safe``); with an MSE of exactly 0 that null was +Inf, otherwise it stays absent."""
    metrics = (job.result or {}).get("metrics")
    found: dict[str, dict[str, float | None]] = {}
    if not isinstance(metrics, dict):
        return found
    for column in COLUMNS:
        values = metrics.get(column)
        if not isinstance(values, dict):
            continue
        mse, psnr = _number(values.get("mse")), _number(values.get("psnr"))
        if psnr is None and mse == 0.0:
            psnr = math.inf
        found[column] = {"mse": mse, "psnr": psnr}
    return found


def create_registry(store: JobStore) -> CollectorRegistry:
    """A registry of this service instance's own (not the process-wide default), read from ``store``."""
    registry = CollectorRegistry()
    registry.register(AuditCollector(store))
    return registry
