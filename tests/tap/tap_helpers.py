"""Start ``cem-tap`` as a real child process and talk to it over loopback."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cem.codec import encode_tensor
from cem.wire import parse_listening_line
from protos import cem_split_pb2 as pb


@dataclass
class TapProcess:
    process: subprocess.Popen
    address: str
    log_path: Path
    metrics_address: str | None = None  # HOST:PORT of /metrics when started with --metrics-listen

    def log(self) -> str:
        return self.log_path.read_text()

    def terminate(self, timeout_s: float = 20.0) -> dict:
        """SIGTERM, wait, and return the ``--json`` counters from the last stdout line."""
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=timeout_s)
        assert self.process.returncode == 0, f"tap exited with {self.process.returncode}; log:\n{self.log()}"
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def start_tap(upstream: str, captures: Path, log_path: Path, *extra: str, timeout_s: float = 60.0) -> TapProcess:
    argv = [sys.executable, "-m", "attacker.tap.cli", "--listen", "127.0.0.1:0", "--upstream", upstream,
            "--captures", str(captures), "--log-level", "DEBUG", "--json", *extra]
    log = open(log_path, "w")
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log.close()
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    metrics_address = None
    while time.monotonic() < deadline:
        if not selector.select(timeout=0.5):
            if process.poll() is not None:
                break
            continue
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("METRICS "):
            metrics_address = line.split()[1]
            continue
        parsed = parse_listening_line(line)
        if parsed is not None:
            selector.close()
            return TapProcess(process, f"{parsed[0]}:{parsed[1]}", log_path, metrics_address)
    process.kill()
    raise AssertionError(f"cem-tap did not print LISTENING; log:\n{log_path.read_text()}")


def make_request(model_id: str, request_id: str, features: torch.Tensor, dtype: str = "float32",
                 sample_ids: list[str] | None = None) -> pb.InferRequest:
    return pb.InferRequest(model_id=model_id, request_id=request_id, features=encode_tensor(features, dtype),
                           sample_ids=sample_ids or [])
