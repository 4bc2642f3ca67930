"""Split inference over gRPC (loopback) against the same model in one process.

    python benchmarks/bench_grpc.py                      # trains a default-width digits model first
    python benchmarks/bench_grpc.py --bundle runs/digits # or measures an existing bundle

Part 1, latency and throughput at batch 1, 32 and 128: "in-process" runs
encoder -> the bundle's noise -> decoder -> argmax in this process;
"gRPC" runs ``EdgeClient.classify`` (encoder and noise here, features
serialised as float32, ``cem-cloud`` in a child process finishing the forward
pass, logits back). Both paths alternate call by call on the same inputs so
background load hits them alike; medians over ``--reps`` calls.
Throughput = batch / median latency. Both ends share this machine's cores, which
a real deployment does not; with OpenMP's default active wait, the idle end's
spinning threads take cores from the busy end, so the docs record runs with
``OMP_WAIT_POLICY=PASSIVE`` (inherited by the server) next to default runs.

Part 2, wire dtypes: accuracy over the whole digits test split through the
server for float32, float16 and int8 under one noise seed (the same draws for
every dtype, so differences come from the encoding alone), bytes per image as
serialised request bytes, and the in-process accuracy at the same seed.

Targets (issue 3): gRPC >= 0.90x in-process throughput at batch >= 32,
<= 1 ms added p50 at batch 1; float16 half the bytes of float32 at <= 0.1
point accuracy change. ``--json``: the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cem.bundle import load_bundle, save_bundle
from cem.codec import WIRE_DTYPES, decode_tensor, encode_tensor
from cem.data import load_dataset
from cem.models import SplitModel, SplitModelConfig
from cem.obfuscation import ObfuscationConfig, obfuscate
from cem.processes import ServiceProcess
from cem.wire import SERVER_TIMING_KEY, SERVICE_NAME, TIMING_REQUEST_KEY, parse_server_timing
from edge_client import ClientSettings, EdgeClient
from edge_client.evaluate import evaluate_over_wire
from edge_client.transport import create_channel
from protos import cem_split_pb2 as pb

REPO = Path(__file__).resolve().parent.parent


def train_digits_bundle(out: Path, *, width: float, epochs: int, noise_std: float, seed: int) -> Path:
    """A default-architecture digits model trained on noisy features, written as a bundle."""
    torch.manual_seed(seed)
    train, info = load_dataset("digits", split="train")
    model = SplitModel(SplitModelConfig(in_channels=1, num_classes=10, width=width, mean=info.mean, std=info.std))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=epochs * -(-len(train) // 64))
    noise = ObfuscationConfig(noise_std=noise_std)
    loader = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    model.train()
    for _ in tqdm(range(epochs), desc="train", unit="epoch", file=sys.stderr):
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model.decoder(obfuscate(model.encoder(x), noise)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    save_bundle(
        out,
        model.eval(),
        noise_std=noise_std,
        dataset=info.to_dict(),
        defenses=[{"name": "noise", "std": noise_std}],
        training={"script": "benchmarks/bench_grpc.py", "epochs": epochs, "seed": seed},
    )
    return out


def start_cloud(bundle: Path, device: str, threads: int, checkout: Path) -> ServiceProcess:
    """``cem-cloud`` from ``checkout`` on port 0 as a child process with ``threads`` torch threads.

    The thread count travels as ``OMP_NUM_THREADS``, which every version of the
    cloud honours, so ``--cloud-from`` can measure an older checkout side by side.
    Its log goes to this process's stderr.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(checkout)}
    return ServiceProcess.start(
        [sys.executable, "-m", "cloud_server.cli", "--bundle", bundle, "--port", "0", "--device", device,
         "--max-batch", "256", "--log-level", "WARNING"],
        cwd=checkout, env=env, name="cem-cloud", timeout_s=600,
    )


def start_floor() -> ServiceProcess:
    """The bare grpcio server of ``grpc_floor.py`` (answers at once, nothing else) as a child process."""
    return ServiceProcess.start([sys.executable, str(REPO / "benchmarks" / "grpc_floor.py")], cwd=REPO,
                                name="grpc-floor", timeout_s=120)


def compare_latency(client: EdgeClient, model: SplitModel, obfuscation: ObfuscationConfig, images: torch.Tensor,
                    floor: grpc.UnaryUnaryMultiCallable, batch: int, reps: int, warmup: int) -> dict:
    """Interleaved calls of the three paths, in rotating order; the first two are timed in two stages
    (edge half, then the rest), the floor sends the serialised request the edge would send."""
    x = images[:batch]
    generator = torch.Generator().manual_seed(0)
    payload = client.build_request(client.encode(x)).SerializeToString()

    @torch.inference_mode()
    def in_process() -> tuple[float, float]:
        start = time.perf_counter()
        z = obfuscate(model.encoder(x), obfuscation, generator)  # (B, 8, 8, 8)
        encoded = time.perf_counter()
        model.decoder(z).argmax(1).tolist()
        return encoded - start, time.perf_counter() - encoded

    def over_grpc() -> tuple[float, float]:
        start = time.perf_counter()
        features = client.encode(x)
        encoded = time.perf_counter()
        client.infer_features(features)  # serialise, send, server decode, answer, parse
        return encoded - start, time.perf_counter() - encoded

    def bare() -> float:
        start = time.perf_counter()
        floor(payload, timeout=10)
        return time.perf_counter() - start

    for _ in range(warmup):
        in_process()
        over_grpc()
        bare()
    local: list[tuple[float, float]] = []
    wire: list[tuple[float, float]] = []
    floors: list[float] = []
    paths = (lambda: local.append(in_process()), lambda: wire.append(over_grpc()), lambda: floors.append(bare()))
    reps = max(reps, min(400, reps * 32 // batch))  # small batches are cheap: more calls, steadier medians
    for rep in tqdm(range(reps), desc=f"batch {batch}", file=sys.stderr, leave=False):
        for i in range(3):
            paths[(rep + i) % 3]()
    p50 = lambda values: statistics.median(values) * 1e3  # noqa: E731
    local_p50, wire_p50 = p50([a + b for a, b in local]), p50([a + b for a, b in wire])
    floor_p50 = p50(floors)
    return {
        "batch": batch,
        "calls": reps,
        "in_process_p50_ms": local_p50,
        "grpc_p50_ms": wire_p50,
        "added_p50_ms": wire_p50 - local_p50,
        "floor_p50_ms": floor_p50,
        "service_overhead_p50_ms": wire_p50 - local_p50 - floor_p50,
        "in_process_ips": batch / local_p50 * 1e3,
        "grpc_ips": batch / wire_p50 * 1e3,
        "throughput_ratio": local_p50 / wire_p50,
        "in_process_encode_p50_ms": p50([a for a, _ in local]),
        "in_process_decode_p50_ms": p50([b for _, b in local]),
        "edge_encode_p50_ms": p50([a for a, _ in wire]),
        "rpc_p50_ms": p50([b for _, b in wire]),
    }


INFER_METHOD = f"/{SERVICE_NAME}/Infer"
EDGE_STAGES = ("encoder+noise", "build request", "serialise", "RPC", "parse answer")


def stage_breakdown(client: EdgeClient, channel: grpc.Channel, images: torch.Tensor, batch: int, calls: int) -> dict:
    """One request's time, stage by stage: the edge's stages timed here, the cloud's from its timing trailer.

    "gRPC + loopback" is the RPC minus every cloud stage: receiving, sending and
    everything gRPC does around the handler, in both processes.
    """
    infer = channel.unary_unary(INFER_METHOD)  # bytes in, bytes out: serialising is timed on its own
    x = images[:batch]
    edge: dict[str, list[float]] = {name: [] for name in EDGE_STAGES}
    cloud: dict[str, list[float]] = {}
    transport: list[float] = []
    for _ in tqdm(range(calls), desc=f"stages, batch {batch}", file=sys.stderr, leave=False):
        marks = [time.perf_counter()]
        features = client.encode(x)
        marks.append(time.perf_counter())
        request = client.build_request(features)
        marks.append(time.perf_counter())
        payload = request.SerializeToString()
        marks.append(time.perf_counter())
        answer, call = infer.with_call(payload, timeout=10, metadata=((TIMING_REQUEST_KEY, "1"),))
        marks.append(time.perf_counter())
        decode_tensor(pb.InferResponse.FromString(answer).logits).argmax(1).tolist()
        marks.append(time.perf_counter())
        for name, start, end in zip(EDGE_STAGES, marks, marks[1:], strict=False):
            edge[name].append((end - start) * 1e3)
        stages = parse_server_timing(dict(call.trailing_metadata())[SERVER_TIMING_KEY])
        for name, ms in stages.items():
            cloud.setdefault(name, []).append(ms)
        transport.append(edge["RPC"][-1] - sum(stages.values()))
    return {
        "batch": batch,
        "calls": calls,
        "edge_p50_ms": {name: statistics.median(v) for name, v in edge.items()},
        "cloud_p50_ms": {name: statistics.median(v) for name, v in cloud.items()},
        "grpc_and_loopback_p50_ms": statistics.median(transport),
    }


def sends_timing(channel: grpc.Channel, feature_shape: tuple[int, ...]) -> bool:
    """Whether the cloud answers a timing trailer (older versions do not)."""
    request = pb.InferRequest(features=encode_tensor(torch.full((1, *feature_shape), 0.5)))
    _, call = channel.unary_unary(INFER_METHOD).with_call(request.SerializeToString(), timeout=10,
                                                          metadata=((TIMING_REQUEST_KEY, "1"),))
    return SERVER_TIMING_KEY in dict(call.trailing_metadata())


def concurrency_scaling(client: EdgeClient, images: torch.Tensor, clients: tuple[int, ...], seconds: float) -> list:
    """``n`` threads sending batch-1 requests back to back for ``seconds``: throughput and the served batch size.

    The threads share this process (and its GIL) and one channel, as the callers
    of one ``EdgeClient`` do; the features are encoded once beforehand, so the
    edge's encoder does not limit the rate.
    """
    features = client.encode(images[:1])
    rows = []
    for n in clients:
        stop_at = time.monotonic() + seconds
        latencies: list[float] = []
        served: list[int] = []

        def send(stop_at: float, latencies: list[float], served: list[int]) -> None:
            while time.monotonic() < stop_at:
                prediction = client.infer_features(features)
                latencies.append(prediction.latency_s * 1e3)
                served.append(prediction.served_batch_size)

        threads = [threading.Thread(target=send, args=(stop_at, latencies, served)) for _ in range(n)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        rows.append({"clients": n, "requests": len(latencies), "requests_per_s": len(latencies) / elapsed,
                     "mean_served_batch": statistics.fmean(served), "p50_ms": statistics.median(latencies)})
    for row in rows:
        row["vs_one_client"] = row["requests_per_s"] / rows[0]["requests_per_s"]
    return rows


def in_process_accuracy(model: SplitModel, obfuscation: ObfuscationConfig, batch: int, seed: int) -> float:
    test, _ = load_dataset("digits", split="test")
    generator = torch.Generator().manual_seed(seed)
    correct = 0
    with torch.inference_mode():
        for x, y in DataLoader(test, batch_size=batch):
            correct += int((model.decoder(obfuscate(model.encoder(x), obfuscation, generator)).argmax(1) == y).sum())
    return correct / len(test)


def compare_dtypes(bundle: Path, target: str, batch: int, seed: int) -> list[dict]:
    test, _ = load_dataset("digits", split="test")
    rows = []
    for dtype in WIRE_DTYPES:
        with EdgeClient(bundle, target, ClientSettings(wire_dtype=dtype, seed=seed)) as client:
            report = evaluate_over_wire(
                client, test, dataset_name="digits", split="test", batch_size=batch, show_progress=False
            )
        rows.append(
            {
                "wire_dtype": dtype,
                "bytes_per_image": report.bytes_per_image,
                "accuracy": report.accuracy,
                "images": report.images,
            }
        )
    for row in rows:
        row["accuracy_change_points"] = (row["accuracy"] - rows[0]["accuracy"]) * 100
        row["bytes_ratio"] = row["bytes_per_image"] / rows[0]["bytes_per_image"]
    return rows


def print_tables(latency: list[dict], stages: list[dict], scaling: list[dict], dtypes: list[dict],
                 reference_accuracy: float) -> None:
    print("| batch | in-process p50 (ms) | gRPC p50 (ms) | added p50 (ms) | floor p50 (ms) | service overhead (ms) "
          "| in-process img/s | gRPC img/s | gRPC / in-process |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in latency:
        print(f"| {r['batch']} | {r['in_process_p50_ms']:.2f} | {r['grpc_p50_ms']:.2f} | {r['added_p50_ms']:+.2f} | "
              f"{r['floor_p50_ms']:.2f} | {r['service_overhead_p50_ms']:+.2f} | "
              f"{r['in_process_ips']:.0f} | {r['grpc_ips']:.0f} | {r['throughput_ratio']:.3f}x |")
    print()
    if stages:
        cloud_names = list(stages[0]["cloud_p50_ms"])
        print("Stage p50 (ms), one request at a time: edge " + ", ".join(EDGE_STAGES) + "; inside the RPC, cloud "
              + ", ".join(cloud_names) + ", and gRPC + loopback (the RPC minus the cloud's stages)")
        print("| batch | " + " | ".join(EDGE_STAGES) + " | " + " | ".join(f"cloud {n}" for n in cloud_names)
              + " | gRPC + loopback |")
        print("|---:|" + "---:|" * (len(EDGE_STAGES) + len(cloud_names) + 1))
        for r in stages:
            cells = [*r["edge_p50_ms"].values(), *r["cloud_p50_ms"].values(), r["grpc_and_loopback_p50_ms"]]
            print(f"| {r['batch']} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
        print()
    if scaling:
        print("| concurrent clients (batch 1) | requests/s | vs 1 client | mean served batch | p50 (ms) |")
        print("|---:|---:|---:|---:|---:|")
        for r in scaling:
            print(f"| {r['clients']} | {r['requests_per_s']:.0f} | {r['vs_one_client']:.2f}x | "
                  f"{r['mean_served_batch']:.2f} | {r['p50_ms']:.2f} |")
        print()
    print("| batch | in-process encoder+noise | in-process decoder | edge encoder+noise | RPC incl. cloud decoder "
          "| RPC - in-process decoder |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in latency:
        added = r["rpc_p50_ms"] - r["in_process_decode_p50_ms"]
        print(f"| {r['batch']} | {r['in_process_encode_p50_ms']:.2f} | {r['in_process_decode_p50_ms']:.2f} | "
              f"{r['edge_encode_p50_ms']:.2f} | {r['rpc_p50_ms']:.2f} | {added:+.2f} |")
    print()
    print(f"in-process accuracy at the same noise seed: {reference_accuracy:.4f}")
    print("| wire dtype | bytes / image | vs float32 | accuracy | change (points) |")
    print("|---|---:|---:|---:|---:|")
    for r in dtypes:
        print(f"| {r['wire_dtype']} | {r['bytes_per_image']:.1f} | {r['bytes_ratio']:.3f}x | {r['accuracy']:.4f} "
              f"| {r['accuracy_change_points']:+.2f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="measure this bundle instead of training one")
    parser.add_argument("--save-bundle", type=Path, help="keep the trained bundle here (to rerun with --bundle)")
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier of the trained model")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--noise-std", type=float, default=0.1)
    parser.add_argument("--batches", default="1,32,128")
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--eval-batch", type=int, default=128)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="cloud device")
    parser.add_argument("--cloud-threads", type=int, default=1, help="torch threads of the cloud process")
    parser.add_argument("--cloud-from", type=Path,
                        help="run the cloud from this checkout (e.g. a git worktree of an older commit); "
                             "skips the stage table when that cloud sends no timing trailer")
    parser.add_argument("--client-threads", type=int, default=1, help="torch threads of this (edge) process")
    parser.add_argument("--stage-calls", type=int, default=200,
                        help="stage-table calls at batch <= 8 (fewer for larger batches, at least 20)")
    parser.add_argument("--clients", default="1,4,16", help="concurrent clients for the scaling table")
    parser.add_argument("--scaling-s", type=float, default=5.0, help="seconds per concurrency level")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.client_threads)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or train_digits_bundle(args.save_bundle or Path(tmp) / "bundle", width=args.width,
                                                    epochs=args.epochs, noise_std=args.noise_std, seed=args.seed)
        manifest, model = load_bundle(bundle)
        obfuscation = ObfuscationConfig.from_records(manifest.noise_std, manifest.defenses)
        test, _ = load_dataset("digits", split="test")
        images = torch.stack([test[i][0] for i in range(max(int(b) for b in args.batches.split(",")))])
        batches = [int(b) for b in args.batches.split(",")]
        cloud = start_cloud(bundle, args.device, args.cloud_threads, args.cloud_from or REPO)
        floor = start_floor()
        target = f"127.0.0.1:{cloud.port}"
        settings = ClientSettings(seed=args.seed)
        try:
            with EdgeClient(bundle, target, settings) as client, \
                    create_channel(target, settings) as channel, \
                    create_channel(f"127.0.0.1:{floor.port}", settings) as floor_channel:
                bare = floor_channel.unary_unary(INFER_METHOD)
                latency = [compare_latency(client, model, obfuscation, images, bare, b, args.reps, args.warmup)
                           for b in batches]
                stages = [stage_breakdown(client, channel, images, b, max(20, args.stage_calls * 8 // b))
                          for b in batches] if sends_timing(channel, manifest.feature_shape) else []
                scaling = concurrency_scaling(client, images, tuple(int(n) for n in args.clients.split(",")),
                                              args.scaling_s)
            dtypes = compare_dtypes(bundle, target, args.eval_batch, args.seed)
        finally:
            floor.terminate(grace_s=10)
            cloud.terminate(grace_s=60)
        reference = in_process_accuracy(model, obfuscation, args.eval_batch, args.seed)
    environment = {"client_threads": torch.get_num_threads(), "cloud_threads": args.cloud_threads,
                   "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
                   "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"), "cloud_device": args.device}
    print(f"model {manifest.model_id}: width {manifest.model.width}, cut {manifest.model.cut_layer}, "
          f"features {manifest.feature_shape}, noise σ {manifest.noise_std}; {environment}")
    print_tables(latency, stages, scaling, dtypes, reference)
    if args.json:
        print(json.dumps({"model_id": manifest.model_id, "width": manifest.model.width, "environment": environment,
                          "latency": latency, "stages": stages, "scaling": scaling, "dtypes": dtypes,
                          "in_process_accuracy": reference}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
