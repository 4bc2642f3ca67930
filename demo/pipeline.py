"""The demo, step by step: train two models, serve them behind a tap, send the
test split from the edge, audit both models over the REST API, print the table.

Every part runs as its own process through its real command-line entry point,
on loopback, with ports picked by the OS: exactly what the compose file runs,
without Docker. The orchestrator is the only code (with the tests) that knows
all the parts.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attacker.client import AuditClient, check_attack_name
from cem.errors import ConfigError
from demo.audits import DemoError, audit_models
from demo.processes import ServiceGroup, entry_point
from demo.profiles import DEMO_DATASETS, MODELS, DemoProfile, get_profile
from demo.table import render_table

logger = logging.getLogger(__name__)

# Audits run one torch thread each; two at once use both cores of a small machine.
AUDIT_WORKERS = 2
# The cloud and the edge run side by side on the demo's one machine, taking turns per batch: one torch thread
# each keeps either's OpenMP team from spinning on the core the other needs (cem.threads), and the digits
# models are small enough that more would not pay.
SERVICE_THREADS = 1
# The models train side by side, one torch thread each: on two cores that beat one after the other with both.
TRAIN_THREADS = 1
PROGRESS_INTERVAL_S = 5.0
EPOCH_COUNT = re.compile(r"(\d+)/(\d+) \[")  # tqdm's "7/20 [00:10<..." in a progress bar update


@dataclass(frozen=True)
class DemoConfig:
    out_dir: Path = Path("demo-out")
    profile: str = "fast"
    dataset: str = "digits"  # one of DEMO_DATASETS
    seed: int = 0
    noise_std: float = 0.1
    attacks: tuple[str, ...] | None = None  # None: the profile's
    keep_running: bool = False

    def __post_init__(self) -> None:
        get_profile(self.profile)
        if self.dataset not in DEMO_DATASETS:
            raise ConfigError(f"expected an embedded data set in {DEMO_DATASETS}, got {self.dataset!r}")
        for attack in self.attacks or ():
            check_attack_name(attack)

    @property
    def attack_names(self) -> tuple[str, ...]:
        return self.attacks or get_profile(self.profile).attacks


@dataclass
class DemoResult:
    models: list[dict[str, Any]]
    attacks: list[str]
    table: str
    reports: dict[str, str] = field(default_factory=dict)
    audit_url: str = ""
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": self.models,
            "attacks": self.attacks,
            "reports": self.reports,
            "audit_url": self.audit_url,
            "duration_s": round(self.duration_s, 1),
        }


def _run_json(argv: list[str], log_path: Path, what: str, progress_path: Path | None = None) -> dict[str, Any]:
    """Run a one-shot CLI with ``--json``; its JSON comes back. Its progress bar shows on our stderr, or goes
    to ``progress_path`` (runs side by side would draw over each other)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(progress_path, "w") if progress_path else contextlib.nullcontext() as progress:
        result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=progress, text=True)
    log_path.write_text(result.stdout)
    if result.returncode != 0:
        where = f"{log_path}" + (f" and {progress_path}" if progress_path else "")
        raise DemoError(f"{what} failed with exit code {result.returncode}; output in {where}")
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise DemoError(f"{what} did not end with a JSON line; output in {log_path}") from exc


def train_models(config: DemoConfig, profile: DemoProfile, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Train every model of MODELS at once, one torch thread each (the demo's machine may have two cores)."""
    logs = config.out_dir / "logs"
    runs = []
    for name, lam in MODELS:
        argv = [entry_point("cem-train"), "--dataset", config.dataset, "--noise-std", str(config.noise_std),
                "--seed", str(config.seed), "--out", str(config.out_dir / "bundles" / name),
                "--threads", str(TRAIN_THREADS), "--json"]
        if lam is not None:
            argv += ["--cem-lambda", str(lam)]
        if profile.train_epochs is not None:
            argv += ["--epochs", str(profile.train_epochs)]
        if profile.train_width is not None:
            argv += ["--width", str(profile.train_width)]
        runs.append((name, lam, argv, logs / f"train-{name}.progress"))
    say("training " + " and ".join(
        f"{name} (σ = {config.noise_std}{'' if lam == 0 else ', CEM at its default λ'})" for name, lam, _, _ in runs
    ) + " side by side ...")
    with concurrent.futures.ThreadPoolExecutor(len(runs)) as pool:
        futures = {name: pool.submit(_run_json, argv, logs / f"train-{name}.json", f"training {name}", progress)
                   for name, _, argv, progress in runs}
        while concurrent.futures.wait(futures.values(), timeout=PROGRESS_INTERVAL_S).not_done:
            say("  " + ", ".join(f"{name} {_epochs_done(progress)}" for name, _, _, progress in runs))
    models = []
    for name, _, _, _ in runs:
        summary = futures[name].result()
        say(f"  {name}: test accuracy {summary['accuracy']:.4f} (noise on), model {summary['model_id']}")
        models.append({"name": name, "bundle": summary["bundle"], "model_id": summary["model_id"],
                       "accuracy": summary["accuracy"], "cem_lambda": summary.get("cem_lambda"),
                       "audits": {}})
    return models


def _epochs_done(progress_path: Path) -> str:
    """"k/n epochs" from the last update of a cem-train progress bar written to ``progress_path``."""
    try:
        text = progress_path.read_text(errors="replace")
    except OSError:
        text = ""
    counts = EPOCH_COUNT.findall(text)
    return f"{counts[-1][0]}/{counts[-1][1]} epochs" if counts else "starting"


def serve_and_send(config: DemoConfig, profile: DemoProfile, group: ServiceGroup, models: list[dict[str, Any]],
                   say: Callable[[str], None]) -> None:
    """Per model: a cloud service, a tap in front of it, and the edge sending the test split through the tap."""
    logs = config.out_dir / "logs"
    captures = config.out_dir / "captures"
    for model in models:
        name = model["name"]
        cloud = group.start(f"cloud[{name}]", [
            entry_point("cem-cloud"), "--bundle", model["bundle"], "--host", "127.0.0.1", "--port", "0",
            "--threads", str(SERVICE_THREADS)],
            logs / f"cloud-{name}.log")
        tap = group.start(f"tap[{name}]", [
            entry_point("cem-tap"), "--listen", "127.0.0.1:0", "--upstream", cloud, "--captures", str(captures)],
            logs / f"tap-{name}.log")
        say(f"{name}: cloud on {cloud}, tap on {tap}; the edge sends the test split through the tap ...")
        argv = [entry_point("cem-edge"), "eval", "--server", tap, "--bundle", model["bundle"],
                "--dataset", config.dataset, "--split", "test", "--sample-ids", "--seed", str(config.seed),
                "--threads", str(SERVICE_THREADS), "--json"]
        if profile.edge_limit is not None:
            argv += ["--limit", str(profile.edge_limit)]
        wire = _run_json(argv, logs / f"edge-{name}.json", f"the edge client for {name}")
        model.update(cloud=cloud, tap=tap, wire_accuracy=wire["accuracy"], wire_images=wire["images"],
                     bytes_per_image=wire["bytes_per_image"], latency_ms_p50=wire["latency_ms_p50"])
        say(f"  {name}: accuracy over the wire {wire['accuracy']:.4f} on {wire['images']} images, "
            f"p50 latency {wire['latency_ms_p50']:.2f} ms, {wire['bytes_per_image']:.0f} bytes/image")


def run_audits(config: DemoConfig, profile: DemoProfile, group: ServiceGroup, models: list[dict[str, Any]],
               say: Callable[[str], None]) -> tuple[str, str, dict[str, str]]:
    token = secrets.token_hex(16)
    address = group.start("audit", [
        entry_point("cem-audit"), "--host", "127.0.0.1", "--port", "0", "--bundles", str(config.out_dir / "bundles"),
        "--captures", str(config.out_dir / "captures"), "--db", str(config.out_dir / "audit.db"),
        "--max-jobs", str(AUDIT_WORKERS)],
        config.out_dir / "logs" / "audit.log", env={"CEM_AUDIT_TOKEN": token})
    url = f"http://{address}"
    say(f"audit service on {url}")
    with AuditClient(url, token, timeout_s=60) as client:
        reports = audit_models(client, models, config.attack_names, profile, config.seed,
                               config.out_dir / "reports", say)
    return url, token, reports


def run_demo(config: DemoConfig, say: Callable[[str], None] | None = None) -> DemoResult:
    """Run every step; services are stopped on return, on error and on Ctrl-C (unless ``keep_running``)."""
    # The default sink narrates to the terminal: run_demo is the body of the `cem-demo` entry point.
    say = say or (lambda message: print(message, file=sys.stderr, flush=True))  # noqa: T201
    profile = get_profile(config.profile)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    models = train_models(config, profile, say)
    with ServiceGroup() as group:
        serve_and_send(config, profile, group, models, say)
        url, token, reports = run_audits(config, profile, group, models, say)
        table = render_table(models, list(config.attack_names))
        result = DemoResult(models=models, attacks=list(config.attack_names), table=table, reports=reports,
                            audit_url=url, duration_s=time.monotonic() - started)
        (config.out_dir / "summary.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        if config.keep_running:
            say(f"services keep running; audit API at {url} with token {token}; Ctrl-C stops everything")
            _wait_for_interrupt()
    return result


def _wait_for_interrupt() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
