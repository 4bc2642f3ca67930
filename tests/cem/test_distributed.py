"""The kernel's data-parallel pieces: rank seeds, process groups, the launcher's checks, and the collectives the
attacks use, the last in two spawned gloo ranks (FileStore) against what one process computes."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from gloo_ranks import run_on_gloo_ranks
from nproc_cli import LAUNCH_VARS, REPO
from torch import nn

from cem.distributed import (
    RANK_SEED_STRIDE,
    SINGLE_PROCESS,
    DistributedContext,
    all_gather_rows,
    average_gradients,
    broadcast_buffers,
    broadcast_module,
    process_group,
    shard_range,
)
from cem.errors import ConfigError
from cem.launch import check_devices, check_nproc, needs_relaunch, torchrun_args

TWO_RANKS = DistributedContext(rank=1, world_size=2, local_rank=1, backend="gloo")
WORLD = 2
ROWS = (5, 1)  # global batches: 5 rows split 3/2, and 1 row that leaves rank 1 without any


def test_ranks_draw_different_noise_and_rank_0_keeps_the_single_process_seed() -> None:
    assert SINGLE_PROCESS.seed(7) == DistributedContext(rank=0, world_size=2).seed(7) == 7
    assert TWO_RANKS.seed(7) == 7 + RANK_SEED_STRIDE
    with pytest.raises(ConfigError, match="expected 0 <= rank < world_size"):
        DistributedContext(rank=2, world_size=2)


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
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="expected WORLD_SIZE to be an integer"), process_group(torch.device("cpu")):
        pass


def test_nproc_relaunches_outside_torchrun_and_must_match_it_inside(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    assert needs_relaunch(2) and not needs_relaunch(1)
    assert torchrun_args(2, "attacker.cli") == ["--standalone", "--nproc-per-node=2", "--module", "attacker.cli"]
    with pytest.raises(ConfigError, match="expected --nproc >= 1, got 0"):
        check_nproc(0)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not needs_relaunch(2)  # a worker: runs
    check_nproc(2)
    check_nproc(1)  # left at its default under torchrun: the launcher's WORLD_SIZE decides
    with pytest.raises(ConfigError, match="expected --nproc equal to the launcher's WORLD_SIZE=2.*got 4"):
        check_nproc(4)


# A worker's last words: one log record and one line printed, both block-buffered into pipes, then its status.
EXITING_WORKER = ("import logging, sys; from cem.launch import exit_command; "
                  "logging.basicConfig(stream=sys.stderr, level=logging.INFO); "
                  "logging.getLogger('w').info('logged before exit'); print('printed before exit'); exit_command(3)")


@pytest.mark.parametrize("under_torchrun", [True, False])
def test_a_command_leaves_with_its_status_and_everything_it_printed(under_torchrun: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k not in (*LAUNCH_VARS, "PYTHONUNBUFFERED")}  # buffered, as usual
    if under_torchrun:  # exit_command skips the interpreter's teardown there, so it must flush first
        env |= {"LOCAL_RANK": "0", "WORLD_SIZE": "2"}
    proc = subprocess.run([sys.executable, "-c", EXITING_WORKER], capture_output=True, text=True, env=env,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "printed before exit\n"
    assert "INFO:w:logged before exit" in proc.stderr


def test_more_cuda_processes_than_gpus_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_devices(1, torch.device("cuda"))
    check_devices(4, torch.device("cpu"))  # gloo: any number of CPU processes
    with pytest.raises(ConfigError, match=r"expected --nproc at most the 1 visible GPU\(s\) on CUDA .*got 2"):
        check_devices(2, torch.device("cuda"))


@pytest.mark.parametrize("n", [0, 1, 5, 7, 128])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_are_contiguous_balanced_and_cover_every_row_once(n: int, world: int) -> None:
    spans = [shard_range(n, DistributedContext(rank=r, world_size=world)) for r in range(world)]
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(stop == start for (_, stop), (start, _) in zip(spans, spans[1:], strict=False))
    sizes = [stop - start for start, stop in spans]
    assert max(sizes) - min(sizes) <= 1


def test_every_collective_is_the_identity_on_one_process() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    model(torch.randn(4, 3)).sum().backward()
    before = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    average_gradients(model, SINGLE_PROCESS)
    broadcast_buffers(model, SINGLE_PROCESS)
    broadcast_module(model, SINGLE_PROCESS)
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.equal(param.grad, before[name])
    rows = torch.randn(5, 2)
    assert all_gather_rows(rows, 5, SINGLE_PROCESS) is rows


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(sum(ROWS), 4, generator=g), torch.randn(sum(ROWS), 2, generator=g)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 2)


def _weighted_gradients(distributed: DistributedContext) -> list[list[torch.Tensor]]:
    """Per global batch: this rank's slice (rows rank, rank + W, ...) with its mean loss scaled by rows · W / batch,
    as the attacks weight it, then averaged over the ranks -> the gradients."""
    x, y = _data()
    model = _model()
    grads, start = [], 0
    for size in ROWS:
        rows = torch.arange(start, start + size)[distributed.rank :: distributed.world_size]
        start += size
        model.zero_grad(set_to_none=True)
        if rows.numel():
            weight = rows.numel() * distributed.world_size / size
            (F.mse_loss(model(x[rows]), y[rows]) * weight).backward()
        average_gradients(model, distributed)
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    return grads


def _rank(rank: int, distributed: DistributedContext) -> dict[str, Any]:
    norm = nn.BatchNorm1d(3)
    norm(torch.randn(6, 3, generator=torch.Generator().manual_seed(rank)))  # statistics differ per rank
    broadcast_buffers(norm, distributed)
    torch.manual_seed(rank)  # weights differ per rank until rank 0's are broadcast
    linear = nn.Linear(3, 3)
    broadcast_module(linear, distributed)
    gathered = {}
    for n in (5, 1, 0):
        start, stop = shard_range(n, distributed)
        local = torch.arange(start, stop, dtype=torch.float32).unsqueeze(1).repeat(1, 2)  # (rows, 2)
        gathered[n] = all_gather_rows(local, n, distributed)
    return {"grads": _weighted_gradients(distributed), "buffers": [b.clone() for b in norm.buffers()],
            "linear": linear.state_dict(), "gathered": gathered}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_on_gloo_ranks(_rank, tmp_path_factory.mktemp("collectives"), WORLD)


@pytest.mark.e2e
def test_averaged_weighted_gradients_equal_the_global_batch_gradient(ranks: list[dict[str, Any]]) -> None:
    """The 5-row batch splits 3/2 and the 1-row batch leaves rank 1 with nothing (it sends zeros): the average is
    the single-process gradient of each batch's mean loss. Tolerance: float32 sums in another order, rtol 1e-5."""
    single = _weighted_gradients(SINGLE_PROCESS)
    for rank in ranks:
        for got_batch, want_batch in zip(rank["grads"], single, strict=True):
            for got, want in zip(got_batch, want_batch, strict=True):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.e2e
def test_buffers_and_weights_become_rank_0s(ranks: list[dict[str, Any]]) -> None:
    for got, want in zip(ranks[1]["buffers"], ranks[0]["buffers"], strict=True):
        assert torch.equal(got, want)
    torch.manual_seed(0)
    rank_0 = nn.Linear(3, 3).state_dict()
    for rank in ranks:
        assert all(torch.equal(rank["linear"][k], rank_0[k]) for k in rank_0)


@pytest.mark.e2e
def test_gathered_rows_come_back_in_order_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    for rank in ranks:
        for n in (5, 1, 0):
            expected = torch.arange(n, dtype=torch.float32).unsqueeze(1).repeat(1, 2)
            assert torch.equal(rank["gathered"][n], expected)
