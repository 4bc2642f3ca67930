"""Latency the channel tap adds: the same requests direct to the cloud and through ``cem-tap``, interleaved.

    .venv/bin/python benchmarks/bench_tap.py --requests 2000 --batch 1

Starts a real ``cem-cloud`` and a real ``cem-tap`` (recording to a temporary
capture directory) as child processes on loopback; this process is the client.
Each round sends one request direct and one through the tap, in alternating
order, so drift in machine load hits both paths alike. Reports p50/p90/p99 per
path and the added p50 (tap minus direct), for unary ``Infer`` and for
ping-pong messages on one ``InferStream``. The cloud runs with
``--max-delay-ms 0`` so micro-batching waits do not blur the comparison.

Latency does not depend on what the weights learned, so without ``--bundle``
a freshly initialised digits-shaped bundle is written to the temporary folder.
With ``--json`` the last stdout line is the result as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import torch
from tqdm import tqdm

from cem.bundle import load_manifest, save_bundle
from cem.codec import encode_tensor
from cem.data import load_dataset
from cem.models import SplitModel, SplitModelConfig
from cem.processes import ServiceProcess
from protos import cem_split_pb2 as pb
from protos import cem_split_pb2_grpc as pb_grpc


def write_bundle(out: Path) -> Path:
    _, info = load_dataset("digits", split="train")
    torch.manual_seed(0)
    config = SplitModelConfig(in_channels=1, num_classes=10, width=0.25, mean=info.mean, std=info.std)
    save_bundle(
        out, SplitModel(config).eval(), noise_std=0.1, dataset=info.to_dict(), training={"note": "benchmark, untrained"}
    )
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


Stubs = dict[str, pb_grpc.SplitInferenceStub]


def time_unary(stubs: Stubs, request: pb.InferRequest, rounds: int, warmup: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in stubs}
    names = list(stubs)
    for i in tqdm(range(warmup + rounds), desc="unary", file=sys.stderr):
        for name in names if i % 2 == 0 else reversed(names):
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
    names = list(stubs)
    for i in tqdm(range(warmup + rounds), desc="stream", file=sys.stderr):
        for name in names if i % 2 == 0 else reversed(names):
            started = time.perf_counter()
            streams[name].send(request)
            if i >= warmup:
                samples[name].append(time.perf_counter() - started)
    for stream in streams.values():
        stream.close()
    return samples


def summarise(samples: dict[str, list[float]]) -> dict[str, float]:
    ms = {name: [1000 * s for s in values] for name, values in samples.items()}
    row = {
        f"{name}_{stat}": fn(ms[name])
        for name in ms
        for stat, fn in (
            ("p50", lambda v: percentile(v, 50)),
            ("p90", lambda v: percentile(v, 90)),
            ("p99", lambda v: percentile(v, 99)),
        )
    }
    row["added_p50"] = row["tap_p50"] - row["direct_p50"]
    row["added_mean"] = statistics.fmean(ms["tap"]) - statistics.fmean(ms["direct"])
    row["n"] = len(ms["tap"])
    return row


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: a fresh untrained digits bundle)")
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per path and call type")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1, help="samples per request")
    parser.add_argument("--dtype", choices=["float32", "float16", "int8"], default="float32")
    parser.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    torch.set_num_threads(1)
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="bench-tap-") as tmp:
        work = Path(tmp)
        bundle = args.bundle or write_bundle(work / "bundle")
        manifest = load_manifest(bundle)
        processes: list[ServiceProcess] = []
        try:
            cloud = ServiceProcess.start(
                [bin_dir / "cem-cloud", "--bundle", bundle, "--port", "0", "--device", "cpu", "--max-delay-ms", "0"],
                log_path=work / "cloud.log", timeout_s=120,
            )
            processes.append(cloud)
            cloud_address = cloud.address
            tap = ServiceProcess.start(
                [bin_dir / "cem-tap", "--listen", "127.0.0.1:0", "--upstream", cloud_address,
                 "--captures", work / "captures"],
                log_path=work / "tap.log", timeout_s=120,
            )
            processes.append(tap)
            tap_address = tap.address
            channels = {"direct": grpc.insecure_channel(cloud_address), "tap": grpc.insecure_channel(tap_address)}
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
    print(
        f"batch {args.batch} x {tuple(manifest.feature_shape)} {args.dtype}, {args.requests} timed requests per path, "
        f"interleaved; cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}"
    )
    header = (f"{'call':<24} {'direct p50':>10} {'tap p50':>9} {'added p50':>10} "
              f"{'direct p90':>10} {'tap p90':>9} {'direct p99':>10} {'tap p99':>9}")
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        print(f"{name:<24} {row['direct_p50']:>10.3f} {row['tap_p50']:>9.3f} {row['added_p50']:>10.3f} "
              f"{row['direct_p90']:>10.3f} {row['tap_p90']:>9.3f} {row['direct_p99']:>10.3f} {row['tap_p99']:>9.3f}")
    print("(milliseconds)")
    if args.json:
        print(json.dumps({"batch": args.batch, "dtype": args.dtype, "requests": args.requests, "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
