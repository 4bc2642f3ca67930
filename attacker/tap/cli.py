"""``cem-tap``: sit between the edge and the cloud, forward everything, record the features.

    cem-tap --listen 127.0.0.1:50052 --upstream 127.0.0.1:50051 --captures runs/captures
    cem-tap --listen 127.0.0.1:50052 --upstream ipv4:127.0.0.1:50051,127.0.0.1:50053 --captures runs/captures
    cem-tap --mode relay --listen 127.0.0.1:50052 --upstream 127.0.0.1:50051 --captures runs/captures

``--mode proxy`` (the default) terminates gRPC: ``--upstream`` is any gRPC
target (``cem.targets``), and calls are spread round robin over the healthy
replicas it names, as the edge spreads its own. ``--mode relay`` forwards the
TCP bytes unchanged and reads the calls off a copy of them (under a third of
the proxy's added latency); ``--upstream`` is then one ``HOST:PORT``, there is
no ``--on-store-failure refuse`` and no in-band ``cem.tap`` health service (use
``--metrics-listen``).

Once bound it prints ``LISTENING HOST:PORT`` on stdout (with port 0 the port is
the one the OS picked); with ``--metrics-listen`` it first prints
``METRICS HOST:PORT`` for the Prometheus endpoint. If the capture directory
cannot be written, ``--on-store-failure forward`` (the default) keeps traffic
flowing unrecorded (health service ``cem.tap`` NOT_SERVING, metric
``cem_tap_capturing`` 0) and ``refuse`` fails closed. SIGTERM or Ctrl-C stops it gracefully: in-flight calls
(in relay mode, open connections) get ``--grace`` seconds, then every queued capture is written before exit.
With ``--json`` the last stdout line is the recorder's final counters (in relay mode with the relay's,
prefixed ``relay_``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable

from attacker.tap.proxy import TapServer
from attacker.tap.recorder import STORE_FAILURE_MODES, CaptureRecorder, RecorderConfig
from attacker.tap.wire_relay import WireRelay, parse_relay_upstream
from cem.cli import run_cli
from cem.errors import ConfigError
from cem.logs import LOG_LEVELS, configure_logging
from cem.targets import TARGET_HELP, parse_target
from cem.wire import DEFAULT_MAX_MESSAGE_BYTES, format_listening_line

logger = logging.getLogger("attacker.tap")

TAP_MODES = ("proxy", "relay")  # terminate gRPC (attacker.tap.proxy) or relay its bytes (attacker.tap.wire_relay)
RELAY_PREFIX = "relay_"  # the relay's counters in --json and on /metrics


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cem-tap", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--listen", required=True, help="HOST:PORT to accept the edge on (port 0: any free port)")
    parser.add_argument("--upstream", required=True,
                        help=f"the real cloud service's {TARGET_HELP}; in relay mode one HOST:PORT")
    parser.add_argument("--mode", choices=TAP_MODES, default=TAP_MODES[0],
                        help="proxy: terminate gRPC, any upstream target, per-call refusal and an in-band health "
                             "service; relay: forward the TCP bytes and read a copy (lower latency)")
    parser.add_argument("--captures", required=True, help="capture directory (created if missing)")
    parser.add_argument("--max-queue", type=int, default=RecorderConfig.max_queue,
                        help="captures waiting for the disk before new ones are dropped")
    parser.add_argument("--batch-records", type=int, default=RecorderConfig.batch_records,
                        help="captures per shard file at most")
    parser.add_argument("--flush-interval", type=float, default=RecorderConfig.flush_interval_s,
                        help="seconds before a partial shard is written")
    parser.add_argument("--on-store-failure", choices=STORE_FAILURE_MODES, default=RecorderConfig.on_store_failure,
                        help="when captures cannot be written: forward traffic unrecorded (fail open) or "
                             "refuse to start and answer captured calls UNAVAILABLE (fail closed)")
    parser.add_argument("--metrics-listen", default=None,
                        help="HOST:PORT for a Prometheus /metrics endpoint (port 0: any free port); off by default")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds in-flight calls get on shutdown")
    parser.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                        help="largest message forwarded or recorded; set it to the cloud's --max-message-bytes")
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS)
    parser.add_argument(
        "--json", action="store_true", help="print the final capture counters as JSON on the last stdout line"
    )
    return parser


def listen_host(listen: str) -> str:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"expected HOST:PORT, got {listen!r}")
    return host


def check_mode(args: argparse.Namespace) -> None:
    """The flags relay mode cannot honour are bad flags (exit 2), refused before anything starts."""
    if args.mode == "proxy":
        parse_target(args.upstream, "--upstream")  # a malformed target is a bad flag (exit 2), not a dead upstream
        return
    if args.on_store_failure == "refuse":
        raise ConfigError("--on-store-failure refuse needs --mode proxy: refusing a call needs a tap that "
                          "terminates gRPC, and relay mode only forwards bytes")
    parse_relay_upstream(args.upstream)


async def serve(args: argparse.Namespace) -> dict[str, int]:
    """Run until SIGTERM/SIGINT; returns the final counters (the recorder's, and in relay mode the relay's)."""
    host = listen_host(args.listen)
    check_mode(args)
    metrics_host = None if args.metrics_listen is None else listen_host(args.metrics_listen)
    config = RecorderConfig(
        max_queue=args.max_queue, batch_records=args.batch_records, flush_interval_s=args.flush_interval,
        on_store_failure=args.on_store_failure,
    )
    recorder = CaptureRecorder(args.captures, config)
    tap: TapServer | WireRelay
    if args.mode == "relay":
        tap = WireRelay(args.listen, args.upstream, recorder, max_message_bytes=args.max_message_bytes)
    else:
        tap = TapServer(args.listen, args.upstream, recorder, max_message_bytes=args.max_message_bytes)
    metrics_server = None
    if args.metrics_listen is not None:
        from attacker.tap.metrics import serve_metrics  # prometheus_client: ~4 MB only a metrics user pays

        try:
            metrics_port, metrics_server = serve_metrics(recorder, args.metrics_listen, relay_counters(tap))
        except OSError:
            await asyncio.to_thread(recorder.close)
            raise
        print(f"METRICS {metrics_host}:{metrics_port}", flush=True)
    try:
        port = await tap.start()
    except OSError:
        if metrics_server is not None:
            metrics_server.shutdown()
        await asyncio.to_thread(recorder.close)
        raise
    print(format_listening_line(host, port), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("stopping: %.1f s grace for in-flight calls", args.grace)
    await tap.stop(args.grace)
    if metrics_server is not None:
        metrics_server.shutdown()
    stats = (await asyncio.to_thread(recorder.close)).to_dict()
    counters = relay_counters(tap)
    return stats if counters is None else {**stats, **counters()}


def relay_counters(tap: TapServer | WireRelay) -> Callable[[], dict[str, int]] | None:
    """The relay's counters, named as --json and /metrics show them; None in proxy mode."""
    if not isinstance(tap, WireRelay):
        return None
    return lambda: {RELAY_PREFIX + name: value for name, value in tap.stats().items()}


def run(args: argparse.Namespace) -> int:
    stats = asyncio.run(serve(args))
    if args.json:
        print(json.dumps(stats), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Bad flag values exit 2, an unusable port or capture store 1 (``cem.cli``)."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    logging.getLogger("hpack").setLevel(logging.INFO)  # at DEBUG it logs every header block it decodes
    return run_cli(parser.prog, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
