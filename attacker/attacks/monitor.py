"""Progress reporting and cancellation for long attack loops.

A ``ProgressMonitor`` maps a loop's local progress into its slice of the whole
job (``child``), so nested phases (pretraining, then the GAN, for two protocols)
report one monotone fraction in [0, 1]. ``check`` is called once per batch and
raises ``AttackCancelled`` as soon as the caller's ``should_stop`` says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cem.errors import CEMError

ProgressCallback = Callable[[float, str], None]
StopCallback = Callable[[], bool]


class AttackCancelled(CEMError):
    """The caller asked the attack to stop; no result was produced."""


@dataclass(frozen=True)
class ProgressMonitor:
    """Reports ``start + span * fraction`` to ``progress``; polls ``should_stop``."""

    progress: ProgressCallback | None = None
    should_stop: StopCallback | None = None
    start: float = 0.0
    span: float = 1.0

    def report(self, fraction: float, message: str) -> None:
        if self.progress is not None:
            self.progress(min(1.0, max(0.0, self.start + self.span * min(1.0, max(0.0, fraction)))), message)

    def check(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise AttackCancelled("the attack was cancelled by its caller")

    def child(self, start: float, span: float) -> ProgressMonitor:
        """The sub-range [start, start + span] of this monitor's range (both in local fractions)."""
        return ProgressMonitor(self.progress, self.should_stop, self.start + self.span * start, self.span * span)
