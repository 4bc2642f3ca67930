"""``cem-audit``'s ``GET /metrics`` over real HTTP: the token, jobs by status, durations, the latest audit per model.

Most tests serve the real app in this process without workers and play the
worker's part through ``JobStore`` (``claim_next`` and ``finish``, the calls the
worker makes, with a result serialised as the worker serialises one), so every
transition is chosen by the test. The last test reads what a real worker wrote.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from bundle_fixtures import build_digits_model, write_digits_bundle
from polling import wait_for
from prometheus_client.parser import text_string_to_metric_families
from service_helpers import TOKEN, AuditService

from attacker.audit import AuditResult
from attacker.service.app import create_app
from attacker.service.config import ServiceSettings
from attacker.service.jobs import AuditStatus, Job, JobStore
from attacker.service.worker import json_safe
from cem.bundle import load_manifest

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
BUNDLE = "tiny"  # the folder name: it must not appear on /metrics (labels are model ids)


class Served:
    def __init__(self, settings: ServiceSettings, url: str) -> None:
        self.settings = settings
        self.url = url
        self.store = JobStore(settings.db_path)

    def get(self, path: str, token: str | None = TOKEN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(self.url + path, headers=headers, timeout=30)

    def submit(self, attack: str = "decoder") -> str:
        response = httpx.post(self.url + "/v1/audits", json={"bundle": BUNDLE, "attack": attack, "epochs": 1},
                              headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def run_next(self, status: AuditStatus, result: AuditResult | None = None) -> Job:
        """Claim the oldest queued job and finish it as the worker would."""
        job = self.store.claim_next(worker_pid=4242)
        assert job is not None and job.lease is not None
        stored = json_safe(result.to_dict()) if result is not None else None
        error = None if status is AuditStatus.SUCCEEDED else "it failed"
        assert self.store.finish(job.id, job.lease, status, result=stored, error=error)
        finished = self.store.get(job.id)
        assert finished is not None
        return finished

    def scrape(self) -> tuple[Samples, str]:
        response = self.get("/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(response.text) for s in family.samples}
        return samples, response.text


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def result(attack: str, train: float, infer: float, captured: float) -> AuditResult:
    """An ``AuditResult`` as ``run_audit`` returns it (metrics per column; the PSNR as ``cem.metrics`` gives it)."""
    def column(mse: float) -> dict[str, float]:
        return {"mse": mse, "psnr": 10 * math.log10(1 / mse) if mse > 0 else math.inf, "ssim": 0.5, "n": 12}

    return AuditResult(attack, {"train": column(train), "infer": column(infer), "captured": column(captured)},
                       None, b"", 12)


@pytest.fixture(scope="module")
def tiny_bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("metrics-audit-bundles")
    write_digits_bundle(root / BUNDLE, 0.1, model=build_digits_model(seed=4))
    return root


@pytest.fixture
def serve(tiny_bundles: Path, tmp_path: Path) -> Iterator[Callable[[str], Served]]:
    """Serve the real app (no workers) under uvicorn in this process on 127.0.0.1, port 0; one database per name."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(name: str) -> Served:
        settings = ServiceSettings(bundles_dir=tiny_bundles, captures_dir=tmp_path / "captures",
                                   db_path=tmp_path / name / "audit.db", token=TOKEN, port=0)
        server = uvicorn.Server(uvicorn.Config(create_app(settings, start_workers=False), host="127.0.0.1", port=0,
                                               log_config=None, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        wait_for(lambda: server.started, 60, "uvicorn to start")
        return Served(settings, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}")

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(30)


def test_metrics_need_the_token_and_start_at_zero(serve: Callable[[str], Served]) -> None:
    served = serve("a")
    for token in (None, TOKEN + "x"):
        response = served.get("/metrics", token=token)
        assert response.status_code == 401 and response.json() == {"detail": "missing or invalid bearer token"}
    samples, _ = served.scrape()
    assert {dict(labels)["status"]: v for (name, labels), v in samples.items() if name == "cem_audit_jobs"} == {
        status.value: 0 for status in AuditStatus}
    # no audit has finished: no series, not a made-up 0
    assert not any(name.startswith(("cem_audit_latest", "cem_audit_job_duration")) for name, _ in samples)


def test_jobs_by_status_durations_and_the_latest_audit_per_model(serve: Callable[[str], Served]) -> None:
    served = serve("a")
    model_id = load_manifest(served.settings.bundles_dir / BUNDLE).model_id
    for attack in ("decoder", "decoder", "decoder", "gan", "decoder"):
        served.submit(attack)
    served.run_next(AuditStatus.SUCCEEDED, result("decoder", 0.05, 0.06, 0.07))
    latest = served.run_next(AuditStatus.SUCCEEDED, result("decoder", 0.04, 0.045, 0.0))  # a perfect captured copy
    served.run_next(AuditStatus.FAILED)  # no metrics: the gauges keep the last succeeded audit's
    gan = served.run_next(AuditStatus.SUCCEEDED, result("gan", 0.03, 0.035, 0.036))
    samples, text = served.scrape()

    assert {status: value(samples, "cem_audit_jobs", status=status) for status in
            ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")} == {
        "queued": 1, "running": 0, "succeeded": 3, "failed": 1, "cancelled": 0, "interrupted": 0}
    assert value(samples, "cem_audit_job_duration_seconds_count", attack="decoder", status="succeeded") == 2
    assert value(samples, "cem_audit_job_duration_seconds_count", attack="decoder", status="failed") == 1
    assert value(samples, "cem_audit_job_duration_seconds_count", attack="gan", status="succeeded") == 1

    expected = {("decoder", "train"): 0.04, ("decoder", "infer"): 0.045, ("decoder", "captured"): 0.0,
                ("gan", "train"): 0.03, ("gan", "infer"): 0.035, ("gan", "captured"): 0.036}
    for (attack, column), mse in expected.items():
        labels = {"model_id": model_id, "attack": attack, "column": column}
        assert value(samples, "cem_audit_latest_mse", **labels) == pytest.approx(mse)
        psnr = value(samples, "cem_audit_latest_psnr_decibels", **labels)
        assert psnr == (math.inf if mse == 0 else pytest.approx(10 * math.log10(1 / mse)))
    assert value(samples, "cem_audit_latest_finished_timestamp_seconds", model_id=model_id,
                 attack="decoder") == pytest.approx(latest.finished_at)
    assert value(samples, "cem_audit_latest_finished_timestamp_seconds", model_id=model_id,
                 attack="gan") == pytest.approx(gan.finished_at)
    # nothing private: no token, no bundle folder name, no path of the service's files
    for secret in (TOKEN, f'"{BUNDLE}"', str(served.settings.bundles_dir), str(served.settings.db_path.parent)):
        assert secret not in text


def test_durations_fall_into_their_buckets(serve: Callable[[str], Served]) -> None:
    served = serve("a")
    for _ in range(3):
        served.submit()
    jobs = [served.run_next(AuditStatus.SUCCEEDED, result("decoder", 0.1, 0.1, 0.1)) for _ in range(3)]
    conn = sqlite3.connect(served.settings.db_path)  # the runs took milliseconds here; give them real lengths
    with conn:
        for job, seconds in zip(jobs, (0.5, 100.0, 4000.0), strict=True):
            conn.execute("UPDATE jobs SET started_at = finished_at - ? WHERE id = ?", (seconds, job.id))
    conn.close()
    samples, _ = served.scrape()
    labels = {"attack": "decoder", "status": "succeeded"}
    buckets = {le: value(samples, "cem_audit_job_duration_seconds_bucket", le=le, **labels)
               for le in ("1.0", "60.0", "120.0", "3600.0", "7200.0", "+Inf")}
    assert buckets == {"1.0": 1, "60.0": 1, "120.0": 2, "3600.0": 2, "7200.0": 3, "+Inf": 3}
    assert value(samples, "cem_audit_job_duration_seconds_sum", **labels) == pytest.approx(4100.5)


def test_each_service_instance_has_its_own_registry(serve: Callable[[str], Served]) -> None:
    busy, idle = serve("busy"), serve("idle")
    busy.submit()
    busy.run_next(AuditStatus.SUCCEEDED, result("decoder", 0.05, 0.05, 0.05))
    assert value(busy.scrape()[0], "cem_audit_jobs", status="succeeded") == 1
    assert value(idle.scrape()[0], "cem_audit_jobs", status="succeeded") == 0


@pytest.mark.e2e  # reads what a real worker process of a running cem-audit wrote
def test_a_real_audit_shows_up_for_its_model(service: AuditService, succeeded_audit: dict) -> None:
    assert succeeded_audit["status"] == "succeeded", succeeded_audit["error"]
    with service.client() as http:
        text = http.get("/metrics").text
        audits = http.get("/v1/audits", params={"status": "succeeded"}).json()["audits"]
    # the latest succeeded decoder audit of this model (other tests on this service may have run one after it)
    mine = [a for a in audits if a["model_id"] == succeeded_audit["model_id"] and a["attack"] == "decoder"]
    latest = max(mine, key=lambda a: a["finished_at"])
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    for column in ("train", "infer", "captured"):
        labels = {"model_id": latest["model_id"], "attack": "decoder", "column": column}
        assert value(samples, "cem_audit_latest_mse", **labels) == pytest.approx(latest["metrics"][column]["mse"])
        assert value(samples, "cem_audit_latest_psnr_decibels", **labels) == pytest.approx(
            latest["metrics"][column]["psnr"])
    assert value(samples, "cem_audit_jobs", status="succeeded") >= 1
    assert value(samples, "cem_audit_job_duration_seconds_count", attack="decoder", status="succeeded") >= 1
