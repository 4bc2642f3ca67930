"""``cem-demo-report`` against a real audit service: the compose stack's last step, outside Docker.

The service runs as its own process on loopback over two bundle folders; the
report audits both through the REST API at the tiny profile and writes the
table, the summary and the reports, as the compose ``report`` service does.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cem.processes import ServiceProcess
from demo.report_cli import main

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
TOKEN = "report-test-token-0123456789"
NAMES = ("sigma-only", "sigma-cem")


@pytest.fixture(scope="module")
def audit_url(digits_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("report")
    for name in NAMES:  # the same weights under both names: the report only needs two bundles to compare
        shutil.copytree(digits_bundle, root / "bundles" / name)
    env = {**os.environ, "CEM_AUDIT_TOKEN": TOKEN}
    argv = [sys.executable, "-m", "attacker.service.cli", "--port", "0", "--bundles", str(root / "bundles"),
            "--captures", str(root / "captures"), "--db", str(root / "audit.db"), "--device", "cpu"]
    process = ServiceProcess.start(argv, log_path=root / "audit.log", name="cem-audit", env=env, new_session=True,
                                   timeout_s=90)
    try:
        yield f"http://{process.address}"
    finally:
        process.terminate(grace_s=30)


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEM_AUDIT_TOKEN", TOKEN)


def test_the_report_audits_both_models_and_writes_the_table(
    audit_url: str, token: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edge = tmp_path / "edge"
    edge.mkdir()
    for name, accuracy in zip(NAMES, (0.8, 0.9), strict=True):  # as `cem-edge eval --json > NAME.json` leaves it
        (edge / f"{name}.json").write_text(f"accuracy {accuracy} ...\n" + json.dumps({"accuracy": accuracy,
                                                                                      "images": 10}))
    out = tmp_path / "out"
    code = main(["--url", audit_url, "--profile", "tiny", "--attack", "decoder", "--edge-results", str(edge),
                 "--out", str(out), "--json"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    table = (out / "table.txt").read_text()
    assert table.rstrip() in printed.out
    rows = [line.split()[:2] for line in table.splitlines()[2:4]]
    assert rows == [["sigma-only", "decoder"], ["sigma-cem", "decoder"]]
    assert "CEM gain in attack MSE (decoder)" in table and "ξ kinds" in table
    summary = json.loads(printed.out.strip().splitlines()[-1])
    assert summary == json.loads((out / "summary.json").read_text())
    models = {model["name"]: model for model in summary["models"]}
    assert (models["sigma-only"]["wire_accuracy"], models["sigma-cem"]["wire_accuracy"]) == (0.8, 0.9)
    for model in models.values():
        for column in ("train", "infer"):
            assert model["audits"]["decoder"][column]["mse"] > 0
        assert (out / "reports" / f"{model['name']}-decoder.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(summary["reports"]) == {"sigma-only/decoder", "sigma-cem/decoder"}


@pytest.mark.parametrize(
    ("argv", "text"),
    [(["--models", "sigma-only,nope"], "the audit service has no bundle named nope"),
     (["--edge-results", "{tmp}"], "cannot read the edge's result for sigma-only")],
    ids=["unknown bundle", "missing edge result"],
)
def test_bad_inputs_stop_before_any_audit_with_a_clear_error(
    audit_url: str, token: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], text: str
) -> None:
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    assert main(["--url", audit_url, "--out", str(tmp_path / "out"), *argv]) == 1
    assert text in capsys.readouterr().err


def test_without_a_token_it_says_which_variable_to_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CEM_AUDIT_TOKEN", raising=False)
    assert main(["--url", "http://127.0.0.1:9", "--out", str(tmp_path)]) == 1
    assert "set CEM_AUDIT_TOKEN" in capsys.readouterr().err


@pytest.mark.skipif(os.getuid() == 0, reason="root writes anywhere")
def test_an_unwritable_output_folder_fails_before_any_audit(token: None, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(["--url", "http://127.0.0.1:9", "--out", str(locked / "out")]) == 1
    assert "cannot write the results to" in capsys.readouterr().err
