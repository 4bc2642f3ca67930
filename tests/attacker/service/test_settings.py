"""The settings objects refuse unsafe start-ups; the CLI says why and exits non-zero."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from attacker.service.api.token_env import TOKEN_ENV
from attacker.service.cli import main
from attacker.service.config import WorkerSettings, load_settings
from attacker.service.supervisor import WorkerPool
from attacker.service.worker import main as worker_main
from cem.errors import ConfigError

STRONG = "5f0c2a9e81d34b7a"  # 16 hex digits, as `openssl rand -hex 8` prints


def settings_for(tmp_path: Path, environ: dict[str, str], **options: object):
    return load_settings(bundles_dir=tmp_path, captures_dir=tmp_path / "c", db_path=tmp_path / "a.db", environ=environ,
                         **options)


def test_token_is_required_unless_explicitly_insecure(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"expected the bearer token in \\${TOKEN_ENV}"):
        settings_for(tmp_path, {})
    with pytest.raises(ConfigError, match="got the example placeholder"):
        settings_for(tmp_path, {TOKEN_ENV: "replace-me-with-a-long-random-token"})
    with pytest.raises(ConfigError, match="at least 16 characters"):
        settings_for(tmp_path, {TOKEN_ENV: "short"})
    assert settings_for(tmp_path, {}, insecure_no_auth=True).auth_required is False
    # issue 10 item 8: length alone let these through
    for weak, why in (("a" * 16, "only 1 distinct"), (" " * 16, "whitespace"), ("abababababababab", "only 2 distinct"),
                      ("aaaaaaaaaaaaaaaabcdefghi", "bits of character entropy")):
        with pytest.raises(ConfigError, match=why):
            settings_for(tmp_path, {TOKEN_ENV: weak})
    settings = settings_for(tmp_path, {TOKEN_ENV: STRONG})
    assert settings.auth_required and settings.resolved_results_dir == tmp_path / "a-results"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_jobs": 0}, "expected max_jobs >= 1, got 0"),
        ({"on_restart": "retry"}, "expected on_restart 'interrupt' or 'requeue', got 'retry'"),
        ({"device": "tpu"}, "expected device in"),
        ({"port": 70000}, "expected a port in [0, 65535], got 70000"),
    ],
)
def test_bad_options_are_refused(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_for(tmp_path, {TOKEN_ENV: STRONG}, **options)
    assert message in str(caught.value)


def test_cli_refuses_to_start_without_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    code = main(["--port", "0", "--bundles", str(tmp_path), "--captures", str(tmp_path / "c"),
                 "--db", str(tmp_path / "a.db")])
    out, err = capsys.readouterr()
    assert code == 2
    assert f"expected the bearer token in ${TOKEN_ENV}" in err
    assert "LISTENING" not in out and not (tmp_path / "a.db").exists()


def test_worker_settings_cross_to_the_worker_as_one_validated_json_argument(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, {TOKEN_ENV: STRONG}, data_dir=tmp_path / "data", on_restart="requeue",
                            worker_threads=2)
    command = WorkerPool(settings, store=None, log_level="DEBUG").command()  # type: ignore[arg-type]
    assert command[1:3] == ["-m", "attacker.service.worker"] and len(command) == 4
    worker = WorkerSettings.from_json(command[3])
    assert worker == settings.worker_settings(parent_pid=os.getpid(), log_level="DEBUG")
    assert (worker.results_dir, worker.data_dir, worker.on_stop, worker.threads, worker.log_level) == (
        tmp_path / "a-results", tmp_path / "data", "requeue", 2, "DEBUG")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("db_path"), "db_path: Field required"),
        (lambda d: d.update(parent_pid="12"), "parent_pid: Input should be a valid integer"),
        (lambda d: d.update(threads=0), "expected threads >= 1, got 0"),
        (lambda d: d.update(on_stop="retry"), "on_stop"),
        (lambda d: d.update(surprise=1), "surprise: Unexpected keyword argument"),
    ],
)
def test_worker_settings_refuse_what_the_supervisor_would_not_write(tmp_path: Path, edit, message: str) -> None:
    good = settings_for(tmp_path, {TOKEN_ENV: STRONG}).worker_settings(parent_pid=12, log_level="INFO")
    data = json.loads(good.to_json())
    edit(data)
    with pytest.raises(ConfigError, match="expected WorkerSettings as JSON") as caught:
        WorkerSettings.from_json(json.dumps(data))
    assert message in str(caught.value)


def test_worker_exits_2_on_settings_it_cannot_use(capsys: pytest.CaptureFixture[str]) -> None:
    assert worker_main(["not json"]) == 2
    expected = "python -m attacker.service.worker: error: expected WorkerSettings as JSON"
    assert capsys.readouterr().err.startswith(expected)


def test_cli_refuses_to_start_under_a_launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Audits run in single-process workers: data parallelism is cem-attack's (--nproc), not the service's."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = main(["--port", "0", "--bundles", str(tmp_path), "--captures", str(tmp_path / "c"),
                 "--db", str(tmp_path / "a.db"), "--insecure-no-auth"])
    out, err = capsys.readouterr()
    assert code == 2
    assert "cem-audit: error: expected cem-audit to run as one process" in err
    assert "got WORLD_SIZE=2 from a launcher" in err
    assert "LISTENING" not in out and not (tmp_path / "a.db").exists()
