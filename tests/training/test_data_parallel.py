"""Data-parallel rules that need no second process: refusals, the batch split, padding, the launcher's checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cem.errors import ConfigError
from training.cli import main
from training.data_parallel import check_data_parallel, per_process_batch
from training.defenses import DefenseStack, parse_defense
from training.distributed import (
    RANK_SEED_STRIDE,
    SINGLE_PROCESS,
    DistributedContext,
    EpochCursor,
    process_group,
)
from training.launch import check_nproc, needs_relaunch, torchrun_args

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


def test_ranks_draw_different_noise_and_rank_0_keeps_the_single_process_seed() -> None:
    assert SINGLE_PROCESS.seed(7) == DistributedContext(rank=0, world_size=2).seed(7) == 7
    assert TWO_RANKS.seed(7) == 7 + RANK_SEED_STRIDE


def test_without_a_launcher_no_process_group_is_created(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    with process_group(torch.device("cpu")) as (distributed, device):
        assert distributed is SINGLE_PROCESS and device == torch.device("cpu")
        assert not torch.distributed.is_initialized()


def test_incomplete_launcher_environment_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    expected = r"expected torchrun's environment with WORLD_SIZE=2, got \['RANK'"
    with pytest.raises(ConfigError, match=expected), process_group(torch.device("cpu")):
        pass


def test_nproc_relaunches_outside_torchrun_and_must_match_it_inside(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    assert needs_relaunch(2) and not needs_relaunch(1)
    assert torchrun_args(2) == ["--standalone", "--nproc-per-node=2", "--module", "training.cli"]
    with pytest.raises(ConfigError, match="expected --nproc >= 1, got 0"):
        check_nproc(0)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not needs_relaunch(2)  # a worker: trains
    check_nproc(2)
    with pytest.raises(ConfigError, match="expected --nproc equal to the launcher's WORLD_SIZE=2.*got 4"):
        check_nproc(4)


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
