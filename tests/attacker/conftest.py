"""Fixtures of the audit-service area: a bundles folder, real captures, a running service."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from service_helpers import (
    CAPTURED_SAMPLES,
    SUCCEEDED_AUDIT_MIN_STEPS,
    SUCCEEDED_AUDIT_NETWORK,
    TOKEN,
    AuditService,
    start_service,
    wait_status,
)

from attacker.client import AuditClient
from cem.bundle import load_encoder
from cem.captures.records import CaptureRecord
from cem.captures.store import CaptureWriter
from cem.codec import encode_tensor
from cem.data import load_dataset
from cem.data.sample_ids import format_sample_id
from cem.obfuscation import ObfuscationConfig, obfuscate


@pytest.fixture(scope="session")
def bundles_dir(digits_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("audit-bundles")
    shutil.copytree(digits_bundle, root / "digits-tiny")
    (root / "not-a-bundle").mkdir()  # listed folders that are not bundles are skipped
    return root


@pytest.fixture(scope="session")
def captures_dir(digits_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real captures: the digits test images 0..11 through the real encoder and noise, as the tap stores them."""
    root = tmp_path_factory.mktemp("audit-captures")
    manifest, encoder = load_encoder(digits_bundle)
    test, _ = load_dataset("digits", split="test")
    x = torch.stack([test[i][0] for i in range(CAPTURED_SAMPLES)])  # (12, 1, 32, 32) in [0, 1]
    with torch.no_grad():
        z = obfuscate(encoder(x), ObfuscationConfig.from_records(manifest.noise_std, manifest.defenses),
                      torch.Generator().manual_seed(0))
    records = []
    for start in range(0, CAPTURED_SAMPLES, 4):
        wire = encode_tensor(z[start:start + 4])
        records.append(CaptureRecord(
            captured_at=time.time(), method="/cem.split.v1.SplitInference/Infer", model_id=manifest.model_id,
            request_id=f"req-{start}", dtype="float32", shape=tuple(wire.shape), scale=0.0, offset=0.0,
            sample_ids=tuple(format_sample_id("digits", "test", i) for i in range(start, start + 4)), data=wire.data,
        ))
    writer = CaptureWriter(root)
    writer.append(records)
    writer.close()
    return root


@pytest.fixture(scope="session")
def service(bundles_dir: Path, captures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditService]:
    """One running cem-audit (one worker) shared by the API and job tests."""
    state = tmp_path_factory.mktemp("audit-state")
    running = start_service(state / "audit.db", bundles_dir, captures_dir, state / "service.log")
    yield running
    running.stop()


@pytest.fixture(scope="session")
def succeeded_audit(service: AuditService) -> dict:
    """One real one-epoch decoder audit (with the captures) run to completion on the shared service,
    submitted by ``AuditClient`` with a small attack network and a least-steps setting it already meets."""
    with AuditClient(service.url, TOKEN) as client:
        audit_id = client.submit("digits-tiny", epochs=1, seed=3, network_channels=SUCCEEDED_AUDIT_NETWORK["channels"],
                                 network_blocks=SUCCEEDED_AUDIT_NETWORK["blocks"],
                                 min_steps=SUCCEEDED_AUDIT_MIN_STEPS).id
    with service.client() as http:
        return wait_status(http, audit_id, {"succeeded", "failed", "cancelled", "interrupted"})
