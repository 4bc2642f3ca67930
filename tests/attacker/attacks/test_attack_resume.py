"""Resumable GAN attacks (``attacker.attacks.resume``): an interrupted run continues from its last saved epoch and
returns, bit for bit, what the uninterrupted run returns; the pre-training is trained once; a finished run is
kept small and returned as is; a changed input is a new run; an unreadable or ill-fitting entry starts afresh
from the true initial state; a save never replaces an entry that holds more; a data-parallel or non-resumable run
keeps nothing. A synthetic split of 24 fit images (3 steps an epoch, against n_critic 2: a resume at an odd step
count) keeps each run to about a second."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from synthetic_split import synthetic_split

from attacker.attacks import (
    AttackCancelled,
    AttackSplit,
    DecoderAttackConfig,
    GanAttackConfig,
    ProgressMonitor,
    TrainedAttack,
    resume,
    run_attack,
)
from attacker.attacks.disk_cache import CACHE_ENV, read_entry, write_entry
from attacker.attacks.saved_state import adam_state
from cem.distributed import DistributedContext
from cem.obfuscation import ObfuscationConfig

PRETRAIN = DecoderAttackConfig(batch_size=8, min_steps_per_epoch=0, num_blocks=1, channels=4)
GAN = GanAttackConfig(epochs=4, batch_size=8, min_steps_per_epoch=0, n_critic=2, critic_dim=4)
NOISE = ObfuscationConfig(noise_std=0.1)


_split = synthetic_split


def _gan(split: AttackSplit, messages: list[str] | None = None, stop_at: str | None = None,
         noise: ObfuscationConfig = NOISE, resumable: bool = True, config: GanAttackConfig = GAN) -> TrainedAttack:
    """The GAN attack (pre-training included); with ``stop_at``, cancelled at the first message starting so."""
    seen = messages if messages is not None else []
    monitor = ProgressMonitor(progress=lambda _, message: seen.append(message),
                              should_stop=lambda: stop_at is not None and any(m.startswith(stop_at) for m in seen))
    return run_attack("gan", split, noise, seed=0, decoder_config=PRETRAIN, gan_config=config, monitor=monitor,
                      resumable=resumable)


def _same_run(a: TrainedAttack, b: TrainedAttack) -> None:
    assert a.best_epoch == b.best_epoch
    drop = [{k: v for k, v in row.items() if k != "epoch_s"} for row in a.history]
    assert drop == [{k: v for k, v in row.items() if k != "epoch_s"} for row in b.history]
    left, right = a.network.state_dict(), b.network.state_dict()
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of this test's own, saving after every epoch."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(resume, "SAVE_INTERVAL_S", 0.0)
    return tmp_path / "cache" / resume.RUN_FOLDER


@pytest.fixture
def uninterrupted(monkeypatch: pytest.MonkeyPatch) -> TrainedAttack:
    with monkeypatch.context() as patch:
        patch.setenv(CACHE_ENV, "")  # no cache: the run as it always was
        return _gan(_split())


def test_an_interrupted_gan_attack_resumes_to_the_uninterrupted_result(
    cache: Path, uninterrupted: TrainedAttack
) -> None:
    with pytest.raises(AttackCancelled):
        _gan(_split(), stop_at="GAN attack: epoch 2/")  # after one epoch: 3 global steps, odd against n_critic 2
    assert sorted(p.name.split("-")[0] for p in cache.iterdir()) == ["decoder", "gan"]  # pre-training, GAN state
    messages: list[str] = []
    resumed = _gan(_split(), messages)
    assert "decoder attack: pre-training loaded from the cache" in messages
    assert not any(m.startswith("decoder attack: epoch") for m in messages)
    assert "GAN attack: resumed after epoch 1/4" in messages
    assert not any(m.startswith("GAN attack: epoch 1/") for m in messages)
    assert resumed.resumed_epochs == 1 and resumed.pretraining_cached and not uninterrupted.pretraining_cached
    _same_run(resumed, uninterrupted)

    (entry,) = cache.glob("gan-*")
    tensors, _ = read_entry(entry)
    assert {name.split(".")[0] for name in tensors} == {"network"}  # finished: the generator only
    messages.clear()
    again = _gan(_split(), messages)  # nothing left to train
    assert "GAN attack: the finished run loaded from the cache" in messages
    assert not any(m.startswith("GAN attack: epoch") for m in messages)
    assert again.resumed_epochs == GAN.epochs
    _same_run(again, uninterrupted)


def test_a_best_checkpoint_before_the_interruption_is_kept(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hot = dataclasses.replace(GAN, generator_lr=0.05)  # its validation MSE is lowest at epoch 3, not at the end
    with monkeypatch.context() as patch:
        patch.setenv(CACHE_ENV, "")
        uninterrupted = _gan(_split(), config=hot)
    assert uninterrupted.best_epoch == 3
    with pytest.raises(AttackCancelled):
        _gan(_split(), stop_at="GAN attack: epoch 4/", config=hot)
    resumed = _gan(_split(), config=hot)
    assert resumed.resumed_epochs == 3
    _same_run(resumed, uninterrupted)


def _edit_entry(path: Path, edit: object) -> None:
    tensors, metadata = read_entry(path)
    state = json.loads(metadata["state"])
    state = edit(tensors, state)  # type: ignore[operator]
    write_entry(path, tensors, {**metadata, "state": json.dumps(state)})


def _set(key: str, value: object) -> object:
    def edit(_: dict[str, torch.Tensor], state: dict[str, object]) -> dict[str, object]:
        return {**state, key: value}
    return edit


def _tensor(name: str, value: torch.Tensor | None) -> object:
    def edit(tensors: dict[str, torch.Tensor], state: dict[str, object]) -> dict[str, object]:
        if value is None:
            del tensors[name]
        else:
            tensors[name] = value
        return state
    return edit


def _group(optimizer: str, key: str, value: object) -> object:
    def edit(_: dict[str, torch.Tensor], state: dict[str, Any]) -> dict[str, Any]:
        state[optimizer]["param_groups"][0][key] = value
        return state
    return edit


def _history(key: str, value: object) -> object:
    def edit(_: dict[str, torch.Tensor], state: dict[str, Any]) -> dict[str, Any]:
        state["history"][0][key] = value
        return state
    return edit


def _rewrite(name: str, make: Callable[[torch.Tensor], torch.Tensor]) -> object:
    def edit(tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> dict[str, Any]:
        tensors[name] = make(tensors[name])
        return state
    return edit


ILL_FITTING = {
    "epoch-text": _set("epoch", "two"), "epoch-negative": _set("epoch", -1), "epoch-beyond": _set("epoch", 99),
    "step-null": _set("step", None), "step-other": _set("step", 1), "best-mse-null": _set("best_mse", None),
    "best-mse-nan": _set("best_mse", float("nan")), "best-mse-lower": _set("best_mse", -1.0),
    "best-after-epoch": _set("best_epoch", 7), "best-not-lowest": _set("best_epoch", 1),
    "history-number": _set("history", 5), "history-short": _set("history", [{"epoch": 1, "val_mse": 0.1}]),
    "history-text": _history("val_mse", "x"), "history-no-val": _history("val_mse", None),
    "history-inf": _history("critic_loss", float("inf")), "state-list": lambda tensors, state: [state],
    "groups-empty": _set("opt_d", {"param_groups": [], "scalars": {}}), "betas-short": _group("opt_d", "betas", [0.5]),
    "amsgrad": _group("opt_d", "amsgrad", True), "weight-decay": _group("opt_g", "weight_decay", 10.0),
    "fused": _group("opt_d", "fused", True), "rng-missing": _tensor("rng.noise", None),
    "rng-float": _tensor("rng.shuffle", torch.zeros(5)), "rng-invalid": _rewrite("rng.noise", torch.zeros_like),
    "weight-missing": _tensor("generator.layers.0.body.2.weight", None),
    "weight-shape": _tensor("critic.layers.0.weight", torch.zeros(1)),
    "moment-shape": _tensor("opt_d.0.exp_avg", torch.zeros(3)),
    "moment-negative": _rewrite("opt_d.0.exp_avg_sq", lambda t: -torch.ones_like(t)),
    "step-vector": _tensor("opt_g.0.step", torch.zeros(2)),
    "step-negative": _tensor("opt_d.0.step", torch.tensor(-1.0)),
    "step-nan": _tensor("opt_d.0.step", torch.tensor(float("nan"))),
    "step-behind": _tensor("opt_d.0.step", torch.tensor(5.0)),
    "best-shape": _tensor("best.layers.0.body.0.bias", torch.zeros(7)),
    "best-nan": _rewrite("best.layers.0.body.0.bias", lambda t: torch.full_like(t, float("nan"))),
}


@pytest.mark.parametrize("edit", ILL_FITTING.values(), ids=ILL_FITTING.keys())
def test_an_entry_that_does_not_fit_starts_afresh_and_is_replaced(cache: Path, uninterrupted: TrainedAttack,
                                                                  edit: object,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(AttackCancelled):
        _gan(_split(), stop_at="GAN attack: epoch 3/")
    (entry,) = cache.glob("gan-*")
    names = set(read_entry(entry)[0])
    assert {"generator.layers.0.body.2.weight", "best.layers.0.body.0.bias", "critic.layers.0.weight",
            "opt_d.0.exp_avg", "opt_g.0.step", "rng.noise", "rng.shuffle"} <= names  # the edits below bite
    _edit_entry(entry, edit)
    with caplog.at_level(logging.WARNING, logger="attacker.attacks.resume"):
        fresh = _gan(_split())
    assert fresh.resumed_epochs == 0
    assert any("is not used" in r.getMessage() for r in caplog.records)
    _same_run(fresh, uninterrupted)  # from the true initial state: nothing of the entry was half-loaded
    messages: list[str] = []
    _gan(_split(), messages)
    assert "GAN attack: the finished run loaded from the cache" in messages  # the rejected entry was replaced


def test_the_learning_rate_is_the_schedules_not_the_entrys(cache: Path, uninterrupted: TrainedAttack) -> None:
    with pytest.raises(AttackCancelled):
        _gan(_split(), stop_at="GAN attack: epoch 3/")
    (entry,) = cache.glob("gan-*")
    _edit_entry(entry, _group("opt_d", "lr", "x"))
    resumed = _gan(_split())
    assert resumed.resumed_epochs == 2
    _same_run(resumed, uninterrupted)


def test_a_state_nested_too_deep_to_parse_is_unreadable(cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(AttackCancelled):
        _gan(_split(), stop_at="GAN attack: epoch 2/")
    (entry,) = cache.glob("gan-*")
    tensors, metadata = read_entry(entry)
    write_entry(entry, tensors, {**metadata, "state": "[" * 200_000 + "]" * 200_000})
    with caplog.at_level(logging.WARNING, logger="attacker.attacks.resume"):
        assert _gan(_split()).resumed_epochs == 0
    assert any("is unreadable" in r.getMessage() for r in caplog.records)


def test_other_inputs_are_another_run(cache: Path) -> None:
    first = _gan(_split())
    other = _gan(_split(), noise=ObfuscationConfig(noise_std=0.2))
    assert first.resumed_epochs == other.resumed_epochs == 0
    assert len(list(cache.glob("gan-*"))) == 2


def test_an_unreadable_entry_starts_afresh(cache: Path, uninterrupted: TrainedAttack,
                                           caplog: pytest.LogCaptureFixture) -> None:
    _gan(_split())
    for entry in cache.iterdir():
        entry.write_bytes(entry.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="attacker.attacks.resume"):
        fresh = _gan(_split())
    assert fresh.resumed_epochs == 0
    assert sum("is unreadable" in r.getMessage() for r in caplog.records) == 2  # pre-training and GAN
    _same_run(fresh, uninterrupted)


@pytest.mark.parametrize("edit", [
    _tensor("network.layers.0.body.2.weight", torch.zeros(1)),
    _rewrite("network.layers.0.body.2.weight", lambda t: torch.full_like(t, float("nan"))),
    _history("val_mse", 1e-9), _set("best_epoch", 0), _set("history", []),
], ids=["weight-shape", "weight-nan", "history-not-selecting-best", "best-epoch-zero", "history-empty"])
def test_a_finished_entry_that_does_not_fit_is_trained_again_and_replaced(
    cache: Path, uninterrupted: TrainedAttack, edit: object
) -> None:
    _gan(_split())
    for path in cache.iterdir():  # the GAN's and the pre-training's
        _edit_entry(path, edit)
    messages: list[str] = []
    again = _gan(_split(), messages)
    assert again.resumed_epochs == 0
    assert any(m.startswith("decoder attack: epoch") for m in messages)  # the pre-training too
    _same_run(again, uninterrupted)
    messages.clear()
    assert _gan(_split(), messages).resumed_epochs == GAN.epochs
    assert "decoder attack: pre-training loaded from the cache" in messages


def test_a_save_never_replaces_an_entry_that_holds_more(tmp_path: Path) -> None:
    entry = resume.RunEntry(tmp_path / "run.safetensors")
    entry.save({"x": torch.ones(1)}, {"epoch": 3}, progress=3)
    resume.RunEntry(entry.path).save({"x": torch.zeros(1)}, {"epoch": 2}, progress=2)  # a slower twin
    tensors, metadata = read_entry(entry.path)
    assert json.loads(metadata["state"]) == {"epoch": 3} and torch.equal(tensors["x"], torch.ones(1))
    resume.RunEntry(entry.path).save({"x": torch.zeros(1)}, {"finished": True}, progress=resume.FINISHED)
    assert json.loads(read_entry(entry.path)[1]["state"]) == {"finished": True}


def test_a_data_parallel_run_or_an_empty_cache_setting_keeps_nothing(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    split = _split()
    two_ranks = DistributedContext(rank=0, world_size=2, backend="gloo")
    assert resume.run_entry("gan", split, NOISE, GAN, 0, distributed=two_ranks) is None
    _gan(split, resumable=False)
    assert not cache.exists()
    monkeypatch.setenv(CACHE_ENV, "")
    assert resume.run_entry("gan", split, NOISE, GAN, 0, distributed=DistributedContext()) is None
    _gan(split)
    assert not cache.exists()


def test_optimizer_state_round_trips_through_tensors_and_json() -> None:
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2, betas=(0.5, 0.999))
    layer(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    tensors, rest = resume.optimizer_tensors("opt", optimizer)
    copy = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=1.0, betas=(0.5, 0.999))
    copy.load_state_dict(adam_state(copy, "opt", tensors, json.loads(json.dumps(rest)), step=1))
    original, restored = optimizer.state_dict(), copy.state_dict()
    assert original["param_groups"] == restored["param_groups"]
    for index, values in original["state"].items():
        for name, value in values.items():
            assert torch.equal(value, restored["state"][index][name])
