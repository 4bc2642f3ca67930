"""The audit service's settings, built once at start-up (never at import time).

``load_settings`` refuses to build settings without a bearer token unless the
operator explicitly asked for ``--insecure-no-auth``: an audit service hands
out reconstructions of private images, so an open one must be a deliberate choice.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

from cem.devices import DEVICE_CHOICES
from cem.errors import ConfigError

TOKEN_ENV = "CEM_AUDIT_TOKEN"
MIN_TOKEN_CHARS = 16
# Length alone let "aaaaaaaaaaaaaaaa" or 16 spaces through. The plug-in estimate below (length x
# Shannon entropy of the characters) is crude but catches repeats and tiny alphabets; a 32-hex-digit
# token from `openssl rand -hex 16` scores about 115 bits.
MIN_TOKEN_DISTINCT_CHARS = 8
MIN_TOKEN_ENTROPY_BITS = 48.0
# The placeholder shipped in audit.env.example; running with it is as good as no token.
PLACEHOLDER_TOKENS = frozenset({"replace-me-with-a-long-random-token", "changeme", "change-me"})
RecoveryPolicy = Literal["interrupt", "requeue"]


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
                raise ConfigError(f"expected a random token in ${TOKEN_ENV} (e.g. `openssl rand -hex 32`), got {weakness}")
        if not self.bundles_dir.is_dir():
            raise ConfigError(f"expected --bundles to be a directory, got {self.bundles_dir}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"expected a port in [0, 65535], got {self.port}")
        if self.max_jobs < 1:
            raise ConfigError(f"expected max_jobs >= 1, got {self.max_jobs}")
        if self.on_restart not in ("interrupt", "requeue"):
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
