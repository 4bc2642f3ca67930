"""``cem.targets``: the target forms the edge and the tap accept, the garbage they refuse, the service config."""

from __future__ import annotations

import json

import pytest

from cem.errors import ConfigError
from cem.targets import balancing_options, parse_target
from cem.wire import SERVICE_NAME


@pytest.mark.parametrize(("target", "scheme", "addresses"), [
    ("127.0.0.1:50051", "dns", ("127.0.0.1:50051",)),
    ("cloud-sigma-only:50061", "dns", ("cloud-sigma-only:50061",)),
    ("cloud_1.internal.example.:443", "dns", ("cloud_1.internal.example.:443",)),
    ("[::1]:50051", "dns", ("[::1]:50051",)),
    ("dns:cloud:50051", "dns", ("cloud:50051",)),
    ("dns:///cloud:50051", "dns", ("cloud:50051",)),
    ("dns://10.0.0.2:53/cloud:50051", "dns", ("cloud:50051",)),
    ("ipv4:127.0.0.1:5001", "ipv4", ("127.0.0.1:5001",)),
    ("ipv4:127.0.0.1:5001,10.0.0.7:5002", "ipv4", ("127.0.0.1:5001", "10.0.0.7:5002")),
    ("ipv6:[::1]:5001,[fe80::1%eth0]:5002", "ipv6", ("[::1]:5001", "[fe80::1%eth0]:5002")),
    ("unix:/run/cem/cloud.sock", "unix", ("/run/cem/cloud.sock",)),
    ("unix-abstract:cem-cloud", "unix-abstract", ("cem-cloud",)),
])
def test_every_grpc_target_form_is_accepted_unchanged(target: str, scheme: str, addresses: tuple[str, ...]) -> None:
    parsed = parse_target(target)
    assert (parsed.text, parsed.scheme, parsed.addresses) == (target, scheme, addresses)
    assert parsed.lists_several_addresses == (len(addresses) > 1)


@pytest.mark.parametrize(("target", "reason"), [
    ("", "not empty"),
    (" cloud:50051", "no spaces"),
    ("cloud:50051 ", "no spaces"),
    ("cloud", "'cloud' has no port"),
    ("cloud:", "the port of 'cloud:' is not in 1..65535"),
    ("cloud:0", "the port of 'cloud:0' is not in 1..65535"),
    ("cloud:65536", "the port of 'cloud:65536' is not in 1..65535"),
    ("cloud:５０", "the port of 'cloud:５０' is not in 1..65535"),
    ("clo/ud:50051", "'clo/ud' is no host name or IP address"),
    ("999.0.0.1:50051", "'999.0.0.1' is no IPv4 address"),
    ("::1:50051", "an IPv6 host goes in brackets"),
    ("[::1]50051", "an IPv6 host is written [IP]:PORT"),
    ("[::g]:50051", "'::g' is no IPv6 address"),
    ("[::1]", "'[::1]' has no port"),
    ("http://cloud:50051", "'http' is not a gRPC scheme"),
    ("dns:", "'' is no host name or IP address"),
    ("dns://10.0.0.2:53", "needs the HOST:PORT after its slash"),
    ("dns:///cloud", "'cloud' has no port"),
    ("ipv4:cloud:50051", "'cloud' is no IPv4 address"),
    ("ipv4:127.0.0.1:5001,", "'' is no IPv4 address"),
    ("ipv4:127.0.0.1", "'127.0.0.1' has no port"),
    ("ipv4:[::1]:5001", "ipv4: lists IPv4 addresses only"),
    ("ipv6:127.0.0.1:5001", "ipv6: lists [IP]:PORT entries"),
    ("ipv6:::1:5001", "an IPv6 host goes in brackets"),
    ("unix:", "unix: needs a socket path"),
])
def test_garbage_is_refused_with_the_forms_and_the_reason(target: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_target(target, "--server")
    message = str(info.value)
    assert message.startswith("expected --server to be a gRPC target (HOST:PORT, dns:")
    assert f"got {target!r}: " in message and reason in message


def test_the_service_config_balances_round_robin_and_health_checks_the_served_service() -> None:
    (name, value), = balancing_options()
    assert name == "grpc.service_config"
    assert json.loads(value) == {"loadBalancingConfig": [{"round_robin": {}}],
                                 "healthCheckConfig": {"serviceName": SERVICE_NAME}}
    assert SERVICE_NAME == "cem.split.v1.SplitInference"
