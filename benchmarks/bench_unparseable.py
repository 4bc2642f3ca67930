"""Memory per unparseable request: what grpcio's deserialisation failure path cost, and what ours costs.

Starts the real cloud service in-process on an untrained digits-shaped bundle,
sends ``--requests`` unary calls whose body is not a protobuf message (64 bytes of
0xff), and prints the status codes and the process's RSS growth per request.
Before the cloud parsed request bytes itself (cloud_server/servicer.py), grpcio
answered INTERNAL and kept about 19.5 KB per such request.

    .venv/bin/python benchmarks/bench_unparseable.py --requests 10000 --json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import grpc

from cloud_server import ServerSettings, create_server
from untrained_bundle import write_untrained_digits_bundle

GARBAGE = b"\xff" * 64
WARM_UP = 200


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_untrained_digits_bundle(Path(tmp), note="bench_unparseable, untrained", width=0.125)
        server, port = create_server(ServerSettings(bundle_dir=Path(tmp), port=0, device="cpu"))
        server.start()
        assert server.wait_until_serving(60), "the cloud did not reach SERVING"
        codes: Counter[str] = Counter()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/cem.split.v1.SplitInference/Infer")
            before = 0
            for i in range(WARM_UP + args.requests):
                if i == WARM_UP:
                    before = rss_kb()
                try:
                    call(GARBAGE, timeout=5)
                except grpc.RpcError as error:
                    codes[error.code().name] += 1
            after = rss_kb()
        server.stop(0).wait(10)
    per_request = (after - before) / args.requests
    print(f"{args.requests} unparseable requests (+{WARM_UP} warm-up): codes {dict(codes)}")
    print(f"RSS {before / 1024:.0f} -> {after / 1024:.0f} MB: {per_request:+.2f} KB per request")
    if args.json:
        print(json.dumps({"requests": args.requests, "codes": dict(codes), "rss_kb_before": before,
                          "rss_kb_after": after, "kb_per_request": per_request}))


if __name__ == "__main__":
    main()
