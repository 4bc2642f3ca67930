"""A disk cache of trained evaluation classifiers, keyed by everything that decides their weights.

The evaluation classifier (``attacker.attacks.identity``) depends only on the
attacker's own images and labels, the seed and its training settings, never on
the audited model: every audit of a data set trains the same two (one per
column), seconds each on CPU that an auditor comparing ten models pays ten
times. The cache keys a classifier by a SHA-256 of those inputs (the image and
label bytes, the settings, the source of the code that trains it, the torch
version and the device type), so any change of data, seed, settings or training
code is a miss rather than a stale answer. A hit is the classifier these inputs
trained before, bit for bit; a retraining on another thread count or CPU may
differ from it in the last bits, as two trainings there would.

Files are safetensors (no pickle) in the attacker's disk cache
(``attacker.attacks.disk_cache``: ``CEM_CACHE_DIR``, an empty value turning it
off), in ``evaluation-classifiers/``; each is about 100 kB and the folder can be
deleted at any time. A cache that cannot be read or written is logged and
skipped: it never fails an audit.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from attacker.attacks import identity, loop
from attacker.attacks.data import FeatureSet
from attacker.attacks.disk_cache import CACHE_ENV, code_digest, default_cache_dir, hash_tensor, read_entry, write_entry
from attacker.attacks.identity import IdentityClassifier, build_classifier_network, train_evaluation_classifier
from attacker.attacks.monitor import ProgressMonitor

logger = logging.getLogger(__name__)

CACHE_FORMAT = "1"  # bump when this file layout changes; the training code is keyed by its source
CLASSIFIER_FOLDER = "evaluation-classifiers"


@lru_cache(maxsize=1)
def _training_code_digest() -> str:
    """SHA-256 of the modules whose code decides the classifier's weights (its network, training loop and the
    batching and checkpoint helpers it shares with the attacks): editing them invalidates every entry."""
    return code_digest(identity, loop)


def classifier_key(fit: FeatureSet, val: FeatureSet, num_classes: int, settings: dict[str, Any]) -> str:
    """SHA-256 over the cache format, the training code, torch's version, the device type, the settings and the
    images' and labels' shapes, dtypes and bytes: what decides the trained weights."""
    digest = hashlib.sha256()
    header = {"format": CACHE_FORMAT, "code": _training_code_digest(), "torch": torch.__version__,
              "device": fit.images.device.type, "num_classes": num_classes, "settings": settings}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for part in (fit, val):
        for tensor in (part.images, part.labels):
            hash_tensor(digest, tensor)
    return digest.hexdigest()


def _load(path: Path) -> IdentityClassifier:
    """The classifier stored at ``path``, on the CPU; ValueError, KeyError, TypeError or a safetensors or
    load_state_dict error when the file is not a whole entry of this format."""
    state, metadata = read_entry(path)
    if metadata.get("format") != CACHE_FORMAT:
        raise ValueError(f"cache format {metadata.get('format')!r}, expected {CACHE_FORMAT!r}")
    c, h, w = (int(d) for d in json.loads(metadata["image_shape"]))
    num_classes = int(metadata["num_classes"])
    network = build_classifier_network(c, num_classes, int(metadata["width"]))
    network.load_state_dict(state, strict=True)
    return IdentityClassifier(network, num_classes, (c, h, w), best_epoch=int(metadata["best_epoch"]),
                              val_curve=[float(v) for v in json.loads(metadata["val_curve"])])


def _store(path: Path, classifier: IdentityClassifier, width: int) -> None:
    metadata = {"format": CACHE_FORMAT, "num_classes": str(classifier.num_classes), "width": str(width),
                "image_shape": json.dumps(list(classifier.image_shape)), "best_epoch": str(classifier.best_epoch),
                "val_curve": json.dumps(classifier.val_curve)}
    write_entry(path, classifier.network.state_dict(), metadata)


def evaluation_classifier(
    fit: FeatureSet,
    val: FeatureSet,
    num_classes: int,
    *,
    seed: int,
    monitor: ProgressMonitor | None = None,
    cache_dir: Path | None = None,
    **settings: Any,
) -> IdentityClassifier:
    """``train_evaluation_classifier(fit, val, num_classes, seed=seed, **settings)``, or the classifier those same
    inputs trained before, from ``cache_dir`` (default ``default_cache_dir()``; None there: always train).
    Settings not given take ``train_evaluation_classifier``'s defaults, in the key too."""
    monitor = monitor or ProgressMonitor()
    root = cache_dir if cache_dir is not None else default_cache_dir()
    if root is None:
        return train_evaluation_classifier(fit, val, num_classes, seed=seed, monitor=monitor, **settings)
    resolved = {**_training_defaults(), **settings, "seed": seed}
    path = root / CLASSIFIER_FOLDER / f"{classifier_key(fit, val, num_classes, resolved)}.safetensors"
    if path.is_file():
        try:
            classifier = _load(path)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
            logger.warning("retraining the evaluation classifier: its cache entry %s is unreadable (%s)", path, exc)
        else:
            classifier.network.to(fit.images.device)  # outside the guard: a device error is not a bad entry
            monitor.report(1.0, "evaluation classifier: cached")
            return classifier
    classifier = train_evaluation_classifier(fit, val, num_classes, seed=seed, monitor=monitor, **settings)
    try:
        _store(path, classifier, int(resolved["width"]))
    except OSError as exc:
        logger.warning("could not cache the evaluation classifier in %s (%s); set %s to another folder, or to "
                       "an empty value to turn the cache off", path.parent, exc, CACHE_ENV)
    return classifier


def _training_defaults() -> dict[str, Any]:
    """``train_evaluation_classifier``'s keyword defaults (epochs, lr, width, ...): one source for the key."""
    parameters = inspect.signature(train_evaluation_classifier).parameters.values()
    return {p.name: p.default for p in parameters
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
            and p.name != "monitor"}
