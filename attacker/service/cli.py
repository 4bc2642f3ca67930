"""``cem-audit``: the REST audit service under uvicorn.

    CEM_AUDIT_TOKEN=$(openssl rand -hex 32) \\
    cem-audit --host 127.0.0.1 --port 8000 --bundles runs/bundles --captures runs/captures --db runs/audit.db

Refuses to start without ``CEM_AUDIT_TOKEN`` unless given ``--insecure-no-auth``.
The socket is bound before uvicorn starts, then ``LISTENING HOST:PORT`` is
printed on stdout (with ``--port 0``, the port the OS picked). SIGTERM or
Ctrl-C stops it gracefully; running audits are marked interrupted (or queued
again with ``--on-restart requeue``) and picked up as such on the next start.
It runs as one process: under a launcher (torchrun, WORLD_SIZE > 1) it refuses to
start, since each audit runs in a single-process worker; ``cem-attack --nproc N``
runs one attack data-parallel.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

import uvicorn

from attacker.service.app import create_app
from attacker.service.config import RECOVERY_POLICIES, ServiceSettings, load_settings
from cem.cli import run_cli
from cem.devices import DEVICE_CHOICES
from cem.distributed import launch_env_world_size
from cem.errors import ConfigError
from cem.logs import LOG_LEVELS, configure_logging
from cem.wire import format_listening_line

logger = logging.getLogger("attacker.service")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cem-audit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default=ServiceSettings.host,
                        help="address to bind (default %(default)s; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=ServiceSettings.port,
                        help="port; 0 picks a free one (see the LISTENING line)")
    parser.add_argument("--bundles", type=Path, required=True, help="folder whose sub-folders are bundles")
    parser.add_argument("--captures", type=Path, required=True, help="capture directory written by cem-tap")
    parser.add_argument("--db", type=Path, required=True, help="SQLite file for the jobs (created if missing)")
    parser.add_argument("--results", type=Path, default=ServiceSettings.results_dir,
                        help="folder for reconstruction PNGs (default: beside --db)")
    parser.add_argument("--experiments", type=Path, default=ServiceSettings.experiments_dir, metavar="DIR",
                        help="folder of cem-experiment output folders (each with report/ written by "
                             "`cem-experiment report`) the console shows")
    parser.add_argument("--max-jobs", type=int, default=ServiceSettings.max_jobs,
                        help="audits running at once (one worker process each)")
    parser.add_argument("--on-restart", choices=RECOVERY_POLICIES, default=ServiceSettings.on_restart,
                        help="what becomes of an audit that was running when the service stopped")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default=ServiceSettings.device)
    parser.add_argument("--data-dir", type=Path, default=ServiceSettings.data_dir,
                        help="where data sets other than the embedded digits live")
    parser.add_argument("--worker-threads", type=int, default=ServiceSettings.worker_threads,
                        help="torch threads per worker")
    parser.add_argument("--max-captured", type=int, default=ServiceSettings.max_captured_samples,
                        help="captured samples an audit reconstructs at most")
    parser.add_argument(
        "--insecure-no-auth", action="store_true", help="serve without a bearer token (never in production)"
    )
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS)
    parser.add_argument("--no-access-log", action="store_true",
                        help="no line per HTTP request (a client polling an audit writes one a second)")
    return parser


def build_settings(args: argparse.Namespace) -> ServiceSettings:
    return load_settings(
        bundles_dir=args.bundles,
        captures_dir=args.captures,
        db_path=args.db,
        insecure_no_auth=args.insecure_no_auth,
        host=args.host,
        port=args.port,
        results_dir=args.results,
        max_jobs=args.max_jobs,
        on_restart=args.on_restart,
        device=args.device,
        data_dir=args.data_dir,
        worker_threads=args.worker_threads,
        max_captured_samples=args.max_captured,
        experiments_dir=args.experiments,
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before serving so the real port is known (and printed) even with port 0."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(128)
    return sock


def check_single_process() -> None:
    """Refuse to serve as one of several launched processes: N copies would each bind the port and run audits."""
    world_size = launch_env_world_size()
    if world_size > 1:
        raise ConfigError(f"expected cem-audit to run as one process (each audit runs in a single-process worker; "
                          f"cem-attack --nproc N runs one attack data-parallel), got WORLD_SIZE={world_size} "
                          "from a launcher")


def run(args: argparse.Namespace) -> int:
    """Bind, print the LISTENING line, serve until SIGTERM or Ctrl-C; errors are left to ``run_cli``."""
    check_single_process()
    settings = build_settings(args)
    if not settings.auth_required:
        logger.warning("authentication is OFF (--insecure-no-auth): anyone who can reach the port can run audits")
    try:
        sock = bind_socket(settings.host, settings.port)
    except OSError as exc:
        raise OSError(f"cannot bind {settings.host}:{settings.port}: {exc}") from exc
    app = create_app(settings, log_level=args.log_level)
    config = uvicorn.Config(app, log_config=None, log_level=args.log_level.lower(), timeout_graceful_shutdown=10,
                            access_log=not args.no_access_log)
    print(format_listening_line(settings.host, sock.getsockname()[1]), flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    return run_cli(parser.prog, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
