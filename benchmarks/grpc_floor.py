"""The transport floor: a bare grpcio server that answers every SplitInference call at once with an empty message.

Same grpcio, same kind of server as ``cem-cloud`` (a thread-pool server with
the same message limit and handler-thread count), nothing else: no parsing, no
validation, no batching, no model. What a request costs here is what gRPC and
loopback cost; ``bench_grpc.py`` subtracts it (and the decoder's own time) from
the service's latency to get the service's overhead. An empty answer is smaller
than the cloud's (logits), so the floor is, if anything, too low and the
overhead reported too high.

    python benchmarks/grpc_floor.py [--port 0]   # prints LISTENING 127.0.0.1:<port>, then serves until SIGTERM
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc

from cem.wire import SERVICE_NAME, format_listening_line, grpc_message_options
from cloud_server.settings import ServerSettings


def answer_at_once(payload: bytes, context: grpc.ServicerContext) -> bytes:
    return b""


def answer_each(payloads: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    for _ in payloads:
        yield b""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=ServerSettings.workers),
                         options=grpc_message_options(ServerSettings.max_message_bytes))
    handlers = {"Infer": grpc.unary_unary_rpc_method_handler(answer_at_once),
                "InferStream": grpc.stream_stream_rpc_method_handler(answer_each)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    print(format_listening_line("127.0.0.1", port), flush=True)
    stopped.wait()
    server.stop(1).wait()


if __name__ == "__main__":
    main()
