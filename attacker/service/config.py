"""The audit service's settings, built once at start-up (never at import time), and its workers'.

``load_settings`` refuses to build settings without a bearer token unless the
operator explicitly asked for ``--insecure-no-auth``: an audit service hands
out reconstructions of private images, so an open one must be a deliberate choice.

``WorkerSettings`` crosses the process boundary to each audit worker as one JSON
argument, validated on arrival, so a new worker setting is a new field here and
nothing else.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from pydantic import ConfigDict, TypeAdapter, ValidationError

from attacker.service.api.token_env import TOKEN_ENV
from cem.devices import DEVICE_CHOICES
from cem.errors import ConfigError
from cem.logs import LOG_LEVELS

MIN_TOKEN_CHARS = 16
# Length alone let "aaaaaaaaaaaaaaaa" or 16 spaces through. The plug-in estimate below (length x
# Shannon entropy of the characters) is crude but catches repeats and tiny alphabets; a 32-hex-digit
# token from `openssl rand -hex 16` scores about 115 bits.
MIN_TOKEN_DISTINCT_CHARS = 8
MIN_TOKEN_ENTROPY_BITS = 48.0
# The placeholder shipped in audit.env.example; running with it is as good as no token.
PLACEHOLDER_TOKENS = frozenset({"replace-me-with-a-long-random-token", "changeme", "change-me"})
RecoveryPolicy = Literal["interrupt", "requeue"]
RECOVERY_POLICIES: tuple[str, ...] = get_args(RecoveryPolicy)


def token_weakness(token: str) -> str | None:
    """Why ``token`` is too guessable to guard reconstructions of private images, or None."""
    if any(c.isspace() for c in token):
        return "whitespace in it"
    distinct = len(set(token))
    if distinct < MIN_TOKEN_DISTINCT_CHARS:
        return f"only {distinct} distinct characters (at least {MIN_TOKEN_DISTINCT_CHARS})"
    counts = [token.count(c) for c in set(token)]
    bits = -sum(n * math.log2(n / len(token)) for n in counts)
    if bits < MIN_TOKEN_ENTROPY_BITS:
        return f"about {bits:.0f} bits of character entropy (at least {MIN_TOKEN_ENTROPY_BITS:.0f})"
    return None


@dataclass(frozen=True)
class ServiceSettings:
    bundles_dir: Path
    captures_dir: Path
    db_path: Path
    token: str | None
    host: str = "127.0.0.1"
    port: int = 8000
    results_dir: Path | None = None  # default: "<db stem>-results" beside the database
    max_jobs: int = 1  # audits running at once (one worker process each)
    on_restart: RecoveryPolicy = "interrupt"  # what happens to a job that was running when the service died
    device: str = "auto"
    data_dir: Path | None = None
    worker_threads: int = 1  # torch threads per worker process
    max_captured_samples: int = 256  # captured samples an audit reconstructs at most
    insecure_no_auth: bool = False
    poll_interval_s: float = 0.2  # how often an idle worker looks for queued jobs
    experiments_dir: Path | None = None  # cem-experiment output folders the console shows; None: no such page

    def __post_init__(self) -> None:
        if self.token is None and not self.insecure_no_auth:
            raise ConfigError(
                f"expected the bearer token in ${TOKEN_ENV}; refusing to start without one (or pass --insecure-no-auth)"
            )
        if self.token is not None:
            if self.token.strip() in PLACEHOLDER_TOKENS:
                raise ConfigError(f"expected a real token in ${TOKEN_ENV}, got the example placeholder")
            if len(self.token) < MIN_TOKEN_CHARS:
                raise ConfigError(
                    f"expected a token of at least {MIN_TOKEN_CHARS} characters in ${TOKEN_ENV}, got {len(self.token)}"
                )
            weakness = token_weakness(self.token)
            if weakness:
                raise ConfigError(
                    f"expected a random token in ${TOKEN_ENV} (e.g. `openssl rand -hex 32`), got {weakness}"
                )
        if not self.bundles_dir.is_dir():
            raise ConfigError(f"expected --bundles to be a directory, got {self.bundles_dir}")
        if self.experiments_dir is not None and not self.experiments_dir.is_dir():
            raise ConfigError(f"expected --experiments to be a directory, got {self.experiments_dir}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"expected a port in [0, 65535], got {self.port}")
        if self.max_jobs < 1:
            raise ConfigError(f"expected max_jobs >= 1, got {self.max_jobs}")
        if self.on_restart not in RECOVERY_POLICIES:
            raise ConfigError(f"expected on_restart 'interrupt' or 'requeue', got {self.on_restart!r}")
        if self.device not in DEVICE_CHOICES:
            raise ConfigError(f"expected device in {DEVICE_CHOICES}, got {self.device!r}")
        if self.worker_threads < 1:
            raise ConfigError(f"expected worker_threads >= 1, got {self.worker_threads}")
        if self.max_captured_samples < 0:
            raise ConfigError(f"expected max_captured_samples >= 0, got {self.max_captured_samples}")
        if self.poll_interval_s <= 0:
            raise ConfigError(f"expected poll_interval_s > 0, got {self.poll_interval_s}")

    @property
    def auth_required(self) -> bool:
        return self.token is not None

    @property
    def resolved_results_dir(self) -> Path:
        return self.results_dir or self.db_path.with_name(self.db_path.stem + "-results")

    def worker_settings(self, parent_pid: int, log_level: str) -> WorkerSettings:
        """What one audit worker of this service needs; ``parent_pid`` is the service's pid."""
        return WorkerSettings(
            db_path=self.db_path,
            results_dir=self.resolved_results_dir,
            captures_dir=self.captures_dir,
            parent_pid=parent_pid,
            device=self.device,
            data_dir=self.data_dir,
            threads=self.worker_threads,
            max_captured_samples=self.max_captured_samples,
            on_stop=self.on_restart,
            poll_interval_s=self.poll_interval_s,
            log_level=log_level,
        )


@dataclass(frozen=True)
class WorkerSettings:
    """One audit worker process: where the jobs, results and captures are, and how to run them.

    Built only by ``ServiceSettings.worker_settings``, so it has no defaults of its own: the
    service's are the ones. ``on_stop`` is what becomes of the running job when the worker is
    told to stop (the service's ``on_restart``); ``parent_pid`` is the service, whose death
    stops the worker.
    """

    # Pydantic reads this when parsing the JSON: unknown keys are refused and no value is coerced
    # ("3" is not a pid), so a supervisor/worker mismatch fails loudly at start-up.
    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)

    db_path: Path
    results_dir: Path
    captures_dir: Path
    parent_pid: int
    device: str
    data_dir: Path | None
    threads: int
    max_captured_samples: int
    on_stop: RecoveryPolicy
    poll_interval_s: float
    log_level: str

    def __post_init__(self) -> None:
        if self.on_stop not in RECOVERY_POLICIES:
            raise ConfigError(f"expected on_stop 'interrupt' or 'requeue', got {self.on_stop!r}")
        if self.threads < 1:
            raise ConfigError(f"expected threads >= 1, got {self.threads}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"expected log_level in {LOG_LEVELS}, got {self.log_level!r}")

    def to_json(self) -> str:
        return _WORKER_SETTINGS.dump_json(self).decode()

    @classmethod
    def from_json(cls, text: str) -> WorkerSettings:
        """Parse and validate what ``to_json`` wrote; anything else is a ``ConfigError``."""
        try:
            return _WORKER_SETTINGS.validate_json(text)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"expected WorkerSettings as JSON, got {problems}") from None


_WORKER_SETTINGS = TypeAdapter(WorkerSettings)


def load_settings(
    *,
    bundles_dir: Path,
    captures_dir: Path,
    db_path: Path,
    insecure_no_auth: bool = False,
    environ: Mapping[str, str] | None = None,
    **options: object,
) -> ServiceSettings:
    """Settings from CLI values plus the token from the environment (``CEM_AUDIT_TOKEN``)."""
    env = os.environ if environ is None else environ
    token = env.get(TOKEN_ENV) or None
    return ServiceSettings(
        bundles_dir=Path(bundles_dir),
        captures_dir=Path(captures_dir),
        db_path=Path(db_path),
        token=token,
        insecure_no_auth=insecure_no_auth,
        **options,  # type: ignore[arg-type]
    )
