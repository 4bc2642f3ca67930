"""The evaluation-classifier cache: a hit is the classifier the same inputs trained, bit for bit; any change of
data, seed or settings is a miss; a corrupt or unwritable cache never fails an audit; an empty CEM_CACHE_DIR
turns it off."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from attacker.attacks import FeatureSet, IdentityClassifier, ProgressMonitor, classifier_cache, evaluation_classifier
from attacker.attacks.classifier_cache import CLASSIFIER_FOLDER
from attacker.attacks.disk_cache import CACHE_ENV, STALE_TMP_S, default_cache_dir
from cem.durable import TMP_PREFIX

QUICK = {"epochs": 2, "min_steps": 0, "width": 4}


def tiny_sets() -> tuple[FeatureSet, FeatureSet]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(48, 1, 8, 8, generator=generator)
    labels = torch.arange(48) % 3
    return FeatureSet(images[:32], images[:32], labels[:32]), FeatureSet(images[32:], images[32:], labels[32:])


def messages_of(call: Callable[[ProgressMonitor], IdentityClassifier]) -> tuple[IdentityClassifier, list[str]]:
    """What ``call`` returns and the progress messages it reported."""
    seen: list[str] = []
    return call(ProgressMonitor(progress=lambda _, message: seen.append(message))), seen


def same(a: IdentityClassifier, b: IdentityClassifier) -> bool:
    state_a, state_b = a.network.state_dict(), b.network.state_dict()
    return (state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
            and (a.best_epoch, a.val_curve, a.image_shape, a.num_classes)
            == (b.best_epoch, b.val_curve, b.image_shape, b.num_classes))


def test_a_hit_is_the_trained_classifier_and_any_changed_input_is_a_miss(tmp_path: Path) -> None:
    fit, val = tiny_sets()
    first, trained = messages_of(lambda m: evaluation_classifier(fit, val, 3, seed=0, monitor=m,
                                                                 cache_dir=tmp_path, **QUICK))
    again, loaded = messages_of(lambda m: evaluation_classifier(fit, val, 3, seed=0, monitor=m,
                                                                cache_dir=tmp_path, **QUICK))
    assert "evaluation classifier: epoch 2/2" in trained and loaded == ["evaluation classifier: cached"]
    assert same(first, again) and first.network is not again.network
    images = torch.rand(4, 1, 8, 8)
    assert torch.equal(first.predict(images), again.predict(images))
    entries = sorted((tmp_path / CLASSIFIER_FOLDER).iterdir())
    assert len(entries) == 1 and entries[0].suffix == ".safetensors"

    changed = fit.images.clone()
    changed[0, 0, 0, 0] += 0.25
    for call in (dict(seed=1, **QUICK), dict(seed=0, **{**QUICK, "lr": 1e-3})):
        evaluation_classifier(fit, val, 3, cache_dir=tmp_path, **call)
    evaluation_classifier(FeatureSet(changed, changed, fit.labels), val, 3, seed=0, cache_dir=tmp_path, **QUICK)
    assert len(list((tmp_path / CLASSIFIER_FOLDER).iterdir())) == 4


def test_edited_training_code_is_a_miss_and_a_dead_writers_temporary_is_swept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fit, val = tiny_sets()
    evaluation_classifier(fit, val, 3, seed=0, cache_dir=tmp_path, **QUICK)
    folder = tmp_path / CLASSIFIER_FOLDER
    dead, live = folder / f"{TMP_PREFIX}a.safetensors.1-aa", folder / f"{TMP_PREFIX}b.safetensors.2-bb"
    for leftover in (dead, live):
        leftover.write_bytes(b"half a file")
    os.utime(dead, (time.time() - 2 * STALE_TMP_S,) * 2)
    monkeypatch.setattr(classifier_cache, "_training_code_digest", lambda: "edited identity.py")
    _, seen = messages_of(lambda m: evaluation_classifier(fit, val, 3, seed=0, monitor=m, cache_dir=tmp_path,
                                                          **QUICK))
    assert "evaluation classifier: cached" not in seen  # the same data and settings, other code: trained again
    assert len(list(folder.glob("*.safetensors"))) == 2 and not dead.exists() and live.exists()


def test_a_corrupt_entry_is_retrained_and_rewritten(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fit, val = tiny_sets()
    reference = evaluation_classifier(fit, val, 3, seed=0, cache_dir=tmp_path, **QUICK)
    (entry,) = (tmp_path / CLASSIFIER_FOLDER).iterdir()
    entry.write_bytes(entry.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        retrained, seen = messages_of(lambda m: evaluation_classifier(fit, val, 3, seed=0, monitor=m,
                                                                      cache_dir=tmp_path, **QUICK))
    assert "its cache entry" in caplog.text and "unreadable" in caplog.text
    assert "evaluation classifier: cached" not in seen and same(reference, retrained)
    assert same(reference, evaluation_classifier(fit, val, 3, seed=0, cache_dir=tmp_path, **QUICK))


def test_an_unwritable_cache_is_logged_and_the_classifier_still_returned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    fit, val = tiny_sets()
    with caplog.at_level(logging.WARNING):
        classifier = evaluation_classifier(fit, val, 3, seed=0, cache_dir=blocker, **QUICK)
    assert classifier.best_epoch >= 1 and "could not cache the evaluation classifier" in caplog.text


def test_the_cache_folder_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    monkeypatch.setenv(CACHE_ENV, "")
    assert default_cache_dir() is None
    fit, val = tiny_sets()
    evaluation_classifier(fit, val, 3, seed=0, **QUICK)  # no cache: trains and writes nothing
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "cem"
    assert not (tmp_path / "here").exists()
