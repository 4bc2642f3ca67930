"""``cem-tap --mode relay``: the edge's bytes forwarded unchanged, the same captures as the proxy records."""

from __future__ import annotations

import asyncio
import random
import socket
import sqlite3
import time
from pathlib import Path

import grpc
import httpx
import pytest
import torch
from h2_frames import INFER, client_start, frame, server_start, unary
from relay_helpers import Sink, Upstream, relayed
from tap_helpers import make_request, start_tap

from attacker.tap.cli import main as tap_main
from attacker.tap.metrics import RELAY_COUNTER_HELP
from attacker.tap.reader_limits import ReaderLimits
from attacker.tap.wire_relay import WireRelay
from cem.captures.reader import CaptureStore
from cem.captures.store import INDEX_FILE
from cem.errors import ConfigError
from edge_client import ClientSettings, EdgeClient
from protos import cem_split_pb2_grpc as pb_grpc

RELAY = ("--mode", "relay", "--grace", "1")
# Every field of a capture but the time it was taken (the index's row, less its storage place)
FIELDS = "method, model_id, request_id, dtype, shape, scale, offset, batch, nbytes, sample_ids"


def features(seed: int, batch: int = 2) -> torch.Tensor:
    return torch.rand((batch, 8, 8, 8), generator=torch.Generator().manual_seed(seed))


def captured(captures: Path, model_id: str) -> tuple[list[tuple], torch.Tensor]:
    """The index rows (``FIELDS``, in recording order) and every captured feature, decoded."""
    index = sqlite3.connect(f"file:{captures / INDEX_FILE}?mode=ro", uri=True)
    try:
        rows = index.execute(f"SELECT {FIELDS} FROM captures ORDER BY id").fetchall()
    finally:
        index.close()
    return rows, CaptureStore(captures).load(model_id).features


def edge_run(bundle: Path, address: str) -> list:
    """What the real edge client does: unary calls and one stream, the same features and noise every run."""
    images = [torch.rand((2, 1, 32, 32), generator=torch.Generator().manual_seed(i)) for i in range(6)]
    with EdgeClient(bundle, address, ClientSettings(seed=0)) as client:
        answers = [client.classify(x, sample_ids=[f"digits/test/{2 * i}", f"digits/test/{2 * i + 1}"])
                   for i, x in enumerate(images[:3])]
        return answers + list(client.classify_stream(images[3:]))


def test_the_edge_gets_the_clouds_answers_and_the_captures_equal_the_proxys(
    digits_bundle: Path, cloud_address: str, model_id: str, tmp_path: Path
) -> None:
    direct = edge_run(digits_bundle, cloud_address)
    runs = {}
    for mode in ("proxy", "relay"):
        process = start_tap(cloud_address, tmp_path / mode, tmp_path / f"{mode}.log", "--mode", mode, "--grace", "1")
        try:
            answers = edge_run(digits_bundle, process.address)
            stats = process.terminate()
        finally:
            process.kill()
        assert [a.predictions for a in answers] == [d.predictions for d in direct]
        assert all(torch.equal(a.logits, d.logits) for a, d in zip(answers, direct, strict=True))
        rows, captured_features = captured(tmp_path / mode, model_id)
        assert [row[2] for row in rows] == [a.request_id for a in answers]  # recorded once each, in order
        runs[mode] = ([row[:2] + row[3:] for row in rows], captured_features, stats)  # request ids are random
    assert runs["relay"][0] == runs["proxy"][0]
    assert torch.equal(runs["relay"][1], runs["proxy"][1])
    stats = runs["relay"][2]
    assert (stats["recorded"], stats["rejected_upstream"], stats["relay_lost_connections"]) == (6, 0, 0)
    assert stats["relay_connections"] >= 1 and stats["relay_undecodable_messages"] == 0


def test_a_refused_request_is_forwarded_answered_by_the_cloud_and_counted(tap, channels, cloud_address: str,
                                                                          model_id: str, tmp_path: Path) -> None:
    relay = tap(*RELAY)
    bad = make_request(model_id, "bad", features(3))
    bad.features.shape[:] = [2, 8, 8, 9]  # the cloud refuses the shape
    errors = []
    for address in (cloud_address, relay.address):
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.SplitInferenceStub(channels(address)).Infer(bad, timeout=10)
        errors.append((caught.value.code(), caught.value.details()))
    assert errors[0] == errors[1] and errors[0][0] == grpc.StatusCode.INVALID_ARGUMENT
    stub = pb_grpc.SplitInferenceStub(channels(relay.address))
    answered = []
    with pytest.raises(grpc.RpcError) as caught:
        requests = [make_request(model_id, "good-0", features(1)), make_request(model_id, "good-1", features(2)), bad]
        for response in stub.InferStream(iter(requests), timeout=10):
            answered.append(response.request_id)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and answered == ["good-0", "good-1"]
    stats = relay.terminate()
    assert (stats["recorded"], stats["rejected_upstream"]) == (2, 2)
    assert CaptureStore(tmp_path / "captures").summary().requests == 2


def test_a_gzip_compressed_call_is_recorded(tap, model_id: str, tmp_path: Path) -> None:
    relay = tap(*RELAY)
    channel = grpc.insecure_channel(relay.address, compression=grpc.Compression.Gzip)
    try:
        stub = pb_grpc.SplitInferenceStub(channel)
        stub.Infer(make_request(model_id, "gzip-unary", features(4)), timeout=10)
        stream = [make_request(model_id, f"gzip-stream-{i}", features(5 + i)) for i in range(2)]
        assert len(list(stub.InferStream(iter(stream), timeout=10))) == 2
    finally:
        channel.close()
    stats = relay.terminate()
    assert (stats["recorded"], stats["relay_undecodable_messages"]) == (3, 0)
    assert torch.equal(CaptureStore(tmp_path / "captures").load(model_id).features,
                       torch.cat([features(4), features(5), features(6)]))


def test_garbage_on_one_connection_does_not_stop_the_next_client(tap, channels, model_id: str,
                                                                 tmp_path: Path) -> None:
    relay = tap(*RELAY, "--metrics-listen", "127.0.0.1:0")
    host, port = relay.address.rsplit(":", 1)
    for garbage in (b"GET / HTTP/1.1\r\nHost: tap\r\n\r\n", bytes(range(256)) * 8):
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall(garbage)
            raw.shutdown(socket.SHUT_WR)
            while raw.recv(65536):  # until the cloud closes the connection it cannot read
                pass
    stub = pb_grpc.SplitInferenceStub(channels(relay.address))
    assert len(stub.Infer(make_request(model_id, "after", features(7)), timeout=10).predictions) == 2
    text = httpx.get(f"http://{relay.metrics_address}/metrics", timeout=10).text
    scraped = {line.split()[0] for line in text.splitlines() if line.startswith("cem_tap_relay_")}
    assert {f"cem_tap_{name}_total" for name in RELAY_COUNTER_HELP} <= scraped
    stats = relay.terminate()
    assert (stats["recorded"], stats["relay_lost_connections"], stats["relay_connections"]) == (1, 2, 3)
    assert CaptureStore(tmp_path / "captures").summary().requests == 1


def test_an_unreachable_upstream_closes_the_edges_connection(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    relay = start_tap(dead, tmp_path / "captures", tmp_path / "tap.log", *RELAY)
    try:
        with grpc.insecure_channel(relay.address) as channel:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                pb_grpc.SplitInferenceStub(channel).Infer(make_request("m", "r", features(8)), timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 30  # failed, not waited out
        stats = relay.terminate()
    finally:
        relay.kill()
    assert stats["relay_upstream_failures"] >= 1 and stats["offered"] == 0


@pytest.mark.parametrize(("flags", "message"), [
    (("--on-store-failure", "refuse"), "--on-store-failure refuse needs --mode proxy"),
    (("--upstream", "ipv4:127.0.0.1:50051,127.0.0.1:50053"), "use --mode proxy"),
    (("--upstream", "unix:/tmp/cloud.sock"), "one HOST:PORT in relay mode"),
])
def test_relay_mode_refuses_what_it_cannot_honour(flags: tuple[str, ...], message: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:50051", "--captures", str(tmp_path / "c"),
            "--mode", "relay", *flags]
    assert tap_main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("cem-tap: error: ") and message in error
    assert not (tmp_path / "c").exists()  # refused before anything started


def test_relay_counters_are_the_metrics() -> None:
    """Every counter the relay keeps is a metric with a help text, and nothing else is."""
    names = {f"relay_{name}" for name in WireRelay("127.0.0.1:0", "127.0.0.1:1", Sink()).stats()}
    assert names == set(RELAY_COUNTER_HELP)


def test_a_relay_refuses_a_message_size_and_limits_at_once() -> None:
    """``limits`` carries its own ``max_message_bytes``: given both, one would be ignored without a word."""
    with pytest.raises(ConfigError, match="not both"):
        WireRelay("127.0.0.1:0", "127.0.0.1:1", Sink(), max_message_bytes=1024, limits=ReaderLimits())
    assert WireRelay("127.0.0.1:0", "127.0.0.1:1", Sink(), max_message_bytes=1024)._limits.max_message_bytes == 1024


def test_bytes_pass_unchanged_both_ways_and_a_half_close_is_relayed() -> None:
    """The upstream answers only once the client has shut its sending half: the relay must pass the half-close
    on and keep the other direction open."""
    sent = random.Random(0).randbytes(300_000)
    upstream = Upstream(answer_after=len(sent) + 1, answer=sent[::-1], close_after_answer=True)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(sent)
        writer.write_eof()
        return await reader.read()

    answer, stats = asyncio.run(relayed(upstream, Sink(), client))
    assert bytes(upstream.received) == sent and answer == sent[::-1]
    assert (stats["connections"], stats["lost_connections"], stats["dropped_chunks"]) == (1, 1, 0)  # not HTTP/2


@pytest.mark.parametrize("bound", ["chunks", "bytes"])
def test_a_parser_that_falls_behind_loses_the_capture_never_the_bytes(bound: str) -> None:
    client_side, server_side = client_start(), server_start()
    unary(client_side, server_side, 1, b"features", b"logits")
    request, answer = client_side.take(), server_side.take()
    fillers = [frame(0xFA, 0, 0, bytes([i]) * 1000) for i in range(8)]  # a frame type readers skip
    # room for two fillers once the parser, waiting in offer(), has read the request
    bytes_bound = len(request) + len(answer) + 2 * len(fillers[0])
    queue_bounds = {"queue_chunks": 2} if bound == "chunks" else {"limits": ReaderLimits(max_total_bytes=bytes_bound)}
    upstream = Upstream(answer_after=len(request), answer=answer, close_after_answer=False)
    sink = Sink()
    sink.gate.clear()  # the parser stops in offer() once it has read the call

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(request)
        received = await reader.readexactly(len(answer))
        expected = len(request)
        for filler in fillers:  # one chunk each: the queue fills while the parser waits
            writer.write(filler)
            expected += len(filler)
            await upstream.until_received(expected)
        sink.gate.set()
        return received

    received, stats = asyncio.run(relayed(upstream, sink, client, **queue_bounds))
    assert received == answer and bytes(upstream.received) == request + b"".join(fillers)
    assert sink.offered == [(INFER, b"features", b"logits")] and sink.rejected == 0
    assert stats["dropped_chunks"] >= len(fillers) - 2 and stats["lost_connections"] == 1
