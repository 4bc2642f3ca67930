"""The experiments pages over real HTTP: a real ``cem-experiment report`` (stored cells, no training) listed, its
Table 1 rendered row for row as ``table1.md`` has it, its figures served by exact name only; ``--experiments`` off."""

from __future__ import annotations

import html
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from console_helpers import console_session
from PIL import Image
from service_helpers import AuditService, start_service

from attacker.service.config import ServiceSettings
from attacker.service.console.pages.experiments import TableRecord
from cem.errors import ConfigError
from experiment.cells import AttackCell, Plan, TrainCell
from experiment.store import CellStore

pytestmark = pytest.mark.e2e  # cem-audit processes of its own, as test_access_log.py
SECRET = b"TOP-SECRET-not-a-figure"
ATTACKS = ("decoder", "gan")
# (row, σ, λ, seed) -> (accuracy, attack MSE on the train column, on the infer column); the GAN's is 1.5x
MODELS = {
    ("Bottleneck", 0.1, 0.0, 0): (0.97, 0.0010, 0.0020), ("Bottleneck", 0.1, 0.0, 1): (0.95, 0.0012, 0.0022),
    ("Bottleneck", 0.1, 2.0, 0): (0.96, 0.0020, 0.0030), ("Bottleneck", 0.1, 2.0, 1): (0.95, 0.0018, 0.0026),
    ("DistCorr", 0.1, 0.0, 0): (0.94, 0.0030, 0.0040), ("DistCorr", 0.1, 0.0, 1): (0.92, 0.0034, 0.0038),
    ("DistCorr", 0.1, 2.0, 0): (0.95, 0.0036, 0.0050), ("DistCorr", 0.1, 2.0, 1): (0.91, 0.0040, 0.0042),
}
NOT_CONVERGED = (("Bottleneck", 0.1, 2.0, 1), "gan")  # its train column is flagged
NOT_STORED = (("DistCorr", 0.1, 2.0, 1), "gan")  # this attack cell is missing from the store
DIVERGED = (("DistCorr", 0.1, 0.0, 0), "decoder")  # its train-column MSE is NaN
SPEC_TEXT = '[experiment]\nname = "console-demo"\n'


def write_stored_cells(root: Path) -> None:
    """An output folder as ``cem-experiment run`` leaves it (records, bundle markers, attack grids), no training."""
    store = CellStore(root)
    store.create()
    trains, attacks = [], []
    for (row, sigma, lam, seed), (accuracy, mse_train, mse_infer) in MODELS.items():
        train = TrainCell(f"{row.lower()}{int(lam)}s{seed}", "digits", "vgg11_bn_sgm", 4, row, sigma, lam, seed, (), {})
        trains.append(train)
        (store.output_dir("train", train.key)).mkdir(parents=True)
        (store.output_dir("train", train.key) / "manifest.json").write_text("{}")
        store.save({"kind": "train", "key": train.key, "accuracy": accuracy, "model_id": f"model-{train.key}",
                    "metrics": {"entropy_bound": -20.0 - 5 * lam - seed}})
        for attack, scale in zip(ATTACKS, (1.0, 1.5), strict=True):
            cell = AttackCell(f"{attack}-{train.key}", train.key, attack, seed, (), {})
            attacks.append(cell)
            model = ((row, sigma, lam, seed), attack)
            if model == NOT_STORED:
                continue
            outputs = store.output_dir("attack", cell.key)
            outputs.mkdir(parents=True)
            (outputs / "metrics.json").write_text("{}")
            Image.new("L", (60, 30), color=100 + 20 * seed).save(outputs / "reconstructions.png")
            train_mse = math.nan if model == DIVERGED else mse_train * scale
            note = "best epoch is its last (5 of 5)" if model == NOT_CONVERGED else None
            store.save({"kind": "attack", "key": cell.key, "train_key": train.key, "model_id": f"model-{train.key}",
                        "metrics": {"train": {"mse": train_mse, "psnr": 30.0 + seed},
                                    "infer": {"mse": mse_infer * scale}},
                        "columns": {"train": {"not_converged": note}, "infer": {"not_converged": None}}})
    store.write_plan(Plan("console-demo", ("Bottleneck", "DistCorr"), ATTACKS, tuple(trains), tuple(attacks), {},
                          spec_text=SPEC_TEXT))


@pytest.fixture(scope="module")
def experiments_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``--experiments``: one real report ("hand"), a run without a report, a damaged report, and bait outside."""
    root = tmp_path_factory.mktemp("experiments")
    write_stored_cells(root / "hand")
    subprocess.run([sys.executable, "-m", "experiment.cli", "report", str(root / "hand")], check=True,
                   capture_output=True, timeout=300, env={**os.environ, "MPLBACKEND": "Agg"})
    write_stored_cells(root / "decoder-only")  # the same cells reported without the GAN (report --attacks)
    subprocess.run([sys.executable, "-m", "experiment.cli", "report", str(root / "decoder-only"), "--attacks",
                    "decoder"], check=True, capture_output=True, timeout=300, env={**os.environ, "MPLBACKEND": "Agg"})
    write_stored_cells(root / "no-report")  # a run not reported yet: not listed
    (root / "broken" / "report").mkdir(parents=True)
    (root / "broken" / "report" / "table1.json").write_text('{"groups": "not a list"}')
    (root / "secret.png").write_bytes(SECRET)  # outside every report folder
    (root / "hand" / "report" / ".hidden.png").write_bytes(SECRET)
    (root / "hand" / "report" / "leak.png").symlink_to(root / "secret.png")
    return root


@pytest.fixture(scope="module")
def experiments_service(experiments_root: Path, bundles_dir: Path, captures_dir: Path,
                        tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditService]:
    state = tmp_path_factory.mktemp("experiments-service")
    running = start_service(state / "audit.db", bundles_dir, captures_dir, state / "service.log",
                            "--experiments", str(experiments_root))
    yield running
    running.stop()


@pytest.fixture()
def browser(experiments_service: AuditService) -> Iterator[httpx.Client]:
    with console_session(experiments_service) as client:
        yield client


class _Page(HTMLParser):
    """The body rows of every ``table.table1`` (cell texts), and every ``<img>``'s src and alt."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[tuple[str, str]] = []
        self.links: list[str] = []
        self._in_table1 = self._in_body = self._in_cell = False
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "table":
            self._in_table1 = "table1" in (found.get("class") or "").split()
            if self._in_table1:
                self.tables.append([])
        elif tag == "tbody" and self._in_table1:
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.tables[-1].append([])
        elif tag in ("td", "th") and self._in_body:
            self._in_cell, self._text = True, ""
        elif tag == "img":
            self.images.append((found.get("src") or "", found.get("alt") or ""))
        elif tag == "a":
            self.links.append(found.get("href") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._in_cell:
            self.tables[-1][-1].append(self._text.strip())
            self._in_cell = False
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._in_table1 = False

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            self._text += data


def parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def markdown_tables(markdown: str) -> list[list[list[str]]]:
    """The body rows of each table in ``table1.md`` (bold marks removed); a blank line ends a table."""
    tables: list[list[list[str]]] = []
    inside = False
    for line in markdown.splitlines():
        if line.startswith("method | "):
            tables.append([])
            inside = True
        elif inside and not line.strip():
            inside = False
        elif inside and not line.startswith("---"):
            tables[-1].append([cell.strip().strip("*") for cell in line.split(" | ")])
    return tables


def test_the_list_shows_each_reported_experiment_with_its_counts(browser: httpx.Client) -> None:
    response = browser.get("/console/experiments")
    assert response.status_code == 200, response.text
    page = response.text
    assert 'id="experiments"' in page and '<div class="table-wrap">' in page
    assert 'data-experiment="hand"' in page and "console-demo" in page  # the name from table1.json
    assert 'data-experiment="no-report"' not in page  # no report/table1.json: not listed
    row = page.split('data-experiment="hand"', 1)[1].split("</tr>", 1)[0]
    assert '<td data-field="missing">1</td>' in row  # the one attack cell not stored
    assert "<td>24</td>" in row  # cells planned: 8 train + 16 attack
    assert "<td>8</td>" in row and "<td>4</td>" in row  # models in Table 1; figures: 2 plots, 2 galleries
    sliced = page.split('data-experiment="decoder-only"', 1)[1].split("</tr>", 1)[0]
    assert "console-demo, decoder only (not reported: gan)" in sliced
    assert '<td data-field="missing">0</td>' in sliced  # the missing cell was a GAN cell
    assert "<td>16</td>" in sliced  # cells planned as reported: 8 train + 8 decoder
    broken = page.split('data-experiment="broken"', 1)[1].split("</tr>", 1)[0]
    assert "experiment report unreadable" in broken  # listed, with why, instead of failing the page


def test_table1_is_rendered_row_for_row_as_table1_md_with_its_notes_and_figures(
        browser: httpx.Client, experiments_root: Path) -> None:
    response = browser.get("/console/experiments/hand")
    assert response.status_code == 200, response.text
    page = response.text
    parsed = parse(page)
    expected = markdown_tables((experiments_root / "hand" / "report" / "table1.md").read_text(encoding="utf-8"))
    assert parsed.tables == expected and len(expected[0]) == 9  # 4 variants, 2 paired gains, 3 average rows
    assert parsed.tables[0][1] == ["Bottleneck+CEM", "0.1", "2", "2", "95.50 ± 6.35", "0.00190 ± 0.00127",
                                   "0.00280 ± 0.00254", "0.00285 ± 0.00191 †", "0.00420 ± 0.00381",  # † the flagged GAN
                                   "0.00190 ± 0.00127 †", "0.00280 ± 0.00254"]  # strongest: the decoder, † the GAN's
    assert parsed.tables[0][-1][0] == "CEM gain of the averages"
    text = html.unescape(page)
    assert "mean over the attacks (the paper's headline), λ=2: train +33.0 %, infer +28.3 %" in text  # two attacks
    assert "best epoch is its last (5 of 5)" in text  # the convergence flag
    assert "gan-distcorr2s1" in text  # the missing cell, by key
    assert "non-finite MSE (nan), left out: digits · vgg11_bn_sgm cut 4 | DistCorr σ=0.1 λ=0 seed 0" in text
    assert SPEC_TEXT in text and 'name = &#34;console-demo&#34;' in page  # the spec, escaped
    # beyond MSE, as detail.md has it: the Bottleneck row's decoder PSNR over its two seeds (30 and 31 dB)
    beyond = page.split('id="beyond-mse"', 1)[1]
    assert beyond.count('<table class="detail">') == 4  # per attack, the ξ table, the two attacks head to head
    assert '<th scope="row" class="text">Bottleneck</th><td>0.1</td><td>0</td><td>2</td><td>30.50 ± 6.35</td>' in beyond
    assert "| 30.50 ± 6.35 |" in (experiments_root / "hand" / "report" / "detail.md").read_text(encoding="utf-8")
    assert 'style="' not in page and "<script>" not in page  # the CSP forbids both

    sources = dict(parsed.images)
    assert len(sources) == 4  # pareto, mse_vs_entropy and one gallery per row
    assert all(alt.strip() for alt in sources.values())
    assert any(alt.startswith("Reconstructions, DistCorr · digits · vgg11_bn_sgm cut 4") for alt in sources.values())
    for src in sources:
        assert src.startswith("/console/experiments/hand/plots/") and src.endswith(".png")
        image = browser.get(src)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert image.content.startswith(b"\x89PNG\r\n\x1a\n")
        assert "default-src 'none'" in image.headers["content-security-policy"]
    svgs = [href for href in parsed.links if href.endswith(".svg")]
    assert len(svgs) == 4
    svg = browser.get(svgs[0])
    assert svg.status_code == 200 and svg.headers["content-type"] == "image/svg+xml"
    assert b"<svg" in svg.content


def test_a_report_written_before_the_tables_beyond_mse_still_reads(experiments_root: Path) -> None:
    data = json.loads((experiments_root / "hand" / "report" / "table1.json").read_text(encoding="utf-8"))
    assert TableRecord.model_validate(data).detail is not None
    del data["detail"]
    assert TableRecord.model_validate(data).detail is None


@pytest.mark.parametrize("path", [
    "/console/experiments/hand/plots/..%2F..%2Fsecret.png",
    "/console/experiments/hand/plots/%2E%2E%2F%2E%2E%2Fsecret.png",
    "/console/experiments/hand/plots/%2E%2E",
    "/console/experiments/hand/plots/%2Fetc%2Fpasswd",
    "/console/experiments/hand/plots/leak.png",  # a symlink to the secret: not a regular file of the report
    "/console/experiments/hand/plots/.hidden.png",
    "/console/experiments/hand/plots/table1.json",  # in the folder, but not a figure
    "/console/experiments/hand/plots/nothing.png",
    "/console/experiments/..%2Fhand/plots/pareto.png",
    "/console/experiments/%2Fetc/plots/passwd",
    "/console/experiments/no-report",
    "/console/experiments/no-report/plots/pareto.png",
    "/console/experiments/unknown",
    "/console/experiments/%2E%2E",
    "/console/experiments/%2E%2E/plots/secret.png",
])
def test_names_are_looked_up_never_joined(browser: httpx.Client, path: str) -> None:
    response = browser.get(path)
    assert response.status_code == 404, (path, response.status_code)
    assert SECRET not in response.content and b"root:" not in response.content
    assert b"<svg" not in response.content and not response.content.startswith(b"\x89PNG")


def test_a_damaged_report_is_an_error_page(browser: httpx.Client) -> None:
    response = browser.get("/console/experiments/broken")
    assert response.status_code == 503
    assert "experiment report unreadable" in response.text and 'role="alert"' in response.text


def test_without_experiments_the_page_says_how_to_enable_it(console: httpx.Client) -> None:
    """The shared service (tests/attacker/conftest.py) runs without ``--experiments``."""
    response = console.get("/console/experiments")
    assert response.status_code == 200
    assert 'id="experiments-off"' in response.text and "cem-audit --experiments DIR" in response.text
    assert console.get("/console/experiments/hand").status_code == 404
    assert console.get("/console/experiments/hand/plots/pareto.png").status_code == 404


def test_experiments_must_name_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected --experiments to be a directory, got .*missing"):
        ServiceSettings(bundles_dir=tmp_path, captures_dir=tmp_path, db_path=tmp_path / "a.db", token=None,
                        insecure_no_auth=True, experiments_dir=tmp_path / "missing")


@pytest.mark.parametrize("path", ["/console/experiments", "/console/experiments/hand",
                                  "/console/experiments/hand/plots/pareto.png"])
def test_without_a_session_every_page_sends_to_the_login_form(experiments_service: AuditService, path: str) -> None:
    with httpx.Client(base_url=experiments_service.url, timeout=30) as anonymous:
        response = anonymous.get(path)
    assert response.status_code == 303
    assert response.headers["location"] == "/console/login?next=" + path.replace("/", "%2F")
    assert SECRET not in response.content and not response.content.startswith(b"\x89PNG")
