"""Identity leakage: labels travel with the attacker's data, and attack accuracy is read against the
evaluation classifier's own accuracy and chance (attacker/attacks/identity.py, docs/attacks.md).

The digits sets below use the images as their "features", so ``nn.Identity`` is a perfect
reconstruction and a constant network a reconstruction that carries nothing: both bracket what a
real attack reaches without training one.
"""

from __future__ import annotations

import re

import pytest
import torch
from bundle_fixtures import build_digits_model
from torch import nn

from attacker.attacks import (
    MODES,
    AttackSplit,
    FeatureSet,
    IdentityClassifier,
    build_attack_split,
    compute_feature_set,
    evaluate_attack,
    load_images,
    load_labeled_images,
    train_evaluation_classifier,
)
from cem.errors import ConfigError
from cem.obfuscation import ObfuscationConfig

DIGITS_CLASSES = 10
# Measured on the digits test split (539 images), trained on the train split's fit part (1,132 images)
# with the defaults: 0.981-0.991 over seeds 0-4 (docs/attacks.md).
HELD_OUT_ACCURACY_FLOOR = 0.95
QUICK = {"epochs": 1, "min_steps": 0}  # for properties that do not need a trained classifier
RECONSTRUCTION_KEYS = {"mse", "psnr", "psnr_batch", "ssim", "ssim_ref", "n"}
IDENTITY_KEYS = {"attack_accuracy", "classifier_accuracy", "chance_accuracy"}


class ConstantImages(nn.Module):
    """A "reconstruction" that carries nothing: mid-grey whatever the features."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.full_like(z, 0.5)


@pytest.fixture(scope="module")
def digits() -> dict[str, FeatureSet]:
    """Both labelled digits splits, the images standing in for their features."""
    sets = {}
    for split in ("train", "test"):
        images, labels = load_labeled_images("digits", split)
        sets[split] = FeatureSet(images, images, labels)
    return sets


@pytest.fixture(scope="module")
def split(digits: dict[str, FeatureSet]) -> AttackSplit:
    return build_attack_split("train", digits["train"], digits["test"], seed=0)


@pytest.fixture(scope="module")
def classifier(split: AttackSplit) -> IdentityClassifier:
    return train_evaluation_classifier(split.fit, split.val, DIGITS_CLASSES, seed=0)


def test_labels_come_with_the_images_and_survive_the_encoder() -> None:
    images, labels = load_labeled_images("digits", "test")
    assert torch.equal(images, load_images("digits", "test"))
    assert labels.dtype == torch.int64 and labels.shape == (images.shape[0],)
    assert set(labels.tolist()) == set(range(DIGITS_CLASSES))
    encoder = build_digits_model().encoder
    labelled = compute_feature_set(encoder, images[:40], labels[:40], batch_size=16)
    assert labelled.labels is not None and torch.equal(labelled.labels, labels[:40])
    assert torch.equal(labelled.features, compute_feature_set(encoder, images[:40]).features)
    assert compute_feature_set(encoder, images[:4]).labels is None


@pytest.mark.parametrize("mode", MODES)
def test_labels_travel_with_their_images_through_both_protocols(mode: str) -> None:
    everything = torch.rand(50, 1, 8, 8)  # 30 "train" and 20 "test" images; each label is its image's row
    rows = torch.arange(50)
    train = FeatureSet(everything[:30], everything[:30].flatten(1), rows[:30])
    test = FeatureSet(everything[30:], everything[30:].flatten(1), rows[30:])
    split = build_attack_split(mode, train, test, val_fraction=0.2, seed=3)
    tags = []
    for part in (split.fit, split.val, split.eval):
        assert part.labels is not None and torch.equal(part.images, everything[part.labels])
        tags.append(set(part.labels.tolist()))
    attacker, scored = tags[0] | tags[1], tags[2]
    assert attacker.isdisjoint(scored)
    assert attacker | scored == (set(range(50)) if mode == "train" else set(range(30, 50)))


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (torch.zeros(3, dtype=torch.int64), "expected labels of shape (4,)"),
        (torch.zeros(4, dtype=torch.int32), "dtype int64"),
        (torch.zeros(4, 1, dtype=torch.int64), "expected labels of shape (4,)"),
    ],
)
def test_a_feature_set_rejects_labels_that_do_not_fit(labels: torch.Tensor, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"{re.escape(message)}.*got"):
        FeatureSet(torch.rand(4, 1, 8, 8), torch.rand(4, 2), labels)


def test_the_classifier_recognises_held_out_digits(split: AttackSplit, classifier: IdentityClassifier) -> None:
    assert split.eval.labels is not None
    accuracy = classifier.accuracy(split.eval.images, split.eval.labels)
    assert accuracy >= HELD_OUT_ACCURACY_FLOOR, accuracy
    assert classifier.val_accuracy == max(classifier.val_curve) and classifier.val_accuracy >= HELD_OUT_ACCURACY_FLOOR
    assert not classifier.network.training


def test_attack_accuracy_of_perfect_reconstructions_is_the_classifier_accuracy(
    split: AttackSplit, classifier: IdentityClassifier
) -> None:
    assert split.eval.labels is not None
    metrics = evaluate_attack(nn.Identity(), split.eval, ObfuscationConfig(), seed=0, classifier=classifier).metrics
    assert metrics["attack_accuracy"] == metrics["classifier_accuracy"]
    assert metrics["classifier_accuracy"] == classifier.accuracy(split.eval.images, split.eval.labels)
    assert metrics["chance_accuracy"] == 1 / DIGITS_CLASSES


def test_attack_accuracy_of_grey_images_is_the_share_of_the_one_class_they_get(
    split: AttackSplit, classifier: IdentityClassifier
) -> None:
    assert split.eval.labels is not None
    metrics = evaluate_attack(ConstantImages(), split.eval, ObfuscationConfig(), seed=0, classifier=classifier).metrics
    guess = int(classifier.predict(torch.full((1, 1, 32, 32), 0.5))[0])
    share = int((split.eval.labels == guess).sum()) / len(split.eval)
    assert metrics["attack_accuracy"] == share
    assert abs(metrics["attack_accuracy"] - metrics["chance_accuracy"]) < 0.03  # digits' classes are balanced


def test_the_classifier_depends_on_fit_and_val_only_and_leaves_the_global_rng_alone(
    digits: dict[str, FeatureSet],
) -> None:
    test = digits["test"]
    blanked = test.images.clone()
    blanked[-20:] = 0.0  # the infer column scores the last 10 %: change what it scores, not what it trains on
    assert test.labels is not None
    changed = FeatureSet(blanked, blanked, test.labels)
    before = torch.get_rng_state()
    trained = []
    for scored_set, seed in ((test, 0), (changed, 0), (test, 1)):
        split = build_attack_split("infer", digits["train"], scored_set, seed=0)
        trained.append(train_evaluation_classifier(split.fit, split.val, DIGITS_CLASSES, seed=seed, **QUICK))
    assert torch.equal(torch.get_rng_state(), before)
    weights = [c.network.state_dict() for c in trained]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert trained[0].val_curve == trained[1].val_curve
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])  # the seed does matter


def test_without_val_images_the_last_epoch_is_kept(split: AttackSplit) -> None:
    empty = split.val.subset(slice(0, 0))
    trained = train_evaluation_classifier(split.fit, empty, DIGITS_CLASSES, seed=0, epochs=2, min_steps=0)
    assert trained.best_epoch == 2 and trained.val_accuracy is None and trained.val_curve == []


def test_without_a_classifier_the_metrics_are_as_before(split: AttackSplit, classifier: IdentityClassifier) -> None:
    scored = split.eval.subset(slice(0, 64))
    plain = evaluate_attack(nn.Identity(), scored, ObfuscationConfig(), seed=0).metrics
    assert set(plain) == RECONSTRUCTION_KEYS
    native = evaluate_attack(nn.Identity(), scored, ObfuscationConfig(), seed=0, native_size=8).metrics
    assert set(native) == RECONSTRUCTION_KEYS | {"mse_native"}
    scored_by = evaluate_attack(nn.Identity(), scored, ObfuscationConfig(), seed=0, classifier=classifier).metrics
    assert set(scored_by) == RECONSTRUCTION_KEYS | IDENTITY_KEYS
    assert all(scored_by[k] == plain[k] for k in RECONSTRUCTION_KEYS)


def test_unlabelled_or_mislabelled_data_is_refused(split: AttackSplit, classifier: IdentityClassifier) -> None:
    unlabelled = FeatureSet(split.fit.images, split.fit.features)
    with pytest.raises(ConfigError, match="expected labelled fit images.*got no labels"):
        train_evaluation_classifier(unlabelled, split.val, DIGITS_CLASSES, seed=0)
    with pytest.raises(ConfigError, match=r"expected fit labels in \[0, 5\), got \[0, 9\]"):
        train_evaluation_classifier(split.fit, split.val, 5, seed=0)
    scored = FeatureSet(split.eval.images, split.eval.features)
    with pytest.raises(ConfigError, match="expected labelled scored images.*got no labels"):
        evaluate_attack(nn.Identity(), scored, ObfuscationConfig(), seed=0, classifier=classifier)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_classifier_trains_and_scores_on_cuda(split: AttackSplit) -> None:
    on_cuda = []
    for part in (split.fit, split.val, split.eval):
        assert part.labels is not None
        on_cuda.append(FeatureSet(part.images.cuda(), part.features.cuda(), part.labels.cuda()))
    trained = train_evaluation_classifier(on_cuda[0], on_cuda[1], DIGITS_CLASSES, seed=0, **QUICK)
    assert next(trained.network.parameters()).is_cuda
    metrics = evaluate_attack(nn.Identity(), on_cuda[2], ObfuscationConfig(), seed=0, classifier=trained).metrics
    assert metrics["attack_accuracy"] == metrics["classifier_accuracy"]
