"""The compare page over real HTTP against a real cem-audit: the shared real audit next to audits written into the
service's job database with chosen numbers (so every delta is known exactly), unfinished audits without numbers,
and the 2-to-8 rule."""

from __future__ import annotations

import json
import re
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from bundle_fixtures import TINY_NOISE_STD
from PIL import Image
from service_helpers import AuditService

from attacker.service.console.pages.compare import MAX_AUDITS, delta

pytestmark = pytest.mark.e2e  # the shared real audit (a worker of a real cem-audit ran it)


def insert_job(service: AuditService, base: dict[str, Any], status: str, tmp_path: Path,
               metrics: dict[str, Any] | None = None, error: str | None = None) -> str:
    """A finished job of ``base``'s bundle and model, written straight into the service's database (the worker only
    claims queued jobs, so a finished row is never touched): a ``gan`` audit with ``metrics`` and a small grid, and
    no ``noise_std`` in its details (the page then reads σ from the bundle)."""
    job_id = uuid.uuid4().hex
    result = png_path = None
    if metrics is not None:
        png_path = tmp_path / f"{job_id}.png"
        Image.new("L", (96, 40), 128).save(png_path)
        worst = {column: {"attack": "gan", "mse": values["mse"], "attacks": 1} for column, values in metrics.items()}
        result = json.dumps({"attack": "gan", "metrics": metrics, "bound": None, "captured_reconstructions": 0,
                             "details": {"worst_case": worst}})
    now = time.time()
    conn = sqlite3.connect(service.db_path, timeout=30)
    try:
        with conn:
            conn.execute(
                "INSERT INTO jobs(id, status, bundle, model_id, bundle_dir, attack, use_captures, seed, progress,"
                " created_at, started_at, finished_at, result, png_path, error)"
                " VALUES (?, ?, ?, ?, '/nowhere', 'gan', 0, 0, 1.0, ?, ?, ?, ?, ?, ?)",
                (job_id, status, base["bundle"], base["model_id"], now, now, now, result,
                 str(png_path) if png_path else None, error),
            )
    finally:
        conn.close()
    return job_id


def shifted(metrics: dict[str, Any]) -> dict[str, Any]:
    """The real audit's numbers made more private: MSE doubled, PSNR 3 dB and SSIM 0.1 lower, 5 points less accurate."""
    out = {}
    for column, values in metrics.items():
        accuracy = values.get("attack_accuracy")
        out[column] = {**values, "mse": 2 * values["mse"], "psnr": values["psnr"] - 3.0, "ssim": values["ssim"] - 0.1,
                       "attack_accuracy": None if accuracy is None else accuracy - 0.05}
    return out


def cell(html: str, column: str, metric: str) -> list[str]:
    """The cells of one comparison row, as HTML."""
    row = re.search(rf'<tr data-column="{column}" data-metric="{metric}">(.*?)</tr>', html, re.DOTALL)
    assert row is not None, (column, metric)
    return re.findall(r"<td>(.*?)</td>", row.group(1), re.DOTALL)


def test_delta_reads_from_the_defenders_side() -> None:
    mse = delta("mse", 0.01, 0.02)
    assert mse is not None and (mse.text, mse.css, mse.marker) == ("+100.0 %", "delta-better", "more private")
    psnr = delta("psnr", 20.0, 23.5)
    assert psnr is not None and (psnr.text, psnr.css, psnr.marker) == ("+3.50 dB", "delta-worse", "less private")
    ssim = delta("ssim", 0.5, 0.25)
    assert ssim is not None and (ssim.text, ssim.css) == ("-0.250", "delta-better")
    accuracy = delta("attack_accuracy", 0.5, 0.6)
    assert accuracy is not None and (accuracy.text, accuracy.css) == ("+10.0 pp", "delta-worse")
    same = delta("psnr", 20.0, 20.0)
    assert same is not None and (same.css, same.marker) == ("delta-same", "same")
    assert delta("mse", None, 0.1) is None and delta("mse", 0.0, 0.1) is None


def test_compare_two_audits_side_by_side(service: AuditService, console: httpx.Client, succeeded_audit: dict,
                                         tmp_path: Path) -> None:
    real = succeeded_audit
    assert real["status"] == "succeeded", real["error"]
    other = insert_job(service, real, "succeeded", tmp_path, metrics=shifted(real["metrics"]))
    page = console.get("/console/compare", params=[("ids", real["id"]), ("ids", other)])
    assert page.status_code == 200, page.text
    html = page.text
    table = html[html.index('<table id="comparison">'):html.index("</table>", html.index('id="comparison"'))]
    heads = re.findall(r'<th scope="col" data-audit-id="([0-9a-f]+)">', table)
    assert heads == [real["id"], other]  # one column per audit, in the order asked
    assert table.count("<td class=\"text\">digits-tiny</td>") == 2
    assert f"<td class=\"text\">{TINY_NOISE_STD:g} <span class=\"muted\">(recorded by the audit)</span>" in table
    assert f"<td class=\"text\">{TINY_NOISE_STD:g} <span class=\"muted\">(from the bundle's manifest)</span>" \
        .replace("'", "&#39;") in table
    assert table.count("the bundle records no CEM training") == 2  # the fixture bundle has no λ
    assert table.count('class="level level-') == 2  # each audit's verdict

    for column in ("train", "infer", "captured"):
        first, second = cell(table, column, "mse")
        assert "delta" not in first  # the baseline has no delta
        assert '<span class="delta delta-better">+100.0 % <span class="marker">(more private)</span></span>' in second
        assert '<span class="delta delta-better">-3.00 dB <span class="marker">(more private)</span>' in \
            cell(table, column, "psnr")[1]
        assert "-0.100" in cell(table, column, "ssim")[1]
    for column in ("train", "infer"):
        assert '-5.0 pp <span class="marker">(more private)</span>' in cell(table, column, "attack_accuracy")[1]
    assert 'data-column="captured" data-metric="attack_accuracy"' not in table  # captures carry no labels

    images = re.findall(r'<img src="([^"]+)" alt="([^"]+)">', html[html.index('class="pair'):])
    assert [src for src, _ in images] == [f"/console/audits/{i}/reconstructions.png" for i in (real["id"], other)]
    for (_, alt), audit_id in zip(images, (real["id"], other), strict=True):
        assert f"Audit {audit_id[:8]}:" in alt and "digits-tiny" in alt
    for src, _ in images:
        png = console.get(src)
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"

    # the other way round: the real audit is now the less private one
    reverse = console.get("/console/compare", params=[("ids", other), ("ids", real["id"])]).text
    assert '-50.0 % <span class="marker">(less private)</span>' in cell(reverse, "infer", "mse")[1]
    assert 'class="delta delta-worse">+3.00 dB' in cell(reverse, "infer", "psnr")[1]


def test_unfinished_audits_show_their_status_and_no_numbers(service: AuditService, console: httpx.Client,
                                                            succeeded_audit: dict, tmp_path: Path) -> None:
    failed = insert_job(service, succeeded_audit, "failed", tmp_path, error="the attack ran out of memory")
    html = console.get("/console/compare", params=[("ids", failed), ("ids", succeeded_audit["id"])]).text
    assert "The first audit has not succeeded" in html
    assert "failed <span class=\"muted\">(no numbers)</span>" in html
    first, second = cell(html, "infer", "mse")
    assert first == "–" and "delta" not in second  # nothing to compare against
    assert "No image: this audit is failed." in html
    assert html.count("/reconstructions.png") == 1


@pytest.mark.parametrize("count", [0, 1, MAX_AUDITS + 1])
def test_compare_needs_two_to_eight_audits(console: httpx.Client, succeeded_audit: dict, count: int) -> None:
    ids = [uuid.uuid4().hex for _ in range(count - 1)] + [succeeded_audit["id"]] if count else []
    response = console.get("/console/compare", params=[("ids", i) for i in ids])
    assert response.status_code == 422 and response.headers["content-type"].startswith("text/html")
    assert f"ids: expected 2 to {MAX_AUDITS} different audits to compare" in response.text
    assert f"got {count}" in response.text


def test_compare_the_same_audit_twice_or_an_unknown_one(console: httpx.Client, succeeded_audit: dict) -> None:
    twice = console.get("/console/compare", params=[("ids", succeeded_audit["id"])] * 2)
    assert twice.status_code == 422 and "got 1" in twice.text
    unknown = console.get("/console/compare", params=[("ids", succeeded_audit["id"]), ("ids", "0" * 32)])
    assert unknown.status_code == 404 and "audit not found" in unknown.text
