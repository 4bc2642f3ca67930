"""``cem-demo-report``: the compose stack's last step, the demo's table from services already running.

The compose stack runs every role in its own container: the trainer writes the
two bundles, the edges send the test split through the taps and leave their
``cem-edge eval --json`` results in a shared folder, the auditor serves the REST
API. This command (in the torch-free ``client`` image) then does what ``cem-demo``
does last: it audits both models with each attack on the captured traffic and on
the held-out split, prints the comparison table with the bound and its kind,
and writes the table, ``summary.json``, the HTML reports and the reconstruction
grids to ``--out``. It uses only the REST API, so it works against any auditor.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from attacker.client import ATTACKS, TOKEN_ENV, URL_ENV, AuditClient, AuditClientError
from cem.cli import run_cli
from demo.audits import DemoError, audit_models
from demo.profiles import MODELS, PROFILES, get_profile
from demo.table import render_table

READY_POLL_S = 1.0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cem-demo-report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=os.environ.get(URL_ENV, "http://127.0.0.1:8000"),
                        help=f"the audit service (${URL_ENV})")
    parser.add_argument("--models", default=",".join(name for name, _ in MODELS),
                        help="comma-separated bundle names to compare, baseline first (default %(default)s)")
    parser.add_argument("--edge-results", type=Path,
                        help="folder of each model's `cem-edge eval --json` output, as NAME.json (wire accuracy)")
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="folder for the table, summary, reports")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="fast",
                        help="attack lengths and network, as cem-demo's profiles")
    parser.add_argument("--attack", action="append", choices=ATTACKS,
                        help="repeatable; default: the profile's attacks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ready-timeout-s", type=float, default=300.0,
                        help="how long to wait for the audit service to answer")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line at the end")
    return parser


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def check_writable(folder: Path) -> None:
    """Fail before any audit runs when the results could not be saved (a host folder the container's user does
    not own is the usual cause)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-check"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise DemoError(f"cannot write the results to {folder} as uid {os.getuid()}: {exc.strerror}; make the folder "
                        "writable for that user (`make compose-demo` creates ./demo-out and runs the report as you)"
                        ) from exc


def wait_until_up(client: AuditClient, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.health()
            return
        except AuditClientError as exc:
            if time.monotonic() >= deadline:
                raise DemoError(f"the audit service at {client.base_url} did not answer within {timeout_s:.0f} s: "
                                f"{exc}") from exc
        time.sleep(READY_POLL_S)


def read_edge_result(folder: Path | None, name: str) -> dict[str, Any]:
    """The JSON line ``cem-edge eval --json`` printed last, or {} when there is none (the table shows —)."""
    if folder is None:
        return {}
    path = folder / f"{name}.json"
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        result = json.loads(lines[-1]) if lines else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise DemoError(f"cannot read the edge's result for {name} from {path}: {exc}") from exc
    if not isinstance(result, dict):
        raise DemoError(f"expected a JSON object as the last line of {path}")
    return result


def collect_models(client: AuditClient, names: list[str], edge_results: Path | None) -> list[dict[str, Any]]:
    """The table's rows before the audits: each bundle as the auditor sees it, with what its edge measured."""
    bundles = {bundle.name: bundle for bundle in client.list_bundles()}
    missing = [name for name in names if name not in bundles]
    if missing:
        raise DemoError(f"the audit service has no bundle named {', '.join(missing)}; it has {sorted(bundles)}")
    captured = {model.model_id: model for model in client.captures().models}
    models: list[dict[str, Any]] = []
    for name in names:
        bundle, wire = bundles[name], read_edge_result(edge_results, name)
        taps = captured.get(bundle.model_id)
        say(f"{name}: model {bundle.model_id}, test accuracy {bundle.accuracy}; the tap captured "
            f"{taps.samples if taps else 0} samples in {taps.requests if taps else 0} requests"
            + (f"; the edge had {wire['images']} images answered" if "images" in wire else ""))
        models.append({"name": name, "bundle": name, "model_id": bundle.model_id, "accuracy": bundle.accuracy,
                       "cem_lambda": (bundle.cem or {}).get("lam"), "wire_accuracy": wire.get("accuracy"),
                       "wire_images": wire.get("images"), "captured_samples": taps.samples if taps else 0,
                       "audits": {}})
    return models


def run(args: argparse.Namespace) -> int:
    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise DemoError(f"set {TOKEN_ENV} to the audit service's token")
    profile = get_profile(args.profile)
    attacks = tuple(args.attack) if args.attack else profile.attacks
    check_writable(args.out)
    started = time.monotonic()
    with AuditClient(args.url, token, timeout_s=60) as client:
        wait_until_up(client, args.ready_timeout_s)
        models = collect_models(client, [name for name in args.models.split(",") if name], args.edge_results)
        reports = audit_models(client, models, attacks, profile, args.seed, args.out / "reports", say)
    table = render_table(models, list(attacks))
    summary = {"models": models, "attacks": list(attacks), "reports": reports, "audit_url": args.url,
               "duration_s": round(time.monotonic() - started, 1)}
    (args.out / "table.txt").write_text(table + "\n")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table)
    print()
    for label, path in sorted(reports.items()):
        print(f"report {label}: {path}")
    print(f"audits finished in {summary['duration_s']:.0f} s; table, summary and reports in {args.out}", flush=True)
    if args.json:
        print(json.dumps(summary), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    return run_cli(parser.prog, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
