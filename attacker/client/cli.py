"""``cem-audit-client``: talk to a running ``cem-audit`` from the shell.

    export CEM_AUDIT_URL=http://127.0.0.1:8000 CEM_AUDIT_TOKEN=...
    cem-audit-client bundles
    cem-audit-client submit --bundle sigma-cem --attack decoder --epochs 5 --wait --png out.png --report out.html
    cem-audit-client submit --bundle sigma-cem --network-channels 32 --network-blocks 4   # a smaller attacker
    cem-audit-client submit --bundle sigma-cem --epochs 100 --min-steps 5600    # epochs raised to 5,600 steps
    cem-audit-client submit --bundle sigma-cem --attack optimize --optimize-steps 300     # per-image optimisation
    cem-audit-client status <id> | wait <id> | cancel <id> | list | captures
    cem-audit-client png <id> -o grid.png ; cem-audit-client report <id> -o report.html

``wait`` (and ``submit --wait``) shows a progress bar on stderr. With ``--json``
the last stdout line is one JSON object. Exit codes: 0 done (or succeeded),
1 the audit failed, was cancelled or interrupted, 2 the request failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from tqdm import tqdm

from attacker.attack_names import ATTACKS, AttackName
from attacker.client.client import TOKEN_ENV, URL_ENV, AuditClient, AuditClientError
from attacker.service.api.schemas import (
    MIN_STEPS_DEFAULT,
    MIN_STEPS_HELP,
    OPTIMIZE_STEPS_DEFAULT,
    AuditList,
    AuditView,
    BundleList,
)
from attacker.service.jobs import AuditStatus


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cem-audit-client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--url", default=os.environ.get(URL_ENV, "http://127.0.0.1:8000"), help=f"service URL (${URL_ENV})"
    )
    parser.add_argument("--token", default=None, help=f"bearer token (default ${TOKEN_ENV})")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on the last stdout line")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("health", help="liveness (no token needed)")
    sub.add_parser("ready", help="readiness: workers and queue")
    sub.add_parser("bundles", help="bundles that can be audited")
    sub.add_parser("captures", help="what the tap captured, per model")
    listing = sub.add_parser("list", help="audits, newest first")
    listing.add_argument("--status", choices=[status.value for status in AuditStatus])
    listing.add_argument("--limit", type=int, default=20)
    submit = sub.add_parser("submit", help="queue an audit")
    submit.add_argument("--bundle", required=True, help="bundle folder name or model id")
    submit.add_argument("--attack", choices=ATTACKS, default=AttackName.DECODER.value,
                        help="decoder: a trained decoding network; gan: that network fine-tuned adversarially; "
                             "optimize: a per-image search through the encoder; decoder+optimize: the decoder's "
                             "reconstruction refined by that search")
    submit.add_argument("--epochs", type=int,
                        help="training epochs (default: the attack's own); decoder+optimize: its decoder's; "
                             "not for optimize")
    paper = "the paper's decoding network; not for optimize, which has none"
    submit.add_argument("--network-channels", type=int, metavar="C",
                        help=f"width of the attacker's decoding network (default: {paper})")
    submit.add_argument("--network-blocks", type=int, metavar="B",
                        help=f"residual blocks of the attacker's decoding network (default: {paper})")
    submit.add_argument("--min-steps", type=int, metavar="N",
                        help=f"{MIN_STEPS_HELP} (default: {MIN_STEPS_DEFAULT}, the epochs as given; not for optimize)")
    submit.add_argument("--optimize-steps", type=int, metavar="N",
                        help=f"optimisation steps per image of optimize and decoder+optimize (default: "
                             f"{OPTIMIZE_STEPS_DEFAULT}; not for decoder or gan)")
    submit.add_argument("--dataset")
    submit.add_argument("--seed", type=int, default=0)
    submit.add_argument("--no-captures", action="store_true", help="ignore captured traffic")
    for name, helptext in (("status", "one audit's status and metrics"), ("cancel", "cancel an audit")):
        sub.add_parser(name, help=helptext).add_argument("id")
    wait = sub.add_parser("wait", help="follow an audit until it finishes")
    wait.add_argument("id")
    for command in (submit, wait):
        command.add_argument("--wait-timeout", type=float, help="give up waiting after this many seconds")
        command.add_argument("--png", type=Path, help="save the reconstruction grid here once succeeded")
        command.add_argument("--report", type=Path, help="save the HTML report here once succeeded")
    submit.add_argument("--wait", action="store_true", help="follow the audit until it finishes")
    for name, helptext in (("png", "download the reconstruction grid"), ("report", "download the HTML report")):
        command = sub.add_parser(name, help=helptext)
        command.add_argument("id")
        command.add_argument("-o", "--output", type=Path, required=True)
    return parser


def follow(client: AuditClient, audit_id: str, timeout_s: float | None) -> AuditView:
    """Wait for a final status with a progress bar on stderr."""
    with tqdm(total=100, desc=f"audit {audit_id[:8]}", unit="%", file=sys.stderr, leave=True) as bar:

        shown: list[tuple[int, str]] = []

        def update(audit: AuditView) -> None:
            state = (round(100 * audit.progress), f"{audit.status}: {audit.message or ''}"[:60])
            if shown and shown[-1] == state:
                return
            shown.append(state)
            bar.n = state[0]
            bar.set_postfix_str(state[1], refresh=False)
            bar.refresh()

        return client.wait(audit_id, timeout_s=timeout_s, on_update=update)


def save_results(client: AuditClient, audit: AuditView, png: Path | None, report: Path | None) -> None:
    if audit.status is not AuditStatus.SUCCEEDED:
        return
    if png is not None:
        png.write_bytes(client.fetch_png(audit.id))
    if report is not None:
        report.write_text(client.fetch_report(audit.id), encoding="utf-8")


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def describe_worst_case(audit: dict[str, Any]) -> list[str]:
    """The strongest attack per column (an audit's ``worst_case``), the first thing a reader should see."""
    worst = audit.get("worst_case")
    if worst is None:
        return []
    entries = [(column, entry) for column, entry in worst.items() if entry]
    if not entries:
        return ["  strongest attack: none reached a finite MSE"]
    lines = [f"  strongest attack ({column}): {entry['attack']} MSE {_fmt(entry['mse'], 4)} "
             f"({entry['attacks']} attack{'s' * (entry['attacks'] != 1)} compared)" for column, entry in entries]
    compared = [audit["attack"]]
    if audit["attack"] == AttackName.HYBRID.value and any(entry["attacks"] > 1 for _, entry in entries):
        compared.append(AttackName.DECODER.value)  # decoder+optimize's decoder alone
    others = ", ".join(a for a in ATTACKS if a not in compared)
    what = "only one attack was run" if len(compared) == 1 else f"compared {audit['attack']} with its decoder alone"
    lines.append(f"  {what}: the worst case over attacks needs audits with the others too ({others})")
    return lines


def describe(audit: dict[str, Any]) -> str:
    """An audit's JSON (an ``AuditView`` as ``run`` returns it) for a human: status, the strongest attack, metrics
    (with attack accuracy), how the attack ran, bound."""
    lines = [
        (
            f"audit {audit['id']}: {audit['status']} ({100 * audit['progress']:.0f}%) "
            f"bundle {audit['bundle']} attack {audit['attack']}"
            + "".join(f" network {key} {audit[f'network_{key}']}" for key in ("channels", "blocks")
                      if audit.get(f"network_{key}") is not None)
            + (f" min steps {audit['min_steps']}" if audit.get("min_steps") is not None else "")
            + (f" optimize steps {audit['optimize_steps']}" if audit.get("optimize_steps") is not None else "")
        )
    ]
    lines.extend(describe_worst_case(audit))
    for split, values in (audit.get("metrics") or {}).items():
        if values:
            mse, psnr, ssim = (_fmt(values.get(k), digits) for k, digits in (("mse", 4), ("psnr", 2), ("ssim", 3)))
            identity = ""
            if values.get("attack_accuracy") is not None:
                identity = (f"  attack accuracy {_share(values['attack_accuracy'])} (classifier on originals "
                            f"{_share(values.get('classifier_accuracy'))}, "
                            f"chance {_share(values.get('chance_accuracy'))})")
            lines.append(f"  {split:>8}: MSE {mse}  PSNR {psnr} dB  SSIM {ssim}  (n={values['n']}){identity}")
    for column, run in (audit.get("training") or {}).items():
        if run:
            flag = "  STILL IMPROVING: stopped early, the MSE overstates privacy" if run["still_improving"] else ""
            gain = run.get("doubling_gain")
            check = "" if gain is None else f", validation MSE {-100 * gain:+.1f}% against half the epochs"
            search = run.get("optimize")
            if search:
                tv = search.get("tv_weight")
                what = (f"attack optimised {search.get('steps_per_image', run['epochs'])} steps per image, "
                        f"τ {'n/a' if tv is None else f'{tv:g}'}")
            else:
                what = f"attack trained {run['epochs']} epochs, best epoch {run['best_epoch']}"
            alone = run.get("decoder_alone")
            if alone:
                metrics = (audit.get("metrics") or {}).get(column) or {}
                what += f", refinement: decoder alone MSE {_fmt(alone.get('mse'), 4)} → {_fmt(metrics.get('mse'), 4)}"
                if alone.get("attack_accuracy") is not None or metrics.get("attack_accuracy") is not None:
                    what += (f", attack accuracy {_share(alone.get('attack_accuracy'))} → "
                             f"{_share(metrics.get('attack_accuracy'))}")
            times = "".join(f", {label} {run[key]:.1f} s" for key, label in (("attack_s", "attack"),
                                                                            ("eval_s", "evaluation"))
                            if run.get(key) is not None)
            lines.append(f"  {column:>8}: {what}{check}{times}{flag}")
    bound = audit.get("bound")
    if bound:
        values = [bound] + ([bound["relative"]] if bound.get("relative") else [])
        lines.append("  bound: " + ", ".join(f"ξ {v['kind']} {v['xi']:.3g}" for v in values)
                     + "  (no value here is a proven floor)" * all(v["kind"] != "floor" for v in values))
        lines.extend(f"  warning: {w}" for w in bound.get("warnings") or [])
    if audit.get("error"):
        lines.append(f"  error: {audit['error']}")
    return "\n".join(lines)


def as_json(answer: BaseModel) -> dict[str, Any]:
    """A response model as the service sent it: the same keys, values and order."""
    return answer.model_dump(mode="json")


def run(args: argparse.Namespace, client: AuditClient) -> tuple[Any, int]:
    """Execute one command; returns (JSON-able result, exit code)."""
    command = args.command
    if command in ("health", "ready", "captures"):
        return as_json(getattr(client, command)()), 0
    if command == "bundles":
        return as_json(BundleList(bundles=client.list_bundles())), 0
    if command == "list":
        status = None if args.status is None else AuditStatus(args.status)
        return as_json(AuditList(audits=client.list_audits(status, args.limit))), 0
    if command == "status":
        return as_json(client.get(args.id)), 0
    if command == "cancel":
        return as_json(client.cancel(args.id)), 0
    if command in ("png", "report"):
        if command == "png":
            args.output.write_bytes(client.fetch_png(args.id))
        else:
            args.output.write_text(client.fetch_report(args.id), encoding="utf-8")
        return {"id": args.id, "saved": str(args.output)}, 0
    if command == "submit":
        accepted = client.submit(
            args.bundle,
            attack=AttackName(args.attack),
            epochs=args.epochs,
            dataset=args.dataset,
            use_captures=not args.no_captures,
            seed=args.seed,
            network_channels=args.network_channels,
            network_blocks=args.network_blocks,
            optimize_steps=args.optimize_steps,
            min_steps=args.min_steps,
        )
        if not args.wait:
            return as_json(accepted), 0
        audit_id = accepted.id
    else:
        audit_id = args.id
    audit = follow(client, audit_id, args.wait_timeout)
    save_results(client, audit, args.png, args.report)
    return as_json(audit), 0 if audit.status is AuditStatus.SUCCEEDED else 1


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    token = args.token or os.environ.get(TOKEN_ENV)
    try:
        with AuditClient(args.url, token, timeout_s=args.timeout) as client:
            result, code = run(args, client)
    except AuditClientError as exc:
        print(f"cem-audit-client: error: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": str(exc), "status_code": exc.status_code}))
        return 2
    except OSError as exc:
        print(f"cem-audit-client: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    elif isinstance(result, dict) and "progress" in result:
        print(describe(result))
    else:
        print(json.dumps(result, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
