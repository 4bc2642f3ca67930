"""TLS and mTLS handshakes with certificates generated here (a CA, a server and a client certificate)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cem.errors import ConfigError
from cloud_server import ServerSettings
from edge_client import ClientSettings, EdgeClient, RemoteCallError, RetryPolicy, TlsOptions

NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject: str, issuer_key, issuer_name: x509.Name | None, *, ca: bool, server: bool = False):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name or _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return key, cert


def _write(path: Path, key=None, cert=None) -> Path:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    out = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _issue("test CA", None, None, ca=True)
    server_key, server_cert = _issue("localhost", ca_key, ca_cert.subject, ca=False, server=True)
    client_key, client_cert = _issue("edge device 1", ca_key, ca_cert.subject, ca=False)
    _, other_ca = _issue("someone else's CA", None, None, ca=True)
    return Pki(
        ca=_write(out / "ca.pem", cert=ca_cert),
        server_cert=_write(out / "server.pem", cert=server_cert),
        server_key=_write(out / "server.key", key=server_key),
        client_cert=_write(out / "client.pem", cert=client_cert),
        client_key=_write(out / "client.key", key=client_key),
        other_ca=_write(out / "other-ca.pem", cert=other_ca),
    )


def _classify(bundle: Path, port: int, tls: TlsOptions | None) -> list[int]:
    settings = ClientSettings(tls=tls, retry=NO_RETRY, timeout_s=10)
    with EdgeClient(bundle, f"127.0.0.1:{port}", settings) as client:
        return client.classify(torch.zeros(2, 1, 32, 32)).predictions


def test_tls_handshake_with_the_trusted_ca_and_refusal_otherwise(digits_bundle: Path, start_server, pki: Pki) -> None:
    server = start_server(tls_cert=pki.server_cert, tls_key=pki.server_key)
    assert len(_classify(digits_bundle, server.port, TlsOptions(root_cert=pki.ca))) == 2
    for tls in (TlsOptions(root_cert=pki.other_ca), None):  # untrusted CA; plaintext against a TLS port
        with pytest.raises(RemoteCallError) as info:
            _classify(digits_bundle, server.port, tls)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_mtls_requires_a_client_certificate_from_the_client_ca(digits_bundle: Path, start_server, pki: Pki) -> None:
    server = start_server(tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca)
    with_cert = TlsOptions(root_cert=pki.ca, client_cert=pki.client_cert, client_key=pki.client_key)
    assert len(_classify(digits_bundle, server.port, with_cert)) == 2
    with pytest.raises(RemoteCallError) as info:
        _classify(digits_bundle, server.port, TlsOptions(root_cert=pki.ca))
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_tls_settings_refuse_half_configurations(digits_bundle: Path, pki: Pki) -> None:
    with pytest.raises(ConfigError, match="together"):
        ServerSettings(bundle_dir=digits_bundle, tls_cert=pki.server_cert)
    with pytest.raises(ConfigError, match="mTLS needs server TLS"):
        ServerSettings(bundle_dir=digits_bundle, tls_client_ca=pki.ca)
    with pytest.raises(ConfigError, match="together"):
        TlsOptions(root_cert=pki.ca, client_cert=pki.client_cert)
