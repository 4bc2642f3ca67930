"""The per-stage timing trailer: sent when the caller asks, and only then."""

from __future__ import annotations

import pytest
import torch
from grpc_helpers import open_stub

from cem.codec import encode_tensor
from cem.wire import SERVER_TIMING_KEY, TIMING_REQUEST_KEY, format_server_timing, parse_server_timing
from cloud_server.stages import STAGES
from protos import cem_split_pb2 as pb


def test_a_call_that_asks_gets_every_stage_and_one_that_does_not_gets_no_trailer(start_server) -> None:
    server = start_server()
    channel, stub = open_stub(server.port)
    request = pb.InferRequest(features=encode_tensor(torch.rand(2, 8, 8, 8)))
    try:
        answer, call = stub.Infer.with_call(request, timeout=10, metadata=((TIMING_REQUEST_KEY, "1"),))
        stages = parse_server_timing(dict(call.trailing_metadata())[SERVER_TIMING_KEY])
        assert tuple(stages) == STAGES and all(ms >= 0 for ms in stages.values())
        assert len(answer.predictions) == 2
        _, untimed = stub.Infer.with_call(request, timeout=10)
        assert SERVER_TIMING_KEY not in dict(untimed.trailing_metadata())
    finally:
        channel.close()



def test_the_trailer_value_round_trips() -> None:
    assert parse_server_timing(format_server_timing([("parse", 0.01234), ("decoder", 1.5)])) == {
        "parse": 0.0123, "decoder": 1.5}


@pytest.mark.parametrize("bad", ["", "parse", "parse=", "=1.0", "parse=fast"])
def test_a_malformed_trailer_value_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_server_timing(bad)
