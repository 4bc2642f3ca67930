"""``cem-edge``: classify images or evaluate a data set through the cloud decoder.

    cem-edge classify --server TARGET --bundle DIR IMAGE... [--top-k 3] [--json]
    cem-edge eval --server TARGET --bundle DIR --dataset NAME [--split test] [--batch-size 32]
                  [--wire-dtype float32|float16|int8] [--stream] [--sample-ids] [--limit N] [--json]

Only the encoder is loaded; images never leave this process, only noisy
features do. TARGET is any gRPC target (``cem.targets``): ``HOST:PORT``, a
``dns:`` name, or ``ipv4:IP:PORT,IP:PORT`` for several cloud replicas, which
get the requests round robin. With ``--json`` the last stdout line is one JSON object.
Exit status 2 for a missing or corrupt bundle, an unknown data set or a bad flag value,
1 for an unreadable image or a remote error; the reason goes to stderr (``cem.cli``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from cem.cli import run_cli
from cem.codec import WIRE_DTYPES
from cem.data import load_dataset
from cem.devices import DEVICE_CHOICES
from cem.errors import ConfigError
from cem.logs import LOG_LEVELS
from cem.targets import TARGET_HELP
from cem.threads import THREADS_HELP, apply_threads
from edge_client.client import EdgeClient
from edge_client.evaluate import evaluate_over_wire
from edge_client.settings import ClientSettings, RetryPolicy, TlsOptions
from edge_client.transport import check_target

# The library's ``ClientSettings.seed`` is None (seeded by the OS); the command seeds by default so
# that two runs of ``cem-edge eval`` send the same noisy features and report the same accuracy.
CLI_SEED = 0


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, help=f"cem-cloud's {TARGET_HELP}")
    parser.add_argument(
        "--bundle", type=Path, required=True, help="bundle folder (manifest.json + encoder.safetensors)"
    )
    parser.add_argument("--wire-dtype", choices=WIRE_DTYPES, default=ClientSettings.wire_dtype,
                        help="feature encoding on the wire")
    parser.add_argument("--seed", type=int, default=CLI_SEED,
                        help="seed of the edge's noise draws (default %(default)s, so runs repeat)")
    parser.add_argument(
        "--device", choices=DEVICE_CHOICES, default=ClientSettings.device, help="where the encoder runs"
    )
    parser.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    parser.add_argument("--timeout-s", type=float, default=ClientSettings.timeout_s,
                        help="deadline of every attempt (at most --retry-budget)")
    parser.add_argument("--retries", type=int, default=RetryPolicy.max_attempts - 1,
                        help="retries on UNAVAILABLE / DEADLINE_EXCEEDED")
    parser.add_argument("--retry-budget", type=float, default=RetryPolicy.budget_s,
                        help="seconds a call may take, all attempts and waits (covers a cloud restart; "
                             "raise --retries with it)")
    parser.add_argument("--max-message-bytes", type=int, default=ClientSettings.max_message_bytes,
                        help="gRPC send/receive limit")
    parser.add_argument("--tls-root-cert", type=Path, help="CA certificate (PEM) to verify the server; enables TLS")
    parser.add_argument("--tls-client-cert", type=Path, help="client certificate (PEM) for mTLS")
    parser.add_argument("--tls-client-key", type=Path, help="client private key (PEM) for mTLS")
    parser.add_argument("--tls-server-name", help="name to expect in the server certificate, if not the host dialled")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    parser.add_argument("--log-level", default="WARNING", choices=LOG_LEVELS)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cem-edge", description="Edge half of CEM split inference: encode locally, classify in the cloud."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    classify = commands.add_parser("classify", help="classify image files")
    _add_common(classify)
    classify.add_argument("images", nargs="+", type=Path, help="image files (any format PIL reads)")
    classify.add_argument("--top-k", type=int, default=3, help="labels to show per image")
    evaluate = commands.add_parser("eval", help="accuracy, throughput, latency and wire bytes on a data set")
    _add_common(evaluate)
    evaluate.add_argument("--dataset", required=True, help="data set name (cem.data), e.g. digits")
    evaluate.add_argument("--split", default="test", choices=["train", "test"])
    evaluate.add_argument("--data-dir", type=Path, help="where the data set's files are (not needed for digits)")
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--limit", type=int, help="evaluate only the first N images")
    evaluate.add_argument("--stream", action="store_true", help="use one bidirectional stream instead of unary calls")
    evaluate.add_argument(
        "--sample-ids", action="store_true", help="send '<dataset>/<split>/<index>' ids (demo and audit runs)"
    )
    return parser


def build_settings(args: argparse.Namespace) -> ClientSettings:
    tls = None
    if args.tls_root_cert or args.tls_client_cert or args.tls_client_key:
        tls = TlsOptions(args.tls_root_cert, args.tls_client_cert, args.tls_client_key, args.tls_server_name)
    return ClientSettings(
        wire_dtype=args.wire_dtype,
        timeout_s=args.timeout_s,
        retry=RetryPolicy(max_attempts=args.retries + 1, budget_s=args.retry_budget),
        max_message_bytes=args.max_message_bytes,
        tls=tls,
        device=args.device,
        seed=args.seed,
    )


def run_classify(client: EdgeClient, args: argparse.Namespace) -> dict:
    prediction = client.classify(list(args.images))
    results = []
    for path, top in zip(args.images, prediction.top_k(args.top_k, client.manifest.class_names), strict=True):
        print(f"{path}: " + ", ".join(f"{label} ({p:.3f})" for label, p in top))
        results.append({"image": str(path), "top": [{"label": label, "probability": p} for label, p in top]})
    return {"model_id": client.manifest.model_id, "results": results}


def run_eval(client: EdgeClient, args: argparse.Namespace) -> dict:
    if args.batch_size < 1:
        raise ConfigError(f"expected --batch-size >= 1, got {args.batch_size}")
    dataset, _ = load_dataset(args.dataset, split=args.split, data_dir=args.data_dir)
    report = evaluate_over_wire(
        client, dataset, dataset_name=args.dataset, split=args.split, batch_size=args.batch_size,
        limit=args.limit, stream=args.stream, send_sample_ids=args.sample_ids,
    )
    print(
        f"accuracy {report.accuracy:.4f} ({report.correct}/{report.images})  "
        f"throughput {report.throughput_ips:.1f} img/s  latency p50 {report.latency_ms_p50:.2f} ms "
        f"p99 {report.latency_ms_p99:.2f} ms  {report.bytes_per_image:.1f} bytes/image ({report.wire_dtype})"
    )
    return report.to_dict()


def run(args: argparse.Namespace) -> int:
    settings = build_settings(args)
    check_target(args.server, settings, "--server")  # named after the flag, before any thread or model is set up
    apply_threads(args.threads)
    with EdgeClient(args.bundle, args.server, settings) as client:
        result = run_classify(client, args) if args.command == "classify" else run_eval(client, args)
    if args.json:
        print(json.dumps(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run_cli(parser.prog, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
