"""The contract every ``cem-*`` command shares: defaults from one dataclass, one exit-status convention.

Parsing only the required flags must give the settings the dataclass would build on its
own, so a default lives in one place; and the same error must end every command the same
way: 2 and one ``<prog>: error: ...`` line for a wrong invocation, 1 for a runtime
failure, 130 for Ctrl-C, never a traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cem.cli import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, exit_code_for, run_cli
from cem.errors import (
    BundleFormatError,
    BundleIntegrityError,
    BundleNotFoundError,
    CEMError,
    ConfigError,
    DatasetError,
    DatasetNotFoundError,
    TensorCodecError,
    UnknownNameError,
)

BIN = Path(sys.executable).parent
STRONG_TOKEN = "5f0c2a9e81d34b7a"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("expected x, got y"), EXIT_USAGE),
        (BundleNotFoundError("expected a bundle manifest"), EXIT_USAGE),
        (BundleFormatError("unknown version"), EXIT_USAGE),
        (BundleIntegrityError("sha256 mismatch"), EXIT_USAGE),
        (DatasetError("cannot load"), EXIT_USAGE),
        (DatasetNotFoundError("needs --data-dir"), EXIT_USAGE),
        (UnknownNameError("expected a defense in ..."), EXIT_USAGE),
        (TensorCodecError("bad tensor"), EXIT_FAILURE),
        (CEMError("remote error"), EXIT_FAILURE),
        (OSError("address already in use"), EXIT_FAILURE),
        (KeyboardInterrupt(), EXIT_INTERRUPTED),
        (RuntimeError("a bug"), None),
    ],
)
def test_every_error_class_has_one_exit_status(error: BaseException, code: int | None) -> None:
    assert exit_code_for(error) == code


def _raise(exc: BaseException) -> int:
    raise exc


def test_run_cli_prints_one_line_and_returns_the_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("cem-x", lambda: 0) == 0
    assert run_cli("cem-x", lambda: _raise(ConfigError("expected a,\n  got b"))) == EXIT_USAGE
    assert capsys.readouterr().err == "cem-x: error: expected a, got b\n"
    assert run_cli("cem-x", lambda: _raise(OSError())) == EXIT_FAILURE
    assert capsys.readouterr().err == "cem-x: error: OSError\n"
    assert run_cli("cem-x", lambda: _raise(KeyboardInterrupt())) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "cem-x: interrupted\n"
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_cli("cem-x", lambda: 1 // 0)


# --- defaults: one source -------------------------------------------------------------------


def test_cem_cloud_defaults_are_server_settings_defaults(tmp_path: Path) -> None:
    from cloud_server.cli import build_settings, get_args_parser
    from cloud_server.settings import ServerSettings

    parsed = build_settings(get_args_parser().parse_args(["--bundle", str(tmp_path)]))
    assert parsed == ServerSettings(bundle_dir=tmp_path)


def test_cem_audit_defaults_are_service_settings_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attacker.service.api.token_env import TOKEN_ENV
    from attacker.service.cli import build_settings, get_args_parser
    from attacker.service.config import load_settings

    monkeypatch.setenv(TOKEN_ENV, STRONG_TOKEN)
    paths = {"bundles_dir": tmp_path, "captures_dir": tmp_path / "c", "db_path": tmp_path / "a.db"}
    args = get_args_parser().parse_args(["--bundles", str(tmp_path), "--captures", str(tmp_path / "c"),
                                         "--db", str(tmp_path / "a.db")])
    assert build_settings(args) == load_settings(**paths)


def test_cem_train_defaults_are_train_config_defaults_and_leave_the_profile_to_decide(tmp_path: Path) -> None:
    from training.cem_plugin import CEMConfig
    from training.cli import config_from_args, get_args_parser
    from training.config import TrainConfig, resolve_config

    parsed = config_from_args(get_args_parser().parse_args(["--out", str(tmp_path)]))
    assert parsed == TrainConfig(out_dir=tmp_path, cem=CEMConfig())
    # σ, λ, width, epochs and augmentation stay unset, so the data set's profile decides them
    assert (parsed.noise_std, parsed.cem.lam, parsed.width, parsed.epochs, parsed.augment) == (None,) * 5
    assert resolve_config(parsed) == resolve_config(TrainConfig(out_dir=tmp_path))


def test_cem_edge_defaults_are_client_settings_defaults_but_seeded(tmp_path: Path) -> None:
    from edge_client.cli import CLI_SEED, build_settings, get_args_parser
    from edge_client.settings import ClientSettings

    for command in (["classify", "x.png"], ["eval", "--dataset", "digits"]):
        args = get_args_parser().parse_args([command[0], "--server", "h:1", "--bundle", str(tmp_path), *command[1:]])
        assert build_settings(args) == ClientSettings(seed=CLI_SEED)


def test_cem_attack_defaults_are_audit_spec_defaults(tmp_path: Path) -> None:
    from attacker.audit import AuditSpec
    from attacker.cli import build_spec, get_args_parser

    args = get_args_parser().parse_args(["--bundle", str(tmp_path), "--out", str(tmp_path / "o")])
    assert build_spec(args) == AuditSpec(bundle_dir=tmp_path)


# --- exit statuses: the same error, the same status, in every command ------------------------


Command = tuple[str, list[str], dict[str, str] | None]  # program, arguments, environment (None: ours)


def _run_together(*commands: Command) -> list[subprocess.CompletedProcess]:
    """Run each command as its own process, all at once (they pay for Python's and torch's start-up side by
    side), and wait for every one; the results in the order given."""
    started = [subprocess.Popen([str(BIN / program), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env if env is not None else os.environ.copy())
               for program, args, env in commands]
    try:
        results = []
        for process in started:
            out, err = process.communicate(timeout=120)
            results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
        return results
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.communicate()


def _assert_usage_error(result: subprocess.CompletedProcess, program: str, message: str) -> None:
    assert result.returncode == EXIT_USAGE, f"{program}: {result.stderr}"
    assert "Traceback" not in result.stderr, program
    assert result.stderr.splitlines()[-1].startswith(f"{program}: error: "), result.stderr
    assert message in result.stderr.splitlines()[-1], program
    assert "LISTENING" not in result.stdout, program


def test_a_missing_bundle_exits_2_in_every_command(tmp_path: Path) -> None:
    nowhere = str(tmp_path / "nowhere")
    commands: list[Command] = [
        ("cem-cloud", ["--port", "0", "--device", "cpu", "--bundle", nowhere], None),
        ("cem-edge", ["classify", "--server", "127.0.0.1:1", "x.png", "--bundle", nowhere], None),
        ("cem-attack", ["--device", "cpu", "--out", str(tmp_path / "unused"), "--bundle", nowhere], None),
    ]
    for (program, _, _), result in zip(commands, _run_together(*commands), strict=True):
        _assert_usage_error(result, program, "expected a bundle manifest")


def test_an_invalid_value_exits_2_without_a_traceback(tmp_path: Path) -> None:
    without_token = {k: v for k, v in os.environ.items() if k != "CEM_AUDIT_TOKEN"}
    tap, train, audit, cloud = _run_together(
        ("cem-tap", ["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--captures", str(tmp_path / "tap"),
                     "--max-queue", "0"], None),
        ("cem-train", ["--batch-size", "1", "--out", str(tmp_path / "b")], None),
        ("cem-audit", ["--port", "0", "--bundles", str(tmp_path), "--captures", str(tmp_path / "audit"),
                       "--db", str(tmp_path / "a.db")], without_token),
        ("cem-cloud", ["--bundle", str(tmp_path), "--port", "0", "--threads", "0"], None),
    )
    _assert_usage_error(tap, "cem-tap", "expected max_queue >= 1, got 0")
    _assert_usage_error(train, "cem-train", "expected batch_size >= 2, got 1")
    _assert_usage_error(audit, "cem-audit", "expected the bearer token")
    _assert_usage_error(cloud, "cem-cloud", "expected --threads >= 1, got 0")


def test_a_port_in_use_is_a_runtime_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from attacker.service.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code = main(["--port", str(port), "--bundles", str(tmp_path), "--captures", str(tmp_path / "c"),
                     "--db", str(tmp_path / "a.db"), "--insecure-no-auth"])
    assert code == EXIT_FAILURE
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"cem-audit: error: cannot bind 127.0.0.1:{port}: ")
