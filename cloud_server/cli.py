"""``cem-cloud``: serve a bundle's decoder over gRPC.

Once the model is loaded, warmed up and SERVING, stdout gets exactly one line
``LISTENING <host>:<port>`` (flushed), with the real port when ``--port 0`` was
asked for; scripts and tests read the port from it. With ``--metrics-listen``
the line ``METRICS <host>:<port>`` of the Prometheus endpoint comes just before
it (the same convention as ``cem-tap``). Logs go to stderr.
SIGTERM or SIGINT: health NOT_SERVING at once, keep serving until no call has
arrived for ``--drain-s``, close the port, let in-flight calls finish
(``--grace-s`` in all), exit 0.
A missing bundle or one that fails verification exits 2, a failed warm-up 1, with
the reason on stderr (``cem.cli`` holds the convention).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

from cem.cli import run_cli
from cem.devices import DEVICE_CHOICES
from cem.logs import LOG_LEVELS, configure_logging
from cem.threads import THREADS_HELP, apply_threads
from cem.wire import format_listening_line
from cloud_server.errors import ServiceUnavailableError
from cloud_server.server import create_server
from cloud_server.settings import ServerSettings

logger = logging.getLogger("cem-cloud")

STARTUP_TIMEOUT_S = 600.0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cem-cloud", description="Serve the cloud half (decoder) of a CEM split model over gRPC."
    )
    parser.add_argument(
        "--bundle", type=Path, required=True, help="bundle folder (manifest.json + decoder.safetensors)"
    )
    parser.add_argument(
        "--host", default=ServerSettings.host, help="address to bind (default %(default)s; 0.0.0.0 for all)"
    )
    parser.add_argument("--port", type=int, default=ServerSettings.port,
                        help="port; 0 picks a free one (see the LISTENING line)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default=ServerSettings.device,
                        help="auto uses CUDA when present")
    parser.add_argument("--max-batch", type=int, default=ServerSettings.max_batch,
                        help="max samples per request and per micro-batch")
    parser.add_argument("--max-delay-ms", type=float, default=ServerSettings.max_delay_ms,
                        help="max wait for more requests to join a micro-batch")
    parser.add_argument("--max-queue", type=int, default=ServerSettings.max_queue,
                        help="queued samples beyond which requests get UNAVAILABLE")
    parser.add_argument("--max-message-bytes", type=int, default=ServerSettings.max_message_bytes,
                        help="gRPC send/receive limit")
    parser.add_argument("--workers", type=int, default=ServerSettings.workers, help="gRPC handler threads")
    parser.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    parser.add_argument("--grace-s", type=float, default=ServerSettings.grace_s,
                        help="time in-flight calls get to finish on SIGTERM")
    parser.add_argument("--drain-s", type=float, default=ServerSettings.drain_s,
                        help="on SIGTERM, serve until no call arrived for this long")
    parser.add_argument("--tls-cert", type=Path, help="server certificate (PEM); enables TLS")
    parser.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    parser.add_argument(
        "--tls-client-ca", type=Path, help="CA (PEM) that client certificates must chain to; enables mTLS"
    )
    parser.add_argument("--metrics-listen", default=None,
                        help="HOST:PORT for a Prometheus /metrics endpoint (port 0: any free port); off by default")
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS)
    return parser


def build_settings(args: argparse.Namespace) -> ServerSettings:
    return ServerSettings(
        bundle_dir=args.bundle,
        host=args.host,
        port=args.port,
        device=args.device,
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
        max_queue=args.max_queue,
        max_message_bytes=args.max_message_bytes,
        workers=args.workers,
        grace_s=args.grace_s,
        drain_s=args.drain_s,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        metrics_listen=args.metrics_listen,
    )


def run(args: argparse.Namespace) -> int:
    """Load, bind, serve until SIGTERM or SIGINT; errors are left to ``run_cli``."""
    threads = apply_threads(args.threads)
    logger.info("torch intra-op threads: %d", threads)
    server, port = create_server(build_settings(args))

    def request_stop(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s", signal.Signals(signum).name)
        server.stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server.start()
    if not server.wait_until_serving(STARTUP_TIMEOUT_S):
        if server.is_stopping:  # a signal arrived during start-up
            server.wait_for_termination()
            return 0
        server.stop(0).wait()
        raise ServiceUnavailableError("the warm-up inference failed or timed out; see the log")
    if server.metrics_port is not None:
        metrics_host = args.metrics_listen.rpartition(":")[0]
        print(f"METRICS {metrics_host}:{server.metrics_port}", flush=True)
    print(format_listening_line(args.host, port), flush=True)
    while not server.wait_for_termination(0.5):  # short waits keep the main thread responsive to signals
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    return run_cli(parser.prog, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
