"""Identity leakage: is a reconstruction still recognisable as its class?

MSE, PSNR and SSIM say how close the reconstructed pixels are; they do not say whether what leaked
still identifies the image. *Attack accuracy* does (the model-inversion literature's evaluation
classifier, e.g. GMI's): the share of reconstructions that an independent classifier assigns to
the true class. It is read against two marks: ``classifier_accuracy``, the same classifier on the
original scored images (the ceiling: a perfect reconstruction scores it), and ``chance_accuracy``,
1 / num_classes (a reconstruction that carries nothing about the class).

The classifier is trained on the attacker's own data only: the split's ``fit`` images and labels,
with the checkpoint chosen on its ``val`` images. It never sees the scored (``eval``) images, so a
high attack accuracy cannot come from a classifier that memorised them. It is a small CNN, seeded
like the attack networks (global RNG untouched), cheap enough to train beside every audit
(docs/attacks.md gives its accuracy and training time on digits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from attacker.attacks.data import FeatureSet
from attacker.attacks.loop import CheckpointKeeper, count_batches, iterate_batches
from attacker.attacks.monitor import ProgressMonitor
from cem.errors import ConfigError, MetricInputError

CLASSIFIER_STAGES = 3  # conv-BN-ReLU-pool stages; each halves the side
PREDICT_BATCH_SIZE = 256


def build_classifier_network(in_channels: int, num_classes: int, width: int) -> nn.Sequential:
    """Three conv3x3-BN-ReLU-maxpool stages (``width``, 2x, 4x channels), global average pool, linear.

    The pooling makes it take any side >= 8, and BN after the first conv makes it indifferent to
    the data set's normalisation (it sees images in [0, 1], as the reconstructions are)."""
    layers: list[nn.Module] = []
    channels = in_channels
    for stage in range(CLASSIFIER_STAGES):
        out = width * 2**stage
        layers += [
            nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


@dataclass
class IdentityClassifier:
    """A trained evaluation classifier (best validation checkpoint, eval mode).

    ``val_curve`` holds the validation accuracy of every epoch (empty without validation images);
    ``val_accuracy`` is that of ``best_epoch``, None without validation images (then the last epoch
    is kept).
    """

    network: nn.Module
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W) it was trained on
    best_epoch: int = 0
    val_curve: list[float] = field(default_factory=list)

    @property
    def val_accuracy(self) -> float | None:
        return self.val_curve[self.best_epoch - 1] if self.val_curve else None

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = PREDICT_BATCH_SIZE) -> torch.Tensor:
        """(N, C, H, W) in [0, 1] -> (N,) int64 predicted classes, on the images' device. Restores the
        network's mode afterwards."""
        if images.dim() != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise MetricInputError(
                f"expected images of shape (N, {', '.join(map(str, self.image_shape))}) for this classifier, "
                f"got {tuple(images.shape)}"
            )
        was_training = self.network.training
        self.network.eval()
        try:
            chunks = [self.network(images[i : i + batch_size]).argmax(dim=1) for i in range(0, len(images), batch_size)]
        finally:
            self.network.train(was_training)
        return torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.int64, device=images.device)

    def count_correct(self, images: torch.Tensor, labels: torch.Tensor) -> int:
        """How many of ``images`` (N, C, H, W) are classified as their ``labels`` (N,)."""
        if labels.shape != images.shape[:1]:
            raise MetricInputError(f"expected {images.shape[0]} labels, got shape {tuple(labels.shape)}")
        return int((self.predict(images) == labels.to(images.device)).sum())

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Share of ``images`` classified as their ``labels``; for reconstructions: the attack accuracy."""
        if images.shape[0] == 0:
            raise MetricInputError("expected at least one image to classify, got none")
        return self.count_correct(images, labels) / images.shape[0]


def _check_labelled(name: str, data: FeatureSet, num_classes: int) -> torch.Tensor:
    if data.labels is None:
        raise ConfigError(f"expected labelled {name} images for the evaluation classifier, got no labels")
    labels = data.labels
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ConfigError(
            f"expected {name} labels in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]"
        )
    return labels


def train_evaluation_classifier(
    fit: FeatureSet,
    val: FeatureSet,
    num_classes: int,
    *,
    seed: int,
    epochs: int = 6,
    min_steps: int = 200,
    batch_size: int = 32,
    lr: float = 3e-3,
    width: int = 16,
    monitor: ProgressMonitor | None = None,
) -> IdentityClassifier:
    """Train the evaluation classifier on ``fit``'s images and labels; keep the epoch with the best
    accuracy on ``val``'s (the last epoch when ``val`` is empty). Features are not used.

    ``epochs`` is raised until the run takes at least ``min_steps`` optimizer steps: on digits' ``infer``
    column (437 fit images, 14 batches an epoch) 6 epochs left the classifier at 78-87 % test accuracy,
    15 epochs reach 96-98 % (docs/attacks.md). Adam with a cosine decay to zero over all steps.
    Weights and batch order depend only on ``seed`` (global RNG untouched); it runs on the images' device.
    ``monitor`` gets the progress per epoch and is polled for cancellation per batch.
    """
    monitor = monitor or ProgressMonitor()
    if num_classes < 2:
        raise ConfigError(f"expected at least 2 classes, got {num_classes}")
    for name, value, least in (("epochs", epochs, 1), ("min_steps", min_steps, 0), ("batch_size", batch_size, 1),
                               ("width", width, 1)):
        if value < least:
            raise ConfigError(f"expected {name} >= {least}, got {value}")
    if not lr > 0:
        raise ConfigError(f"expected lr > 0, got {lr}")
    if len(fit) == 0:
        raise ConfigError("expected fit images to train the evaluation classifier on, got none")
    side = 2**CLASSIFIER_STAGES
    if fit.images.dim() != 4 or min(fit.images.shape[-2:]) < side:
        raise ConfigError(f"expected (N, C, H, W) images of at least {side}x{side}, got {tuple(fit.images.shape)}")
    if len(val) and val.images.shape[1:] != fit.images.shape[1:]:
        raise ConfigError(
            f"expected val images shaped like the fit images {tuple(fit.images.shape[1:])}, "
            f"got {tuple(val.images.shape[1:])}"
        )
    fit_labels = _check_labelled("fit", fit, num_classes)
    val_labels = _check_labelled("val", val, num_classes) if len(val) else None

    device = fit.images.device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build_classifier_network(int(fit.images.shape[1]), num_classes, width)
    network.to(device)
    c, h, w = (int(d) for d in fit.images.shape[1:])
    classifier = IdentityClassifier(network, num_classes, (c, h, w))
    per_epoch = count_batches(len(fit), batch_size)
    epochs = max(epochs, count_batches(min_steps, per_epoch))
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * per_epoch)
    generator = torch.Generator().manual_seed(seed)
    keeper = CheckpointKeeper(network)  # keeps the lowest score offered: here the validation error rate
    for epoch in range(1, epochs + 1):
        network.train()
        for rows in iterate_batches(len(fit), batch_size, generator, device):
            monitor.check()
            loss = F.cross_entropy(network(fit.images[rows]), fit_labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if val_labels is None:
            keeper.offer(epoch, None)
        else:
            classifier.val_curve.append(classifier.accuracy(val.images, val_labels))
            keeper.offer(epoch, 1.0 - classifier.val_curve[-1])
        monitor.report(epoch / epochs, f"evaluation classifier: epoch {epoch}/{epochs}")
    keeper.restore()
    classifier.best_epoch = keeper.best_epoch
    return classifier


class IdentityMeter:
    """Accumulates attack accuracy over evaluation batches, beside ``cem.metrics.ReconstructionMeter``.

    ``update`` takes one batch of reconstructions, their originals and labels; ``summary`` returns
    ``{"attack_accuracy", "classifier_accuracy", "chance_accuracy"}``: the share of reconstructions
    and of originals classified as their label, and 1 / num_classes.
    """

    def __init__(self, classifier: IdentityClassifier) -> None:
        self.classifier = classifier
        self._n = 0
        self._recon_correct = 0
        self._original_correct = 0

    def update(self, reconstructions: torch.Tensor, originals: torch.Tensor, labels: torch.Tensor) -> None:
        if reconstructions.shape != originals.shape:
            raise MetricInputError(
                f"expected reconstructions and originals of the same shape, got {tuple(reconstructions.shape)} "
                f"and {tuple(originals.shape)}"
            )
        self._n += int(originals.shape[0])
        self._recon_correct += self.classifier.count_correct(reconstructions.detach(), labels)
        self._original_correct += self.classifier.count_correct(originals, labels)

    def summary(self) -> dict[str, float]:
        if self._n == 0:
            raise MetricInputError("expected at least one scored image, got none")
        return {
            "attack_accuracy": self._recon_correct / self._n,
            "classifier_accuracy": self._original_correct / self._n,
            "chance_accuracy": 1.0 / self.classifier.num_classes,
        }
