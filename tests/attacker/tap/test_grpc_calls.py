"""The relay tap's gRPC call pairing (``attacker.tap.grpc_calls``), fed through the reader by hand-built frames:
what is offered to the recorder, what is counted rejected, what is neither."""

from __future__ import annotations

from h2_frames import (
    INFER,
    INFER_STREAM,
    client_start,
    conversation,
    message,
    read,
    server_start,
)

from attacker.tap.reader_limits import ReaderLimits

CORRUPT_GZIP = bytes([1]) + (6).to_bytes(4, "big") + b"\x1f\x8b????"  # flagged compressed, not gzip


def test_a_stream_the_server_refused_is_retried_by_grpc_so_not_counted_rejected() -> None:
    """RST_STREAM REFUSED_STREAM (0x7) from the server: never processed, and gRPC retries it; any other code, from
    either side, ends the call with its requests unanswered."""
    client, server = client_start(), server_start()
    for stream in (1, 3, 5):
        client.request(stream, INFER, message(b"f%d" % stream), end_stream=True)
    server.rst(1, code=0x7)  # REFUSED_STREAM
    server.rst(3, code=0x2)  # INTERNAL_ERROR: the server may have processed it
    client.rst(5, code=0x7)  # only a server refuses a stream: from the client it is a cancellation
    client.request(7, INFER, message(b"f1"), end_stream=True)  # the retry
    server.answer(7, message(b"answer"))
    sink, reader = read(conversation(client, server))
    assert sink.offered == [(INFER, b"f1", b"answer")]
    assert (sink.rejected, reader.stats.refused_calls) == (2, 1)


def test_an_unreadable_unary_answer_counts_its_request_rejected_as_the_proxy_does() -> None:
    """The proxy's own gRPC client fails a call whose answer it cannot decompress, and counts its request
    rejected; the relay must not store that request as if it had been answered with nothing."""
    client, server = client_start(), server_start()
    client.request(1, INFER, message(b"features"), end_stream=True)
    server.answer(1, CORRUPT_GZIP, "gzip")
    sink, reader = read(conversation(client, server))
    assert sink.offered == []
    assert (sink.rejected, reader.stats.undecodable_messages) == (1, 1)


def test_an_unreadable_stream_answer_counts_its_request_rejected_and_keeps_the_pairing() -> None:
    client, server = client_start(), server_start()
    client.request(1, INFER_STREAM, message(b"q0") + message(b"q1") + message(b"q2"))
    server.answer(1, message(b"a0", "gzip") + CORRUPT_GZIP + message(b"a2", "gzip"), "gzip")
    sink, reader = read(conversation(client, server))
    assert sink.offered == [(INFER_STREAM, b"q0", b"a0"), (INFER_STREAM, b"q2", b"a2")]
    assert (sink.rejected, reader.stats.undecodable_messages) == (1, 1)


def test_an_answer_that_ends_with_data_and_no_trailers_is_not_a_success() -> None:
    """END_STREAM on the answer's DATA: no ``grpc-status`` at all, which gRPC reports as an error. A unary call is
    not recorded; a stream's answers that did arrive were paired as they arrived, its other requests rejected."""
    client, server = client_start(), server_start()
    client.request(1, INFER, message(b"unary"), end_stream=True)
    server.answer(1, message(b"answer"), status=None)
    client.request(3, INFER_STREAM, message(b"q0") + message(b"q1"), end_stream=True)
    server.answer(3, message(b"a0"), status=None)
    sink, reader = read(conversation(client, server), close=False)
    assert sink.offered == [(INFER_STREAM, b"q0", b"a0")]
    assert (sink.rejected, reader.open_calls) == (2, 0)


def test_a_stream_answer_is_not_counted_against_the_call_budget_it_is_never_held() -> None:
    """Three 1,000-byte requests run ahead of their answers (3,192 bytes held, within the 4,096-byte call budget).
    An answer is paired and offered at once, never held: counting it as if it were held on top of the requests
    gave the call up as oversized on its first answer."""
    client, server = client_start(), server_start()
    requests = [bytes([i]) * 1000 for i in range(3)]
    client.request(1, INFER_STREAM, b"".join(map(message, requests)))
    server.answer(1, b"".join(message(b"a" * 1000) for _ in requests))
    sink, reader = read(conversation(client, server), ReaderLimits(max_message_bytes=1024))
    assert sink.offered == [(INFER_STREAM, request, b"a" * 1000) for request in requests]
    assert reader.stats.oversized_calls == 0
