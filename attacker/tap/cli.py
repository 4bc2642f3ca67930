"""``cem-tap``: sit between the edge and the cloud, forward everything, record the features.

    cem-tap --listen 127.0.0.1:50052 --upstream 127.0.0.1:50051 --captures runs/captures

Once bound it prints ``LISTENING HOST:PORT`` on stdout (with port 0 the port is
the one the OS picked). SIGTERM or Ctrl-C stops it gracefully: in-flight calls
get ``--grace`` seconds, then every queued capture is written before exit.
With ``--json`` the last stdout line is the recorder's final counters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from attacker.tap.proxy import TapServer
from attacker.tap.recorder import CaptureRecorder, RecorderConfig, RecorderStats
from attacker.tap.store import CaptureWriter
from cem.wire import DEFAULT_MAX_MESSAGE_BYTES, format_listening_line

logger = logging.getLogger("attacker.tap")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cem-tap", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", required=True, help="HOST:PORT to accept the edge on (port 0: any free port)")
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the real cloud service")
    parser.add_argument("--captures", required=True, help="capture directory (created if missing)")
    parser.add_argument("--max-queue", type=int, default=RecorderConfig.max_queue,
                        help="captures waiting for the disk before new ones are dropped")
    parser.add_argument("--batch-records", type=int, default=RecorderConfig.batch_records,
                        help="captures per shard file at most")
    parser.add_argument("--flush-interval", type=float, default=RecorderConfig.flush_interval_s,
                        help="seconds before a partial shard is written")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds in-flight calls get on shutdown")
    parser.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                        help="largest message forwarded or recorded; set it to the cloud's --max-message-bytes")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--json", action="store_true", help="print the final capture counters as JSON on the last stdout line")
    return parser


def listen_host(listen: str) -> str:
    host, sep, _ = listen.rpartition(":")
    if not sep or not host:
        raise SystemExit(f"cem-tap: expected --listen HOST:PORT, got {listen!r}")
    return host


async def serve(args: argparse.Namespace) -> RecorderStats:
    host = listen_host(args.listen)
    config = RecorderConfig(
        max_queue=args.max_queue, batch_records=args.batch_records, flush_interval_s=args.flush_interval
    )
    recorder = CaptureRecorder(CaptureWriter(args.captures), config)
    tap = TapServer(args.listen, args.upstream, recorder, max_message_bytes=args.max_message_bytes)
    try:
        port = await tap.start()
    except OSError:
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
    return await asyncio.to_thread(recorder.close)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        stats = asyncio.run(serve(args))
    except OSError as exc:
        logger.error("%s", exc)
        return 1
    if args.json:
        print(json.dumps(stats.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
