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
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cem.bundle import load_bundle, save_bundle
from cem.codec import WIRE_DTYPES
from cem.data import load_dataset
from cem.models import SplitModel, SplitModelConfig
from cem.obfuscation import ObfuscationConfig, obfuscate
from cem.processes import ServiceProcess
from edge_client import ClientSettings, EdgeClient
from edge_client.evaluate import evaluate_over_wire

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


def start_cloud(bundle: Path, device: str) -> ServiceProcess:
    """``cem-cloud`` on port 0 as a child process; its log goes to this process's stderr."""
    return ServiceProcess.start(
        [sys.executable, "-m", "cloud_server.cli", "--bundle", bundle, "--port", "0", "--device", device,
         "--max-batch", "256", "--log-level", "WARNING"],
        cwd=REPO, name="cem-cloud", timeout_s=600,
    )


def compare_latency(client: EdgeClient, model: SplitModel, obfuscation: ObfuscationConfig, images: torch.Tensor,
                    batch: int, reps: int, warmup: int) -> dict:
    """Interleaved calls of both paths; each call is timed in two stages (edge half, then the rest)."""
    x = images[:batch]
    generator = torch.Generator().manual_seed(0)

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

    for _ in range(warmup):
        in_process()
        over_grpc()
    local, wire = [], []
    reps = max(reps, min(400, reps * 32 // batch))  # small batches are cheap: more calls, steadier medians
    for rep in tqdm(range(reps), desc=f"batch {batch}", file=sys.stderr, leave=False):
        if rep % 2 == 0:
            local.append(in_process())
            wire.append(over_grpc())
        else:
            wire.append(over_grpc())
            local.append(in_process())
    p50 = lambda values: statistics.median(values) * 1e3  # noqa: E731
    local_p50, wire_p50 = p50([a + b for a, b in local]), p50([a + b for a, b in wire])
    return {
        "batch": batch,
        "calls": reps,
        "in_process_p50_ms": local_p50,
        "grpc_p50_ms": wire_p50,
        "added_p50_ms": wire_p50 - local_p50,
        "in_process_ips": batch / local_p50 * 1e3,
        "grpc_ips": batch / wire_p50 * 1e3,
        "throughput_ratio": local_p50 / wire_p50,
        "in_process_encode_p50_ms": p50([a for a, _ in local]),
        "in_process_decode_p50_ms": p50([b for _, b in local]),
        "edge_encode_p50_ms": p50([a for a, _ in wire]),
        "rpc_p50_ms": p50([b for _, b in wire]),
    }


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


def print_tables(latency: list[dict], dtypes: list[dict], reference_accuracy: float) -> None:
    print("| batch | in-process p50 (ms) | gRPC p50 (ms) | added p50 (ms) | in-process img/s | gRPC img/s "
          "| gRPC / in-process |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in latency:
        print(f"| {r['batch']} | {r['in_process_p50_ms']:.2f} | {r['grpc_p50_ms']:.2f} | {r['added_p50_ms']:+.2f} | "
              f"{r['in_process_ips']:.0f} | {r['grpc_ips']:.0f} | {r['throughput_ratio']:.3f}x |")
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or train_digits_bundle(args.save_bundle or Path(tmp) / "bundle", width=args.width,
                                                    epochs=args.epochs, noise_std=args.noise_std, seed=args.seed)
        manifest, model = load_bundle(bundle)
        obfuscation = ObfuscationConfig.from_records(manifest.noise_std, manifest.defenses)
        test, _ = load_dataset("digits", split="test")
        images = torch.stack([test[i][0] for i in range(max(int(b) for b in args.batches.split(",")))])
        cloud = start_cloud(bundle, args.device)
        target = f"127.0.0.1:{cloud.port}"
        try:
            with EdgeClient(bundle, target, ClientSettings(seed=args.seed)) as client:
                latency = [compare_latency(client, model, obfuscation, images, int(b), args.reps, args.warmup)
                           for b in args.batches.split(",")]
            dtypes = compare_dtypes(bundle, target, args.eval_batch, args.seed)
        finally:
            cloud.terminate(grace_s=60)
        reference = in_process_accuracy(model, obfuscation, args.eval_batch, args.seed)
    environment = {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
                   "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"), "cloud_device": args.device}
    print(f"model {manifest.model_id}: width {manifest.model.width}, cut {manifest.model.cut_layer}, "
          f"features {manifest.feature_shape}, noise σ {manifest.noise_std}; {environment}")
    print_tables(latency, dtypes, reference)
    if args.json:
        print(json.dumps({"model_id": manifest.model_id, "width": manifest.model.width, "environment": environment,
                          "latency": latency, "dtypes": dtypes, "in_process_accuracy": reference}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
