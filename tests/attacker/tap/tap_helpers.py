"""Start ``cem-tap`` as a real child process (``cem.processes``) and talk to it over loopback."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from cem.codec import encode_tensor
from cem.processes import ServiceProcess
from protos import cem_split_pb2 as pb

METRICS_PREFIX = "METRICS "  # cem-tap prints ``METRICS HOST:PORT`` before LISTENING with --metrics-listen


@dataclass
class TapProcess:
    process: ServiceProcess

    @property
    def address(self) -> str:
        return self.process.address

    @property
    def metrics_address(self) -> str | None:
        """HOST:PORT of /metrics when started with --metrics-listen, else None."""
        lines = self.process.stdout_lines()
        return next((line[len(METRICS_PREFIX):].strip() for line in lines if line.startswith(METRICS_PREFIX)), None)

    def log(self) -> str:
        return self.process.log_text()

    def terminate(self, timeout_s: float = 20.0) -> dict:
        """SIGTERM, wait, and return the ``--json`` counters from the last stdout line."""
        code = self.process.terminate(grace_s=timeout_s)
        assert code == 0, f"tap exited with {code}; log:\n{self.log()}"
        return json.loads(self.process.stdout_lines()[-1])

    def kill(self) -> None:
        self.process.kill()


def start_tap(upstream: str, captures: Path, log_path: Path, *extra: str, timeout_s: float = 60.0) -> TapProcess:
    argv = [sys.executable, "-m", "attacker.tap.cli", "--listen", "127.0.0.1:0", "--upstream", upstream,
            "--captures", str(captures), "--log-level", "DEBUG", "--json", *extra]
    return TapProcess(ServiceProcess.start(argv, log_path=log_path, name="cem-tap", timeout_s=timeout_s,
                                           env={**os.environ, "PYTHONUNBUFFERED": "1"}))


def make_request(model_id: str, request_id: str, features: torch.Tensor, dtype: str = "float32",
                 sample_ids: list[str] | None = None) -> pb.InferRequest:
    return pb.InferRequest(model_id=model_id, request_id=request_id, features=encode_tensor(features, dtype),
                           sample_ids=sample_ids or [])


def unusable_directory(tmp_path: Path) -> Path:
    """A capture path that cannot be created: its parent is a regular file (read-only for root too)."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the capture directory's parent should be")
    return blocker / "captures"
