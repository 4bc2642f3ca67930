"""Requests at a fixed rate across a real cloud restart on the same port: how many fail, per retry policy.

Starts the real cloud service in-process on an untrained digits-shaped bundle,
sends ``--rate`` requests per second for ``--window`` seconds from one
``EdgeClient`` (one thread per request), stops the cloud at ``--down-at`` and
restarts it on the same port ``--restart-s`` later. Runs the current default
retry policy and the pre-budget one (4 attempts, gRPC's own reconnect backoff)
one after the other in the same process and prints one row each.

    .venv/bin/python benchmarks/bench_restart.py [--restart-s 2.7] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from cloud_server import ServerSettings, create_server
from edge_client import ClientSettings, EdgeClient, RemoteCallError, RetryPolicy
from untrained_bundle import write_untrained_digits_bundle

# The policy before the budget: 4 attempts, 0.35 s of waits, and gRPC's default reconnect backoff.
PRE_BUDGET = RetryPolicy(max_attempts=4, budget_s=60.0, align_reconnect=False)



def run_policy(bundle: Path, policy: RetryPolicy, args: argparse.Namespace) -> dict:
    """One restart under ``policy``; the request outcomes and the restart's timeline."""
    settings = ServerSettings(bundle_dir=bundle, port=0, device="cpu", max_delay_ms=1)
    server, _ = create_server(settings)
    server.start()
    assert server.wait_until_serving(60), "the cloud did not reach SERVING"
    servers = [server]
    events: dict[str, float] = {}
    start = time.monotonic()

    def restart() -> None:
        time.sleep(args.down_at)
        events["stopped"] = time.monotonic() - start
        servers[0].stop(0).wait(10)
        time.sleep(args.restart_s)
        replacement, _ = create_server(dataclasses.replace(settings, port=server.port))
        replacement.start()
        servers.append(replacement)
        replacement.wait_until_serving(60)
        events["serving"] = time.monotonic() - start

    results: list[tuple[float, float, str]] = []
    lock = threading.Lock()
    try:
        with EdgeClient(bundle, f"127.0.0.1:{server.port}", ClientSettings(retry=policy)) as client:
            image = torch.rand(1, 1, 8, 8)
            client.classify(image)

            def one(issued: float) -> None:
                try:
                    client.classify(image)
                    code = "OK"
                except RemoteCallError as error:
                    code = error.code.name
                with lock:
                    results.append((issued, time.monotonic() - start, code))

            restarter = threading.Thread(target=restart)
            restarter.start()
            total = int(args.window * args.rate)
            with ThreadPoolExecutor(max_workers=total) as pool:
                for i in range(total):
                    delay = start + i / args.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    pool.submit(one, time.monotonic() - start)
            restarter.join()
    finally:
        for running in servers[1:]:
            running.stop(0).wait(10)
    down = [r for r in results if events["stopped"] <= r[0] <= events["serving"]]
    succeeded = [r[1] - r[0] for r in results if r[2] == "OK"]
    return {
        "requests": len(results),
        "failed": sum(r[2] != "OK" for r in results),
        "issued_while_down": len(down),
        "failed_while_down": sum(r[2] != "OK" for r in down),
        "codes": dict(Counter(r[2] for r in results)),
        "slowest_success_s": round(max(succeeded, default=0.0), 3),
        "restart_s": round(events["serving"] - events["stopped"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--window", type=float, default=9.0, help="seconds of traffic")
    parser.add_argument("--down-at", type=float, default=1.0, help="when the cloud stops")
    parser.add_argument("--restart-s", type=float, default=2.7, help="how long it stays down")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        bundle = write_untrained_digits_bundle(Path(tmp) / "bundle", note="bench_restart, untrained", width=0.125)
        for name, policy in (("default (budget)", RetryPolicy()), ("pre-budget", PRE_BUDGET)):
            rows[name] = run_policy(bundle, policy, args)
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'policy':<18} {'failed':>12} {'failed while down':>18} {'slowest OK':>11} {'restart':>8}")
    for name, row in rows.items():
        print(f"{name:<18} {row['failed']:>5} of {row['requests']:<4} "
              f"{row['failed_while_down']:>9} of {row['issued_while_down']:<6} "
              f"{row['slowest_success_s']:>9.2f} s {row['restart_s']:>6.2f} s")


if __name__ == "__main__":
    main()
