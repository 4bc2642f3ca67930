"""gRPC targets the edge and the tap dial, and how their channels spread calls over the replicas a target names.

Both ``cem-edge --server`` and ``cem-tap --upstream`` take any of gRPC's own
target forms; gRPC resolves them, this module only checks them, so a typo fails
at start-up with "expected X, got Y" instead of as UNAVAILABLE on every call:

- ``HOST:PORT``: a DNS name, an IPv4 literal or ``[IPv6]:PORT``; resolved by
  gRPC's DNS resolver, and every address the name resolves to is a replica
  (a compose service name with several containers, a headless Kubernetes service);
- ``dns:HOST:PORT``, ``dns:///HOST:PORT``, ``dns://DNS-SERVER/HOST:PORT``: the same, explicitly;
- ``ipv4:IP:PORT[,IP:PORT...]`` and ``ipv6:[IP]:PORT[,[IP]:PORT...]``: a fixed list of replicas;
- ``unix:PATH`` and ``unix-abstract:NAME``: a local socket.

A port is required: gRPC would silently dial 443 without one.

``balancing_options`` is the one service config both channels carry: the
``round_robin`` policy, so calls spread over every replica (gRPC's default,
``pick_first``, sends them all to the first address that connects), and client-side
health checking against the served service (``cem.wire.SERVICE_NAME``), so a
replica that reports NOT_SERVING (warming up, or draining after SIGTERM) stops
getting new calls while it stays connected. A replica that dies is dropped by
round_robin when its connection fails; calls that were on it fail with
UNAVAILABLE, which the edge retries (``edge_client.transport``) onto another.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass

from cem.errors import ConfigError
from cem.wire import SERVICE_NAME

TARGET_FORMS = "HOST:PORT, dns:[//DNS-SERVER/]HOST:PORT, ipv4:IP:PORT[,IP:PORT...], ipv6:[IP]:PORT[,...], unix:PATH"
TARGET_HELP = f"gRPC target: {TARGET_FORMS} (several addresses are load-balanced round robin)"
_SCHEMES = ("dns", "ipv4", "ipv6", "unix", "unix-abstract")
_DOTTED_RE = re.compile(r"^[0-9.]+$")
_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$")


@dataclass(frozen=True)
class GrpcTarget:
    """A checked target. ``text`` is what gRPC is given, unchanged; ``addresses`` are its ``HOST:PORT``
    entries (one name for ``dns``, however many addresses it resolves to) or its socket path."""

    text: str
    scheme: str
    addresses: tuple[str, ...]

    @property
    def lists_several_addresses(self) -> bool:
        """True for ``ipv4:``/``ipv6:`` lists: gRPC then has no single host name to check a certificate against."""
        return len(self.addresses) > 1


def parse_target(target: str, flag: str = "the target") -> GrpcTarget:
    """Check ``target`` against the forms above; ConfigError naming ``flag`` and the forms otherwise."""
    try:
        return _parse(target)
    except ValueError as exc:
        raise ConfigError(f"expected {flag} to be a gRPC target ({TARGET_FORMS}), got {target!r}: {exc}") from None


def balancing_options(health_service: str = SERVICE_NAME) -> list[tuple[str, str]]:
    """Channel options: round_robin over every resolved address, health-checked against ``health_service``."""
    config = {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": health_service}}
    return [("grpc.service_config", json.dumps(config))]


def _parse(target: str) -> GrpcTarget:
    if not target or target != target.strip() or any(c.isspace() for c in target):
        raise ValueError("a target is not empty and holds no spaces")
    scheme, _, rest = target.partition(":")
    if scheme in _SCHEMES:
        if scheme in ("unix", "unix-abstract"):
            if not rest.strip("/"):
                raise ValueError(f"{scheme}: needs a socket path")
            return GrpcTarget(target, scheme, (rest,))
        if scheme == "dns":
            return GrpcTarget(target, scheme, (_dns_name(rest),))
        family = ipaddress.IPv4Address if scheme == "ipv4" else ipaddress.IPv6Address
        entries = rest.split(",")
        return GrpcTarget(target, scheme, tuple(_host_port(entry, literal=family) for entry in entries))
    if "://" in target:
        raise ValueError(f"{scheme!r} is not a gRPC scheme")
    return GrpcTarget(target, "dns", (_host_port(target),))


def _dns_name(rest: str) -> str:
    """``HOST:PORT``, ``///HOST:PORT`` or ``//DNS-SERVER/HOST:PORT`` -> ``HOST:PORT``."""
    if rest.startswith("//"):
        server, slash, rest = rest[2:].partition("/")
        if not slash:
            raise ValueError("dns://DNS-SERVER/ needs the HOST:PORT after its slash")
        if server:
            _host_port(server, port_required=False)
    return _host_port(rest)


def _host_port(entry: str, literal: type | None = None, port_required: bool = True) -> str:
    """Check one ``HOST:PORT`` (``literal``: the IP family the host must be written in)."""
    if entry.startswith("["):
        host, bracket, after = entry[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError(f"an IPv6 host is written [IP]:PORT, not {entry!r}")
        port = after[1:] if after else None
        _check_ip(host, ipaddress.IPv6Address)
        if literal is ipaddress.IPv4Address:
            raise ValueError(f"ipv4: lists IPv4 addresses only, not {entry!r}")
    else:
        host, colon, port_text = entry.rpartition(":")
        if not colon:
            host, port_text = entry, ""
        if ":" in host:
            raise ValueError(f"an IPv6 host goes in brackets, [IP]:PORT, not {entry!r}")
        if literal is ipaddress.IPv6Address:
            raise ValueError(f"ipv6: lists [IP]:PORT entries, not {entry!r}")
        # What looks like an IPv4 literal must be one: gRPC would look 999.1.1.1 up in DNS.
        if literal is ipaddress.IPv4Address or _DOTTED_RE.match(host):
            _check_ip(host, ipaddress.IPv4Address)
        elif not _HOSTNAME_RE.match(host):
            raise ValueError(f"{host!r} is no host name or IP address")
        port = port_text if colon else None
    if port is None:
        if port_required:
            raise ValueError(f"{entry!r} has no port")
    elif not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"the port of {entry!r} is not in 1..65535")
    return entry


def _check_ip(host: str, family: type) -> None:
    try:
        family(host)
    except ValueError:
        name = "IPv4" if family is ipaddress.IPv4Address else "IPv6"
        raise ValueError(f"{host!r} is no {name} address") from None
