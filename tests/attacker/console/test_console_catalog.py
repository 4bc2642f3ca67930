"""The models and captures pages over real HTTP, on a cem-audit of its own: real bundles (one with CEM, training
metrics and an estimated ξ, one with a relative ξ, one with neither), the 12 real captures; an empty catalog and an
unreadable capture store on a second service."""

from __future__ import annotations

import html
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from bundle_fixtures import build_digits_model
from console_helpers import console_client, console_session
from service_helpers import CAPTURED_SAMPLES, AuditService, start_service

from cem.bundle import load_manifest, save_bundle
from cem.data import load_dataset

pytestmark = pytest.mark.e2e  # cem-audit processes of its own, as test_access_log.py
# What cem-train recorded for a digits model (runs/defenses), with the estimated ξ raised above the mean-image MSE
# so that the page has a warning to show.
CEM_METRICS = {
    "accuracy": 0.9944341372912802, "train_accuracy": 0.9888712241653418, "information_bound": 241.39535522460938,
    "entropy_bound": -241.39535522460938, "entropy_bound_per_dim": -0.2357376515865326,
    "mse_bound_xi": 0.03653983039815171, "entropy_x_estimate": -75.46737900812464,
    "entropy_bound_estimate": -316.862734232734, "mse_bound_xi_estimate": 0.0512, "native_dim": 64.0,
    "mean_image_mse": 0.04625322980577205, "mean_image_mse_native": 0.040533551784231174,
}


@pytest.fixture(scope="module")
def catalog_bundles(digits_bundle: Path, untrained_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("catalog-bundles")
    shutil.copytree(digits_bundle, root / "digits-tiny")  # σ 0.1, no CEM, no metrics: the captured model
    shutil.copytree(untrained_bundle, root / "untrained")  # σ 0, a relative ξ only
    _, info = load_dataset("digits", split="train")
    save_bundle(root / "digits-cem", build_digits_model(seed=1), noise_std=0.1, dataset=info.to_dict(),
                defenses=[{"name": "noise", "std": 0.1}, {"name": "dropout", "p": 0.2}],
                cem={"lam": 2.0, "lambda_units": "paper", "k": 10}, metrics=CEM_METRICS,
                training={"epochs": 20, "seed": 1})
    (root / "not-a-bundle").mkdir()
    return root


@pytest.fixture(scope="module")
def catalog_service(catalog_bundles: Path, captures_dir: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditService]:
    state = tmp_path_factory.mktemp("catalog-service")
    running = start_service(state / "audit.db", catalog_bundles, captures_dir, state / "service.log")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def bare_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditService]:
    """No bundles at all, and a capture index that is not an SQLite file."""
    state = tmp_path_factory.mktemp("bare-service")
    (state / "bundles").mkdir()
    (state / "captures").mkdir()
    (state / "captures" / "index.sqlite").write_bytes(b"this is not an sqlite database" * 100)
    running = start_service(state / "audit.db", state / "bundles", state / "captures", state / "service.log")
    yield running
    running.stop()


@pytest.fixture()
def browser(catalog_service: AuditService) -> Iterator[httpx.Client]:
    with console_session(catalog_service) as client:
        yield client


def row_of(page: str, attribute: str, value: str) -> str:
    """The text of the ``<tr>`` carrying ``attribute="value"``, tags removed and entities decoded."""
    match = re.search(rf'<tr {attribute}="{re.escape(value)}".*?</tr>', page, re.S)
    assert match is not None, f"no row {attribute}={value}"
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", match.group(0))).split())


def test_models_lists_every_bundle_with_sigma_lambda_accuracy_and_the_kind_of_its_bound(
        browser: httpx.Client) -> None:
    response = browser.get("/console/models")
    assert response.status_code == 200, response.text
    page = response.text
    assert re.findall(r'<tr data-bundle="([^"]+)"', page) == ["digits-cem", "digits-tiny", "untrained"]
    assert '<div class="table-wrap">\n<table id="models">' in page

    cem = row_of(page, "data-bundle", "digits-cem")
    assert "vgg11_bn_sgm, cut 4" in cem and "digits" in cem and "8×8×8" in cem
    assert "λ = 2 (paper units)" in cem and "noise (std 0.1), dropout (p 0.2)" in cem
    assert "99.4 % 98.9 % 20" in cem  # test accuracy, train accuracy, epochs
    assert "ξ estimate = 0.0512" in cem and "ξ relative = 0.03654" in cem  # never a bare "bound"
    assert ("the estimate ξ = 0.0512 exceeds the native-resolution MSE of the mean-image guess (0.0405): it cannot "
            "be a lower bound on reconstruction error") in cem
    assert 'href="/console/audits?bundle=digits-cem"' in page

    tiny = row_of(page, "data-bundle", "digits-tiny")
    assert "no CEM" in tiny and "noise (std 0.1)" in tiny and "none recorded" in tiny
    assert "not recorded not recorded not recorded" in tiny  # accuracies and epochs: the bundle has none
    assert re.search(r'data-bundle="digits-tiny".*?<td data-field="sigma">0\.1</td>', page, re.S)
    untrained = row_of(page, "data-bundle", "untrained")
    assert "ξ relative = 0.0042" in untrained and "10.0 %" in untrained and "none" in untrained
    assert 'data-kind="estimate"' in page and 'data-kind="relative"' in page
    text = html.unescape(page)
    assert "ξ estimate: Theorem 1 with H(x) estimated as a Gaussian" in text  # the kinds' labels, under the table
    assert "not-a-bundle" not in page
    assert 'style="' not in page and "<script>" not in page
    assert response.headers["content-security-policy"].startswith("default-src 'none'")


def test_captures_shows_the_12_captured_samples_of_the_captured_model_and_links_its_bundle(
        browser: httpx.Client, catalog_bundles: Path) -> None:
    response = browser.get("/console/captures")
    assert response.status_code == 200, response.text
    page = response.text
    model_id = load_manifest(catalog_bundles / "digits-tiny").model_id
    assert f'<dd data-field="samples">{CAPTURED_SAMPLES}</dd>' in page and '<dd data-field="requests">3</dd>' in page
    assert '<div class="table-wrap">\n<table id="captures">' in page
    assert re.findall(r'<tr data-model-id="([^"]+)"', page) == [model_id]
    row = row_of(page, "data-model-id", model_id)
    assert f"{model_id} digits-tiny 3 {CAPTURED_SAMPLES} {CAPTURED_SAMPLES} 8×8×8 float32" in row
    assert row.count(" UTC") == 2  # first and last
    assert 'href="/console/models#bundle-digits-tiny"' in page
    assert 'id="bundle-digits-tiny"' in browser.get("/console/models").text  # the link's target
    assert "Not recorded here" in page and "cem_tap_dropped_queue_full" in page  # drops: not invented


def test_an_empty_catalog_says_where_bundles_go_and_an_unreadable_capture_store_is_a_503(
        bare_service: AuditService) -> None:
    client = console_client(bare_service)
    try:
        models = client.get("/console/models")
        captures = client.get("/console/captures")
    finally:
        client.close()
    assert models.status_code == 200
    assert 'id="models"' not in models.text and "No bundles to audit" in models.text
    assert "--bundles" in models.text and "bundles</code>" in models.text  # the folder it looked in
    assert captures.status_code == 503
    assert "capture store unreadable" in captures.text and 'role="alert"' in captures.text
    assert "default-src 'none'" in captures.headers["content-security-policy"]


@pytest.mark.parametrize("path", ["/console/models", "/console/captures"])
def test_without_a_session_the_pages_send_to_the_login_form(catalog_service: AuditService, path: str) -> None:
    with httpx.Client(base_url=catalog_service.url, timeout=30) as anonymous:
        response = anonymous.get(path)
    assert response.status_code == 303
    assert response.headers["location"] == "/console/login?next=" + path.replace("/", "%2F")
    assert "digits" not in response.text
