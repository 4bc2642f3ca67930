"""Many concurrent clients: micro-batches form, every client gets its own rows back, health gates on warm-up."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import torch
from grpc_helpers import NOT_SERVING, SERVING, health_status, open_stub
from polling import wait_for

from cem.bundle import load_decoder
from cem.codec import decode_tensor, encode_tensor
from cloud_server import ServerSettings, create_server
from cloud_server.batcher import MicroBatcher
from cloud_server.errors import ServiceUnavailableError
from protos import cem_split_pb2 as pb

CLIENTS = 12
REQUESTS_PER_CLIENT = 6


def test_concurrent_clients_are_micro_batched_and_get_their_own_answers(digits_bundle: Path, start_server) -> None:
    server = start_server(max_batch=64, max_delay_ms=20)
    _, decoder = load_decoder(digits_bundle)
    channel, stub = open_stub(server.port)
    barrier = threading.Barrier(CLIENTS)

    def client(index: int) -> list[tuple[torch.Tensor, pb.InferResponse]]:
        generator = torch.Generator().manual_seed(index)
        barrier.wait()
        out = []
        for k in range(REQUESTS_PER_CLIENT):
            features = torch.rand(1 + (index + k) % 3, 8, 8, 8, generator=generator)
            request = pb.InferRequest(request_id=f"{index}-{k}", features=encode_tensor(features))
            out.append((features, stub.Infer(request, timeout=30)))
        return out

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [pair for chunk in pool.map(client, range(CLIENTS)) for pair in chunk]
    channel.close()
    assert len(results) == CLIENTS * REQUESTS_PER_CLIENT
    with torch.inference_mode():
        for features, response in results:
            expected = decoder(features)
            assert torch.allclose(decode_tensor(response.logits), expected, atol=1e-4)
            assert list(response.predictions) == expected.argmax(1).tolist()
            assert features.shape[0] <= response.served_batch_size <= 64
    assert max(response.served_batch_size for _, response in results) > 3  # more than one request per batch


def _in_thread(batcher: MicroBatcher, features: torch.Tensor) -> tuple[threading.Thread, list]:
    """``batcher.run(features)`` on a thread of its own, as a gRPC handler calls it; the outcome lands in the list."""
    outcome: list = []

    def call() -> None:
        try:
            outcome.append(batcher.run(features))
        except Exception as exc:  # noqa: BLE001 - inspected by the test
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    return thread, outcome


def _wait_queued(batcher: MicroBatcher, samples: int) -> None:
    wait_for(lambda: batcher._queued_samples == samples, timeout_s=10, what=f"{samples} samples queued")


def test_every_decoder_call_runs_on_the_one_decoder_thread() -> None:
    """Whichever threads send, one thread runs the decoder (each thread that runs it keeps a malloc arena)."""
    threads: list[threading.Thread] = []
    batcher = MicroBatcher(lambda x: (threads.append(threading.current_thread()), x)[1],
                           max_batch=4, max_delay_s=1.0, max_queue=8)
    result = batcher.run(torch.ones(2, 3))
    assert result.served_batch_size == 2 and torch.equal(result.logits, torch.ones(2, 3))
    assert result.started_ns <= result.finished_ns
    senders = [threading.Thread(target=batcher.run, args=(torch.ones(1, 3),)) for _ in range(3)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(10)
    batcher.close()
    assert len(threads) >= 2 and len(set(threads)) == 1
    assert threads[0] is not threading.current_thread() and threads[0] not in senders


def test_batcher_respects_max_batch_and_reports_the_batch_size() -> None:
    sizes: list[int] = []
    entered, gate = threading.Event(), threading.Event()

    def predict(x: torch.Tensor) -> torch.Tensor:
        entered.set()
        gate.wait(5)
        sizes.append(int(x.shape[0]))
        return x.flatten(1)[:, :2]

    batcher = MicroBatcher(predict, max_batch=5, max_delay_s=0.0, max_queue=100)
    first = _in_thread(batcher, torch.zeros(1, 2))  # its call holds the decoder until the gate opens
    assert entered.wait(5)
    queued = []
    for i in range(4):
        queued.append(_in_thread(batcher, torch.full((2, 2), float(i))))
        _wait_queued(batcher, 2 * (i + 1))
    gate.set()
    for thread, _ in [first, *queued]:
        thread.join(5)
    batcher.close()
    assert first[1][0].served_batch_size == 1
    assert sizes[0] == 1 and max(sizes) <= 5 and sum(sizes) == 9
    for i, (_, outcome) in enumerate(queued):
        assert torch.equal(outcome[0].logits, torch.full((2, 2), float(i)))
    assert [outcome[0].served_batch_size for _, outcome in queued] == [4, 4, 4, 4]  # 2+2 fit, a third would not


def test_a_failing_decoder_call_fails_every_request_in_it_and_the_next_call_still_runs() -> None:
    entered, gate = threading.Event(), threading.Event()
    calls: list[int] = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        calls.append(int(x.shape[0]))
        if len(calls) == 2:
            raise RuntimeError("decoder failed")
        entered.set()
        gate.wait(5)
        return x

    batcher = MicroBatcher(predict, max_batch=8, max_delay_s=0.0, max_queue=100)
    first = _in_thread(batcher, torch.zeros(1, 1))
    assert entered.wait(5)
    failing = [_in_thread(batcher, torch.zeros(1, 1)) for _ in range(3)]
    _wait_queued(batcher, 3)
    gate.set()
    for thread, _ in [first, *failing]:
        thread.join(5)
    assert calls == [1, 3]
    assert all(isinstance(outcome[0], RuntimeError) for _, outcome in failing)
    assert batcher.run(torch.ones(2, 1)).served_batch_size == 2  # the failure left the decoder thread serving
    batcher.close()


def test_batcher_refuses_work_when_full_or_closed() -> None:
    entered, gate = threading.Event(), threading.Event()

    def predict(x: torch.Tensor) -> torch.Tensor:
        entered.set()
        gate.wait(5)
        return x

    batcher = MicroBatcher(predict, max_batch=4, max_delay_s=0.0, max_queue=4)
    running = _in_thread(batcher, torch.zeros(4, 1))  # its call blocks in the decoder
    assert entered.wait(5)
    queued = _in_thread(batcher, torch.zeros(4, 1))  # fills the queue
    _wait_queued(batcher, 4)
    with pytest.raises(ServiceUnavailableError, match="overloaded"):
        batcher.run(torch.zeros(4, 1))
    closing = threading.Thread(target=batcher.close)
    closing.start()
    gate.set()
    closing.join(5)
    assert not closing.is_alive()  # close() returned once the queued request was decoded
    for thread, outcome in (running, queued):
        thread.join(5)
        assert outcome[0].served_batch_size == 4
    with pytest.raises(ServiceUnavailableError, match="shutting down"):
        batcher.run(torch.zeros(1, 1))


def test_health_is_not_serving_and_requests_unavailable_until_warm_up_ran(digits_bundle: Path) -> None:
    server, port = create_server(ServerSettings(bundle_dir=digits_bundle, port=0, device="cpu"))
    release = threading.Event()
    real_warm_up = server.runtime.warm_up
    server.runtime.warm_up = lambda run: (release.wait(10), real_warm_up(run))[1]  # type: ignore[method-assign]
    server.start()
    channel, stub = open_stub(port)
    try:
        assert health_status(channel) == NOT_SERVING
        with pytest.raises(grpc.RpcError) as info:
            stub.Infer(pb.InferRequest(features=encode_tensor(torch.rand(1, 8, 8, 8))), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "warming up" in info.value.details()
        release.set()
        assert server.wait_until_serving(10)
        assert health_status(channel) == SERVING
        request = pb.InferRequest(features=encode_tensor(torch.rand(1, 8, 8, 8)))
        assert len(stub.Infer(request, timeout=5).predictions) == 1
    finally:
        channel.close()
        server.stop(0).wait(10)
