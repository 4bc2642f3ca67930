"""Latency the channel tap adds: the same requests direct, through a bare forwarder and through ``cem-tap``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_tap.py --requests 2000 --batch 1

Starts a real ``cem-cloud``, a bare forwarding proxy and a real ``cem-tap``
(recording to a temporary capture directory) as child processes on loopback;
this process is the client. Each round sends the same request on every path
(direct to the cloud, through the bare forwarder, through the tap) in an order
shuffled anew every round (seeded), so drift in machine load hits all paths
alike and each path follows every other equally often. The order used to be
rotated, and then a path followed the same neighbour in most rounds and paid
for that neighbour's work after its answer: the path after the proxy tap took
about 0.3 ms more than the same path placed after the bare TCP relay.
Reports p50/p90/p99 per path, the tap's added p50 over direct and over the bare
forwarder, for unary ``Infer`` and for ping-pong messages on one
``InferStream``. The cloud runs with ``--max-delay-ms 0`` so micro-batching
waits do not blur the comparison.

The bare forwarder (``--serve-bare-forwarder UPSTREAM``, this same file run as
its own process) is the floor any Python grpc.aio proxy pays for the second
hop: a generic handler per method of the proto with the call shape the proto
gives it, opaque bytes, one upstream multicallable per method, and nothing
else (no recording, no metadata, deadline, status or cancellation relaying).
What the tap adds over it is the price of its guarantees.

A second floor, ``--tcp-relay`` (``--serve-tcp-relay UPSTREAM``, this file as
its own process again), relays bytes between two TCP connections with asyncio
and understands nothing: what a tap that copied the HTTP/2 bytes off the wire,
instead of terminating gRPC, would pay on the forwarding path.

``--relay-tap`` times ``cem-tap --mode relay`` as a path of its own ("tap_relay"),
recording to its own capture directory: the tap that does exactly that. With
``--tcp-relay`` too, one run shows it next to the floor it is built on.

``--tap-from DIR`` runs the tap from another checkout (``PYTHONPATH=DIR``),
e.g. a ``git worktree`` of an older commit, to measure it "before";
``--baseline-tap-from DIR`` times such a tap *as well*, as a fourth path in
the same run.

Latency does not depend on what the weights learned, so without ``--bundle``
a freshly initialised digits-shaped bundle is written to the temporary folder.
With ``--json`` the last stdout line is the result as one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import random
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import torch
from tqdm import tqdm

from cem.bundle import load_manifest
from cem.codec import encode_tensor
from cem.processes import ServiceProcess
from cem.wire import format_listening_line, grpc_message_options
from protos import cem_split_pb2 as pb
from protos import cem_split_pb2_grpc as pb_grpc
from untrained_bundle import write_untrained_digits_bundle

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
DIRECT, BARE, TAP, BASELINE, TCP, RELAY_TAP = "direct", "bare", "tap", "baseline_tap", "tcp_relay", "tap_relay"
RELAY_CHUNK = 65536


# ---------------------------------------------------------------------------------------------------------------
# The bare forwarder: the floor of a grpc.aio proxy, run as its own process.


def _bare_handler(channel: grpc.aio.Channel, method: str, client_streaming: bool,
                  server_streaming: bool) -> grpc.RpcMethodHandler:
    """A handler of the proto's call shape that hands opaque bytes to one upstream multicallable."""
    if not client_streaming and not server_streaming:
        unary_unary = channel.unary_unary(method)

        async def forward_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await unary_unary(request)

        return grpc.unary_unary_rpc_method_handler(forward_unary)
    if client_streaming and server_streaming:
        stream_stream = channel.stream_stream(method)

        async def forward_stream(request_iterator: AsyncIterator[bytes],
                                 context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            async for response in stream_stream(request_iterator):
                yield response

        return grpc.stream_stream_rpc_method_handler(forward_stream)
    raise NotImplementedError(f"{method}: the proto has no such call shape today")


async def serve_bare_forwarder(upstream: str) -> None:
    limits = grpc_message_options()
    channel = grpc.aio.insecure_channel(upstream, options=limits)
    service = pb.DESCRIPTOR.services_by_name["SplitInference"]
    handlers = {
        method.name: _bare_handler(channel, f"/{service.full_name}/{method.name}", method.client_streaming,
                                   method.server_streaming)
        for method in service.methods
    }
    server = grpc.aio.server(options=[*limits, ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(format_listening_line("127.0.0.1", port), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)
    await channel.close()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(RELAY_CHUNK):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def serve_tcp_relay(upstream: str) -> None:
    """Relay every accepted connection to ``upstream`` byte for byte, both ways (Nagle off on both legs)."""
    host, port = upstream.rsplit(":", 1)

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        for writer in (client_writer, upstream_writer):
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(_copy(client_reader, upstream_writer), _copy(upstream_reader, client_writer),
                             return_exceptions=True)

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    print(format_listening_line("127.0.0.1", server.sockets[0].getsockname()[1]), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


# ---------------------------------------------------------------------------------------------------------------
# The client side: timing each path.


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


Stubs = dict[str, pb_grpc.SplitInferenceStub]


ORDER_SEED = 0


def round_orders(names: list[str], rounds: int) -> list[list[str]]:
    """Each round's order, shuffled: a path goes first, second, ... and follows each other path equally often
    on average (a fixed rotation made one neighbour's after-answer work land on the same path every round)."""
    rng = random.Random(ORDER_SEED)
    return [rng.sample(names, len(names)) for _ in range(rounds)]


def time_unary(stubs: Stubs, request: pb.InferRequest, rounds: int, warmup: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in stubs}
    orders = round_orders(list(stubs), warmup + rounds)
    for i in tqdm(range(warmup + rounds), desc="unary", file=sys.stderr):
        for name in orders[i]:
            started = time.perf_counter()
            stubs[name].Infer(request, timeout=10)
            if i >= warmup:
                samples[name].append(time.perf_counter() - started)
    return samples


class PingPong:
    """One open InferStream; ``send`` writes one message and waits for its answer."""

    def __init__(self, stub: pb_grpc.SplitInferenceStub) -> None:
        self._outbox: queue.Queue = queue.Queue()
        self._responses = stub.InferStream(iter(self._outbox.get, None), timeout=3600)

    def send(self, request: pb.InferRequest) -> None:
        self._outbox.put(request)
        next(self._responses)

    def close(self) -> None:
        self._outbox.put(None)
        for _ in self._responses:
            pass


def time_stream(stubs: Stubs, request: pb.InferRequest, rounds: int, warmup: int) -> dict[str, list[float]]:
    streams = {name: PingPong(stub) for name, stub in stubs.items()}
    samples: dict[str, list[float]] = {name: [] for name in stubs}
    orders = round_orders(list(stubs), warmup + rounds)
    for i in tqdm(range(warmup + rounds), desc="stream", file=sys.stderr):
        for name in orders[i]:
            started = time.perf_counter()
            streams[name].send(request)
            if i >= warmup:
                samples[name].append(time.perf_counter() - started)
    for stream in streams.values():
        stream.close()
    return samples


def summarise(samples: dict[str, list[float]]) -> dict[str, float]:
    ms = {name: [1000 * s for s in values] for name, values in samples.items()}
    row: dict[str, float] = {
        f"{name}_{stat}": percentile(ms[name], q) for name in ms for stat, q in (("p50", 50), ("p90", 90), ("p99", 99))
    }
    row["added_p50"] = row[f"{TAP}_p50"] - row[f"{DIRECT}_p50"]  # the tap over direct
    row["added_p50_over_bare"] = row[f"{TAP}_p50"] - row[f"{BARE}_p50"]
    row["bare_added_p50"] = row[f"{BARE}_p50"] - row[f"{DIRECT}_p50"]
    row["added_mean"] = statistics.fmean(ms[TAP]) - statistics.fmean(ms[DIRECT])
    if BASELINE in ms:
        row["baseline_added_p50"] = row[f"{BASELINE}_p50"] - row[f"{DIRECT}_p50"]
    if TCP in ms:
        row["tcp_relay_added_p50"] = row[f"{TCP}_p50"] - row[f"{DIRECT}_p50"]
    if RELAY_TAP in ms:
        row["relay_tap_added_p50"] = row[f"{RELAY_TAP}_p50"] - row[f"{DIRECT}_p50"]
        if TCP in ms:
            row["relay_tap_added_p50_over_tcp_relay"] = row[f"{RELAY_TAP}_p50"] - row[f"{TCP}_p50"]
    row["n"] = len(ms[TAP])
    return row


def thread_settings() -> dict[str, object]:
    return {
        **{name: os.environ.get(name) for name in THREAD_ENV},
        "torch_threads_client": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: a fresh untrained digits bundle)")
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per path and call type")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1, help="samples per request")
    parser.add_argument("--dtype", choices=["float32", "float16", "int8"], default="float32")
    parser.add_argument("--tap-from", type=Path, default=None,
                        help="run the tap from this checkout (PYTHONPATH), e.g. a git worktree of an older commit")
    parser.add_argument("--baseline-tap-from", type=Path, default=None,
                        help="also time a second tap run from this checkout, as a fourth path in the same run")
    parser.add_argument("--tcp-relay", action="store_true",
                        help="also time a bare TCP relay (bytes only, no gRPC) as a second floor")
    parser.add_argument("--relay-tap", action="store_true",
                        help="also time the tap in relay mode (cem-tap --mode relay) as a path of its own")
    parser.add_argument("--serve-bare-forwarder", metavar="UPSTREAM", default=None,
                        help="(internal) be the bare forwarder in front of UPSTREAM; prints LISTENING HOST:PORT")
    parser.add_argument("--serve-tcp-relay", metavar="UPSTREAM", default=None,
                        help="(internal) be the TCP relay in front of UPSTREAM; prints LISTENING HOST:PORT")
    parser.add_argument("--json", action="store_true")
    return parser


def start_tap(upstream: str, captures: Path, log_path: Path, checkout: Path | None,
              *extra: str) -> ServiceProcess:
    env = dict(os.environ)
    if checkout is not None:
        env["PYTHONPATH"] = str(checkout.resolve())
    return ServiceProcess.start(
        [sys.executable, "-m", "attacker.tap.cli", "--listen", "127.0.0.1:0", "--upstream", upstream,
         "--captures", captures, *extra],
        log_path=log_path, name="cem-tap", env=env, cwd=checkout, timeout_s=120,
    )


def print_table(rows: dict[str, dict[str, float]], paths: list[str]) -> None:
    header = (f"{'call':<24} {'path':<13} {'p50':>7} {'p90':>7} {'p99':>7} "
              f"{'+p50 vs direct':>15} {'+p50 vs bare':>13}")
    print(header)
    print("-" * len(header))
    for call, row in rows.items():
        for i, path in enumerate(paths):
            over_direct = row[f"{path}_p50"] - row[f"{DIRECT}_p50"]
            over_bare = row[f"{path}_p50"] - row[f"{BARE}_p50"]
            print(f"{call if i == 0 else '':<24} {path:<13} {row[f'{path}_p50']:>7.3f} {row[f'{path}_p90']:>7.3f} "
                  f"{row[f'{path}_p99']:>7.3f} {'' if path == DIRECT else f'{over_direct:+.3f}':>15} "
                  f"{'' if path in (DIRECT, BARE) else f'{over_bare:+.3f}':>13}")
    print("(milliseconds)")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.serve_bare_forwarder is not None:
        asyncio.run(serve_bare_forwarder(args.serve_bare_forwarder))
        return 0
    if args.serve_tcp_relay is not None:
        asyncio.run(serve_tcp_relay(args.serve_tcp_relay))
        return 0
    torch.set_num_threads(1)
    bin_dir = Path(sys.executable).parent
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-tap-") as tmp:
        work = Path(tmp)
        bundle = args.bundle or write_untrained_digits_bundle(work / "bundle", note="benchmark, untrained")
        manifest = load_manifest(bundle)
        processes: list[ServiceProcess] = []
        try:
            cloud = ServiceProcess.start(
                [bin_dir / "cem-cloud", "--bundle", bundle, "--port", "0", "--device", "cpu", "--max-delay-ms", "0"],
                log_path=work / "cloud.log", timeout_s=120,
            )
            processes.append(cloud)
            addresses = {DIRECT: cloud.address}
            bare = ServiceProcess.start(
                [sys.executable, Path(__file__).resolve(), "--serve-bare-forwarder", cloud.address],
                log_path=work / "bare.log", name="bare-forwarder", timeout_s=120,
            )
            processes.append(bare)
            addresses[BARE] = bare.address
            if args.tcp_relay:
                relay = ServiceProcess.start(
                    [sys.executable, Path(__file__).resolve(), "--serve-tcp-relay", cloud.address],
                    log_path=work / "tcp-relay.log", name="tcp-relay", timeout_s=120,
                )
                processes.append(relay)
                addresses[TCP] = relay.address
            tap = start_tap(cloud.address, work / "captures", work / "tap.log", args.tap_from)
            processes.append(tap)
            addresses[TAP] = tap.address
            if args.baseline_tap_from is not None:
                baseline = start_tap(cloud.address, work / "baseline-captures", work / "baseline-tap.log",
                                     args.baseline_tap_from)
                processes.append(baseline)
                addresses[BASELINE] = baseline.address
            if args.relay_tap:
                relay_tap = start_tap(cloud.address, work / "relay-captures", work / "relay-tap.log", args.tap_from,
                                      "--mode", "relay")
                processes.append(relay_tap)
                addresses[RELAY_TAP] = relay_tap.address
            channels = {name: grpc.insecure_channel(address) for name, address in addresses.items()}
            stubs = {name: pb_grpc.SplitInferenceStub(channel) for name, channel in channels.items()}
            features = torch.rand((args.batch, *manifest.feature_shape), generator=torch.Generator().manual_seed(0))
            request = pb.InferRequest(
                model_id=manifest.model_id, request_id="bench", features=encode_tensor(features, args.dtype)
            )
            rows = {
                "Infer (unary)": summarise(time_unary(stubs, request, args.requests, args.warmup)),
                "InferStream (ping-pong)": summarise(time_stream(stubs, request, args.requests, args.warmup)),
            }
            for channel in channels.values():
                channel.close()
        finally:
            for process in reversed(processes):
                process.terminate(grace_s=30)
    load_after = os.getloadavg()
    threads = thread_settings()
    paths = list(addresses)
    print(
        f"batch {args.batch} x {tuple(manifest.feature_shape)} {args.dtype}, {args.requests} timed requests per path, "
        f"order shuffled per round; tap from {args.tap_from or 'this checkout'}"
        + (f", baseline tap from {args.baseline_tap_from}" if args.baseline_tap_from else "")
    )
    print(
        "threads: " + ", ".join(f"{name}={threads[name]}" for name in THREAD_ENV)
        + f", client torch threads {threads['torch_threads_client']}; cpu count {threads['cpu_count']} "
        f"(affinity {threads['affinity']}); load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    print_table(rows, paths)
    for call, row in rows.items():
        print(f"{call}: the tap adds {row['added_p50']:.3f} ms p50 over direct, {row['added_p50_over_bare']:.3f} ms "
              f"over the bare forwarder (which adds {row['bare_added_p50']:.3f} ms)"
              + (f"; a bare TCP relay adds {row['tcp_relay_added_p50']:.3f} ms" if TCP in addresses else "")
              + (f"; the relay tap adds {row['relay_tap_added_p50']:.3f} ms" if RELAY_TAP in addresses else "")
              + (f" ({row['relay_tap_added_p50_over_tcp_relay']:+.3f} ms over the bare TCP relay)"
                 if RELAY_TAP in addresses and TCP in addresses else ""))
    if args.json:
        print(json.dumps({
            "batch": args.batch, "dtype": args.dtype, "requests": args.requests, "paths": paths,
            "tap_from": None if args.tap_from is None else str(args.tap_from),
            "baseline_tap_from": None if args.baseline_tap_from is None else str(args.baseline_tap_from),
            "threads": threads, "load_average": {"before": load_before[0], "after": load_after[0]},
            "results": rows,
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
