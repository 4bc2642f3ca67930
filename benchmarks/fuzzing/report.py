"""What a run found (``FuzzReport``) and how it is shown: the progress line and the table of calls.

The report is filled on the main thread in case order (``fuzzing.run``), so the same seed gives
the same counts and problems whatever the timing; ``to_dict`` is the ``--json`` line.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from fuzzing.cases import CLASS_WEIGHTS
from fuzzing.spec import PATHS


@dataclass
class FuzzReport:
    """Counts, timings, RSS series and problems of one run; ``problems`` empty means every check passed."""

    seed: int
    cases: int  # distinct cases
    passes: int = 1  # times each case was sent (per path)
    messages: int = 0  # InferRequest-sized wire messages sent per path (a stream carries several)
    seconds: float = 0.0
    counts: Counter = field(default_factory=Counter)  # (kind, path, code name) -> calls
    seconds_by_kind: Counter = field(default_factory=Counter)  # (kind, path) -> seconds spent in calls
    problems: list[tuple[str, str]] = field(default_factory=list)  # (check, what happened)
    notes: list[str] = field(default_factory=list)  # differences that are not failures (see compare_paths)
    warmup: int = 0  # sends before the RSS baseline
    rss_kb: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # service -> [(sends done, kB)]
    rss_growth_kb: dict[str, int] = field(default_factory=dict)  # from the baseline (end of warm-up) to the end
    answered_valid: int = 0  # through the tap, to be found in the capture store
    captured_valid: int = 0
    recorder: dict[str, int] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)

    def fail(self, check: str, message: str) -> None:
        self.problems.append((check, message))

    def failed(self, check: str) -> list[str]:
        """The problems of one check (see CHECKS)."""
        return [message for name, message in self.problems if name == check]

    def to_dict(self) -> dict[str, object]:
        counts = [{"class": k, "path": p, "code": c, "calls": n} for (k, p, c), n in sorted(self.counts.items())]
        seconds = [
            {"class": k, "path": p, "seconds": round(s, 3)} for (k, p), s in sorted(self.seconds_by_kind.items())
        ]
        plain = {k: v for k, v in self.__dict__.items() if k not in ("counts", "seconds_by_kind")}
        return {**plain, "counts": counts, "seconds_by_kind": seconds}


def progress_line(report: FuzzReport, done: int, seconds: float) -> str:
    rss = ", ".join(f"{name} RSS {series[-1][1] / 1024:.1f} MB" for name, series in report.rss_kb.items())
    return (
        f"[fuzz] {done}/{report.cases * report.passes} sends, {seconds:.1f} s, {len(report.problems)} problem(s), {rss}"
    )


def format_table(report: FuzzReport) -> str:
    """Calls per message class x path x status code, then RSS, captures and problems."""
    codes = sorted({c for _, _, c in report.counts}, key=lambda c: (c != "OK", c))
    header = f"{'class':<15} {'path':<7}" + "".join(f"{c:>19}" for c in codes) + f"{'total':>8}{'seconds':>9}"
    lines = [header, "-" * len(header)]
    for kind in CLASS_WEIGHTS:
        for path in PATHS:
            row = [report.counts.get((kind, path, c), 0) for c in codes]
            if sum(row):
                seconds = report.seconds_by_kind.get((kind, path), 0.0)
                lines.append(
                    f"{kind:<15} {path:<7}" + "".join(f"{n:>19}" for n in row) + f"{sum(row):>8}{seconds:>9.1f}"
                )
    lines.append("")
    lines.append(f"RSS MB at sends {' '.join(str(sends) for sends, _ in next(iter(report.rss_kb.values()), []))} "
                 f"(| = end of warm-up, the baseline)")
    for name, series in report.rss_kb.items():
        trail = " ".join(("| " if sends == report.warmup else "") + f"{kb / 1024:.1f}" for sends, kb in series)
        lines.append(f"{name:<5} {trail}  growth after warm-up {report.rss_growth_kb.get(name, 0) / 1024:+.1f} MB")
    lines.append(f"captures: {report.captured_valid}/{report.answered_valid} answered valid requests found; "
                 f"recorder {report.recorder}")
    lines.append(f"exit codes after SIGTERM: {report.exit_codes}")
    lines.append(
        f"{report.cases} cases x {report.passes} pass(es), {report.messages} messages per path, "
        f"{report.seconds:.1f} s, seed {report.seed}; problems: {len(report.problems)}, notes: {len(report.notes)}"
    )
    lines += [f"  {check}: {message}" for check, message in report.problems[:50]]
    lines += [f"  note: {n}" for n in report.notes[:10]]
    return "\n".join(lines)
