"""``cem-train --nproc 2``: two gloo processes (through torchrun) train digits like one process does.

The setting (6 epochs, global batch 32, lr 0.01, width 0.25, λ = 2, σ = 0.1) reaches its
accuracy in a few epochs. One process (``cem-train --dataset digits --epochs 6 --batch-size 32
--lr 0.01 --threads 1 --seed S``), seeds 0-4, scored 97.2, 96.1, 94.8, 96.1 and 96.1 % on the
test split (mean 96.1 %, range 94.8-97.2); two processes, seeds 0-2, 95.4, 93.9 and 96.3 %.
Two processes are not the same computation as one (another permutation, BatchNorm statistics
over 16 rows per process instead of 32, other dropout masks), so the 2-process run is held to
the single-process band as another seed would be: within 5 points of the single-process mean
(about twice the seeds' 2.4-point range) and at least 90 %. The single-process runs are
measured numbers, not rerun here: the test budget (< 90 s for the data-parallel tests on a
busy 2-core machine) has no room for a second training run.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from nproc_cli import rank0_summary, run_with_two_ranks

from cem.bundle import load_bundle
from training.trainer import LOG_FILE

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
ARGS = ["--dataset", "digits", "--width", "0.25", "--epochs", "6", "--batch-size", "32", "--lr", "0.01",
        "--seed", "0", "--threads", "1", "--no-progress", "--json"]
SINGLE_PROCESS_MEAN = 0.961  # seeds 0-4, above
ACCURACY_FLOOR = 0.90
BAND = 0.05


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("ddp") / "bundle"
    return run_with_two_ranks("training.cli", *ARGS, "--out", str(out)), out


def test_only_rank_0_writes_the_bundle_and_one_log_line_per_epoch(
    ddp_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, out = ddp_run
    assert rank0_summary(proc)["bundle"] == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["decoder.safetensors", "encoder.safetensors", "manifest.json",
                                                     LOG_FILE]
    records = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]  # rank 1 did not write or append
    assert all("test_accuracy" in r and "information_bound" in r for r in records)


def test_manifest_records_world_size_backend_and_the_global_batch(
    ddp_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    manifest, _ = load_bundle(ddp_run[1])
    assert manifest.training["batch_size"] == 32
    assert manifest.training["distributed"] == {"world_size": 2, "backend": "gloo", "batch_size_per_process": 16}
    assert manifest.cem is not None and manifest.cem.lam == 2.0  # CEM trained, on gathered batches


def test_two_processes_reach_the_single_process_accuracy_band(
    ddp_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    ddp = rank0_summary(ddp_run[0])
    assert ddp["accuracy"] >= ACCURACY_FLOOR
    assert abs(ddp["accuracy"] - SINGLE_PROCESS_MEAN) <= BAND
    assert ddp["entropy_bound"] is not None  # the final bound, computed by rank 0 over the whole split
