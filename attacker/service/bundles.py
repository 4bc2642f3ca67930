"""What can be audited: the bundle folders directly under ``--bundles``.

A bundle is named by its folder name or by its model id. Only manifests are
read here (cheap, no weights); the worker verifies the weights when it loads them.
A folder name is looked up among the listed folders, never joined onto the
path, so a request cannot point the service outside ``--bundles``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cem.bounds import privacy_bound
from cem.bundle import load_manifest
from cem.errors import BundleError
from cem.manifest import Manifest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundleEntry:
    name: str  # folder name under --bundles
    path: Path
    manifest: Manifest

    @property
    def bound(self) -> dict[str, Any] | None:
        """The bound the trainer recorded, labelled and checked against the mean-image guess (no attack yet)."""
        return privacy_bound(self.manifest.metrics)


class BundleCatalog:
    def __init__(self, root: Path) -> None:
        self.root = root

    def list_bundles(self) -> list[BundleEntry]:
        """Every readable bundle, by folder name; unreadable folders are logged and left out."""
        entries = []
        for path in sorted(p for p in self.root.iterdir() if p.is_dir()):
            try:
                entries.append(BundleEntry(path.name, path, load_manifest(path)))
            except BundleError as exc:
                logger.debug("not listing %s as a bundle: %s", path.name, exc)
        return entries

    def resolve(self, name_or_model_id: str) -> BundleEntry | None:
        """The bundle whose folder name, or else whose model id, equals the argument."""
        entries = self.list_bundles()
        for entry in entries:
            if entry.name == name_or_model_id:
                return entry
        for entry in entries:
            if entry.manifest.model_id == name_or_model_id:
                return entry
        return None
