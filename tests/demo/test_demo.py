"""The demo orchestration at the tiny profile: real processes on loopback, a real
table, and nothing left behind afterwards — also when interrupted."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from demo.pipeline import DemoConfig, run_demo

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # the whole demo: trainers, clouds, taps, the audit service


def _processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (the demo's unique output folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def _port_is_free(address: str) -> bool:
    host, port = address.replace("http://", "").rsplit(":", 1)
    with socket.socket() as sock:
        try:
            sock.bind((host, int(port)))
        except OSError:
            return False
    return True


def _wait_gone(marker: str, timeout_s: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = _processes_mentioning(marker)
        if not left:
            return []
        time.sleep(0.2)
    return _processes_mentioning(marker)


def test_tiny_demo_produces_the_table_and_leaves_nothing_running(tmp_path: Path) -> None:
    out = tmp_path / "demo-run"
    messages: list[str] = []
    result = run_demo(DemoConfig(out_dir=out, profile="tiny", attacks=("decoder",)), say=messages.append)

    assert [m["name"] for m in result.models] == ["sigma-only", "sigma-cem"]
    for model in result.models:
        assert 0.0 <= model["accuracy"] <= 1.0 and 0.0 <= model["wire_accuracy"] <= 1.0
        assert model["wire_images"] == 64
        metrics = model["audits"]["decoder"]
        for column in ("train", "infer", "captured"):
            assert metrics[column]["mse"] > 0, column
    assert "CEM gain in attack MSE (decoder)" in result.table
    assert "sigma-cem" in result.table and "captured MSE" in result.table
    for model in result.models:  # one attack epoch: kept, and too few to judge whether it was still improving
        assert f"{model['name']}/decoder: train 1/1, infer 1/1" in result.table
    for path in result.reports.values():
        assert Path(path).read_text().lstrip().lower().startswith("<!doctype html")
    assert (out / "reports" / "sigma-cem-decoder.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "summary.json").is_file()

    assert _wait_gone(str(out)) == []
    addresses = [m["cloud"] for m in result.models] + [m["tap"] for m in result.models] + [result.audit_url]
    assert all(_port_is_free(a) for a in addresses), addresses


@pytest.mark.timeout(300)
def test_ctrl_c_stops_every_service(tmp_path: Path) -> None:
    out = tmp_path / "interrupted"
    demo = subprocess.Popen(
        [sys.executable, "-c", "import sys; from demo.cli import main; sys.exit(main())",
         "--profile", "tiny", "--attack", "decoder", "--out", str(out)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    assert demo.stderr is not None
    for line in demo.stderr:
        if "audit service on" in line:
            break
    else:
        pytest.fail(f"the demo ended (code {demo.wait()}) before starting the audit service")
    assert len(_processes_mentioning(str(out))) >= 4  # clouds, taps and the audit service are up
    demo.send_signal(signal.SIGINT)
    demo.stderr.read()
    assert demo.wait(60) == 130
    assert _wait_gone(str(out)) == []
