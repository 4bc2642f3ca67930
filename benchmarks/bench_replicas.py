"""Throughput of one cloud replica against two behind one target, under the same concurrent clients, side by side.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_replicas.py [--clients 16] [--seconds 6] [--rounds 3] [--json]

Starts two real ``cem-cloud`` processes on loopback (``--cloud-threads`` torch
threads each, 1 by default, so their thread budgets are pinned) serving an
untrained default-width digits bundle (throughput does not depend on what the
weights learned). Each round measures both configurations, in alternating order
so that drift in machine load hits both alike: "1 replica" dials the first
cloud (``127.0.0.1:P1``), "2 replicas" dials both (``ipv4:127.0.0.1:P1,127.0.0.1:P2``,
round robin, ``cem.targets``). ``--clients`` threads in this process, each with an
``EdgeClient`` (a channel) of its own as separate edges would have, send batch-1
``Infer`` requests back to back for ``--seconds``; the features are encoded once
beforehand, so the edge's encoder does not limit the rate. Each replica's share
comes from its own ``cem_cloud_requests_total``.

The clients share this process and the machine with the clouds: on a small
machine the client side and the other replica take the cores a second replica
would need. The 1-minute load average is printed before and after; with
``--json`` the last stdout line is the result as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch
from prometheus_client.parser import text_string_to_metric_families

from cem.processes import ServiceProcess
from edge_client import ClientSettings, EdgeClient
from untrained_bundle import write_untrained_digits_bundle

REPO = Path(__file__).resolve().parent.parent


def start_cloud(bundle: Path, threads: int) -> tuple[ServiceProcess, int]:
    """A ``cem-cloud`` child on port 0 with ``threads`` torch threads; the process and its metrics port."""
    argv = [sys.executable, "-m", "cloud_server.cli", "--bundle", str(bundle), "--port", "0", "--device", "cpu",
            "--threads", str(threads), "--metrics-listen", "127.0.0.1:0", "--log-level", "WARNING"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cloud = ServiceProcess.start(argv, cwd=REPO, env=env, name="cem-cloud", timeout_s=300)
    metrics = next(line for line in cloud.stdout_lines() if line.startswith("METRICS "))
    return cloud, int(metrics.rsplit(":", 1)[1])


def served(metrics_port: int) -> int:
    """``Infer`` requests a cloud answered OK so far, from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return int(sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
                   if s.name == "cem_cloud_requests_total" and s.labels == {"method": "Infer", "code": "OK"}))


def measure(clients: list[EdgeClient], features: torch.Tensor, seconds: float, metrics_ports: list[int]) -> dict:
    """Every client sends back to back for ``seconds``: requests/s, latency, served batch, each replica's share."""
    before = [served(port) for port in metrics_ports]
    latencies: list[list[float]] = [[] for _ in clients]
    batches: list[list[int]] = [[] for _ in clients]
    failures: list[str] = []
    stop_at = time.monotonic() + seconds

    def send(i: int) -> None:
        while time.monotonic() < stop_at:
            try:
                prediction = clients[i].infer_features(features)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                failures.append(str(exc))
                continue
            latencies[i].append(prediction.latency_s * 1e3)
            batches[i].append(prediction.served_batch_size)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(clients))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    every = sorted(ms for per_client in latencies for ms in per_client)
    shares = [served(port) - b for port, b in zip(metrics_ports, before, strict=True)]
    return {
        "requests": len(every), "failed": len(failures), "requests_per_s": len(every) / elapsed,
        "p50_ms": statistics.median(every), "p99_ms": every[min(len(every) - 1, int(0.99 * len(every)))],
        "mean_served_batch": statistics.fmean(b for per_client in batches for b in per_client),
        "served_per_replica": shares,
    }


def run(args: argparse.Namespace, bundle: Path) -> dict:
    clouds = [start_cloud(bundle, args.cloud_threads) for _ in range(2)]
    try:
        targets = {
            "1 replica": f"127.0.0.1:{clouds[0][0].port}",
            "2 replicas": "ipv4:" + ",".join(f"127.0.0.1:{cloud.port}" for cloud, _ in clouds),
        }
        ports = [port for _, port in clouds]
        rounds: dict[str, list[dict]] = {name: [] for name in targets}
        for r in range(args.rounds):
            order = list(targets) if r % 2 == 0 else list(reversed(targets))
            for name in order:
                edges = [EdgeClient(bundle, targets[name], ClientSettings(seed=i)) for i in range(args.clients)]
                try:
                    features = edges[0].encode(torch.zeros(1, 1, 32, 32))  # (1, C, H, W)
                    measure(edges, features, args.warmup_s, ports)  # channels connected, caches warm
                    row = measure(edges, features, args.seconds, ports)
                finally:
                    for edge in edges:
                        edge.close()
                rounds[name].append(row)
                print(f"round {r + 1} {name:<10} {row['requests_per_s']:7.1f} req/s  p50 {row['p50_ms']:6.1f} ms  "
                      f"served {row['served_per_replica']}", file=sys.stderr, flush=True)
    finally:
        for cloud, _ in clouds:
            cloud.terminate()
    return {name: summarise(rows) for name, rows in rounds.items()}


def summarise(rows: list[dict]) -> dict:
    rates = [row["requests_per_s"] for row in rows]
    return {
        "requests_per_s_median": statistics.median(rates), "requests_per_s_rounds": rates,
        "p50_ms_median": statistics.median(row["p50_ms"] for row in rows),
        "p99_ms_median": statistics.median(row["p99_ms"] for row in rows),
        "mean_served_batch": statistics.fmean(row["mean_served_batch"] for row in rows),
        "served_per_replica": [sum(share) for share in zip(*(row["served_per_replica"] for row in rows), strict=True)],
        "failed": sum(row["failed"] for row in rows),
    }


def print_table(result: dict) -> None:
    print(f"load average (1 min) {result['load_before']:.2f} before, {result['load_after']:.2f} after; "
          f"{result['cpus']} CPUs; {result['clients']} clients at batch 1; cloud threads {result['cloud_threads']}")
    print("| target | requests/s (median) | per round | p50 (ms) | p99 (ms) | mean served batch | served by replica "
          "| failed |")
    print("|---|---:|---|---:|---:|---:|---|---:|")
    for name, row in result["configs"].items():
        rounds = ", ".join(f"{rate:.0f}" for rate in row["requests_per_s_rounds"])
        print(f"| {name} | {row['requests_per_s_median']:.1f} | {rounds} | {row['p50_ms_median']:.1f} | "
              f"{row['p99_ms_median']:.1f} | {row['mean_served_batch']:.2f} | {row['served_per_replica']} | "
              f"{row['failed']} |")
    one, two = (result["configs"][name]["requests_per_s_median"] for name in ("1 replica", "2 replicas"))
    print(f"2 replicas / 1 replica: {two / one:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients, batch 1 each")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per configuration and round")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="unmeasured seconds before each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each measures both configurations")
    parser.add_argument("--cloud-threads", type=int, default=1, help="torch threads of each cloud")
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier of the (untrained) model")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)  # this process: the clients (their encoder runs once)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        bundle = write_untrained_digits_bundle(Path(tmp) / "bundle", note="bench_replicas, untrained",
                                               width=args.width)
        configs = run(args, bundle)
    result = {"configs": configs, "clients": args.clients, "cloud_threads": args.cloud_threads,
              "seconds": args.seconds, "rounds": args.rounds, "width": args.width,
              "cpus": len(os.sched_getaffinity(0)), "load_before": load_before, "load_after": os.getloadavg()[0]}
    print_table(result)
    if args.json:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
