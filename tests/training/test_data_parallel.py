"""Data-parallel rules of the trainer that need no second process: refusals, the batch split, padding, the CLI.

The kernel's process-group, seed and launcher helpers it builds on are tested in tests/cem/test_distributed.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cem.distributed import SINGLE_PROCESS, DistributedContext
from cem.errors import ConfigError
from cem.launch import torchrun_args
from training.cli import WORKER_MODULE, main
from training.data_parallel import check_data_parallel, per_process_batch
from training.defenses import DefenseStack, parse_defense
from training.distributed import EpochCursor

TWO_RANKS = DistributedContext(rank=1, world_size=2, local_rank=1, backend="gloo")
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _stack(*specs: str) -> DefenseStack:
    return DefenseStack(tuple(parse_defense(spec) for spec in specs))


@pytest.mark.parametrize("name", ["ressfl", "patrol"])
def test_defenses_with_their_own_networks_are_refused_by_name(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"expected one process with the {name} defense, got 2: {name} cannot"):
        check_data_parallel(128, _stack(f"{name}:0.3"), world_size=2)
    check_data_parallel(128, _stack(f"{name}:0.3"), world_size=1)  # one process: as before


def test_client_transforms_and_distcorr_train_under_ddp() -> None:
    stack = _stack("dropout:0.2", "topk:0.5", "distcorr:0.3")
    check_data_parallel(128, stack, world_size=4)
    assert stack.has_loss and not _stack("dropout:0.2").has_loss  # distcorr's loss sees the gathered batch


def test_batch_size_is_global_and_must_split_evenly() -> None:
    assert per_process_batch(128, TWO_RANKS) == 64 and per_process_batch(128, SINGLE_PROCESS) == 128
    with pytest.raises(ConfigError, match="expected --batch-size divisible by the 3 processes.*got 128"):
        check_data_parallel(128, _stack(), world_size=3)


def test_cursor_keeps_every_sample_once_and_drops_the_sampler_padding() -> None:
    """101 samples on 2 ranks: 51 each (one padded copy), local batches 8,8,8,8,8,8,3."""
    cursor = EpochCursor(TWO_RANKS, 101)
    keeps = [cursor.next_batch(size).keep for size in (8, 8, 8, 8, 8, 8, 3)]
    assert keeps == [16, 16, 16, 16, 16, 16, 5] and sum(keeps) == 101


def test_single_process_gather_is_the_identity_and_keeps_the_tensor() -> None:
    local = torch.randn(5, 3, requires_grad=True)
    assert EpochCursor(SINGLE_PROCESS, 5).next_batch(5).gather(local) is local


def test_cli_refuses_ressfl_with_nproc_before_starting_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "bundle"
    code = main(["--dataset", "digits", "--nproc", "2", "--defense", "ressfl:0.3", "--out", str(out)])
    assert code == 2
    assert "cem-train: error: expected one process with the ressfl defense, got 2" in capsys.readouterr().err
    assert not out.exists()  # refused here, before torchrun


def test_cli_starts_the_training_module_as_its_workers() -> None:
    assert torchrun_args(2, WORKER_MODULE) == ["--standalone", "--nproc-per-node=2", "--module", "training.cli"]
