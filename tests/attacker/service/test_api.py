"""The REST surface over real HTTP: authentication, validation, catalog routes, the OpenAPI schema."""

from __future__ import annotations

import socket

import pytest
from openapi_spec_validator import validate
from service_helpers import TOKEN, AuditService

from attacker.attack_names import ATTACKS
from attacker.attacks import DecoderAttackConfig, OptimizeAttackConfig
from attacker.service.api.schemas import MIN_STEPS_DEFAULT, OPTIMIZE_STEPS_DEFAULT, AuditCreate
from attacker.service.errors import (
    DETAIL_AUDIT_NOT_FOUND,
    DETAIL_BUNDLE_NOT_FOUND,
    DETAIL_UNAUTHORIZED,
)

PROTECTED = [
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/v1/bundles"),
    ("GET", "/v1/captures"),
    ("GET", "/v1/audits"),
    ("POST", "/v1/audits"),
    ("GET", "/v1/audits/0123"),
    ("DELETE", "/v1/audits/0123"),
    ("GET", "/v1/audits/0123/reconstructions.png"),
    ("GET", "/v1/audits/0123/report"),
    ("GET", "/metrics"),  # Prometheus text; not in the OpenAPI schema
]


@pytest.mark.parametrize("authorization", [None, f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", TOKEN])
def test_every_route_but_health_needs_the_token(service: AuditService, authorization: str | None) -> None:
    with service.client(token=None) as http:
        headers = {"Authorization": authorization} if authorization else {}
        for method, path in PROTECTED:
            response = http.request(method, path, headers=headers, json={"bundle": "digits-tiny"})
            assert response.status_code == 401, (method, path)
            assert response.json() == {"detail": DETAIL_UNAUTHORIZED}
            assert response.headers["www-authenticate"] == "Bearer"
        assert http.get("/healthz", headers=headers).json() == {"status": "ok"}


def test_every_documented_route_is_covered(service: AuditService) -> None:
    with service.client() as http:
        schema = http.get("/openapi.json").json()
    documented = {(m.upper(), p) for p, item in schema["paths"].items() for m in item}
    covered = {(m, p.replace("0123", "{audit_id}")) for m, p in PROTECTED} | {("GET", "/healthz")}
    assert documented <= covered


def test_openapi_schema_is_valid(service: AuditService) -> None:
    with service.client() as http:
        schema = http.get("/openapi.json").json()
    validate(schema)  # raises on any violation of the OpenAPI 3.x specification
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    components = schema["components"]["schemas"]
    create = components["AuditCreate"]
    assert create["required"] == ["bundle"] and create["properties"]["attack"]["default"] == "decoder"
    assert create["properties"]["attack"]["$ref"] == "#/components/schemas/AttackName"
    assert components["AttackName"]["enum"] == list(ATTACKS) == ["decoder", "gan", "optimize", "decoder+optimize"]
    assert all(attack in create["properties"]["attack"]["description"] for attack in ATTACKS)
    for field, bounds in (("network_channels", (1, 512)), ("network_blocks", (0, 32)), ("optimize_steps", (1, 100000)),
                          ("min_steps", (0, 100000))):
        [as_int] = [t for t in create["properties"][field]["anyOf"] if t.get("type") == "integer"]
        assert (as_int["minimum"], as_int["maximum"]) == bounds
        assert field in components["AuditView"]["properties"]
    for field in ("network_channels", "network_blocks"):
        assert "the paper's decoding network" in create["properties"][field]["description"]
    assert f"default: {OptimizeAttackConfig().steps}" in create["properties"]["optimize_steps"]["description"]
    assert OptimizeAttackConfig().steps == OPTIMIZE_STEPS_DEFAULT  # the schema cannot import it (torch)
    assert f"default: {DecoderAttackConfig().min_steps}, the epochs" in create["properties"]["min_steps"]["description"]
    assert DecoderAttackConfig().min_steps == MIN_STEPS_DEFAULT  # nor this one
    training = components["AttackTraining"]["properties"]
    assert "optimisation steps" in training["epochs"]["description"]
    assert {"attack_s", "eval_s", "optimize", "decoder_alone"} <= set(training)
    assert components["AuditView"]["properties"]["status"]["$ref"] == "#/components/schemas/AuditStatus"
    assert components["AuditStatus"]["enum"] == ["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
    assert "202" in schema["paths"]["/v1/audits"]["post"]["responses"]


def test_ready_bundles_and_captures(service: AuditService) -> None:
    with service.client() as http:
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["workers"] == 1
        [bundle] = http.get("/v1/bundles").json()["bundles"]
        assert (bundle["name"], bundle["dataset"], bundle["feature_shape"]) == ("digits-tiny", "digits", [8, 8, 8])
        captures = http.get("/v1/captures").json()
    assert (captures["requests"], captures["samples"]) == (3, 12)
    [model] = captures["models"]
    assert model["model_id"] == bundle["model_id"] and model["samples_with_ids"] == 12
    assert model["sample_shapes"] == [[8, 8, 8]] and model["dtypes"] == ["float32"]
    assert captures["first_at"] <= captures["last_at"]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({}, "bundle", "Field required"),
        ({"bundle": ""}, "bundle", "at least 1 character"),
        ({"bundle": "digits-tiny", "attack": "fgsm"}, "attack",
         "Input should be 'decoder', 'gan', 'optimize' or 'decoder+optimize'"),
        ({"bundle": "digits-tiny", "epochs": 0}, "epochs", "greater than or equal to 1"),
        ({"bundle": "digits-tiny", "epochs": "3"}, "epochs", "Input should be a valid integer"),
        ({"bundle": "digits-tiny", "dataset": "mnist"}, "dataset", "expected one of cifar10"),
        ({"bundle": "digits-tiny", "use_captures": "yes"}, "use_captures", "Input should be a valid boolean"),
        ({"bundle": "digits-tiny", "epoch": 3}, "epoch", "Extra inputs are not permitted"),
        ({"bundle": "digits-tiny", "network_channels": 0}, "network_channels", "greater than or equal to 1"),
        ({"bundle": "digits-tiny", "network_channels": 513}, "network_channels", "less than or equal to 512"),
        ({"bundle": "digits-tiny", "network_channels": "64"}, "network_channels", "Input should be a valid integer"),
        ({"bundle": "digits-tiny", "network_channels": 8.0}, "network_channels", "Input should be a valid integer"),
        ({"bundle": "digits-tiny", "network_channels": True}, "network_channels", "Input should be a valid integer"),
        ({"bundle": "digits-tiny", "network_blocks": -1}, "network_blocks", "greater than or equal to 0"),
        ({"bundle": "digits-tiny", "network_blocks": 33}, "network_blocks", "less than or equal to 32"),
        ({"bundle": "digits-tiny", "network_blocks": 1.5}, "network_blocks", "Input should be a valid integer"),
        ({"bundle": "digits-tiny", "network_blocks": [8]}, "network_blocks", "Input should be a valid integer"),
        ({"bundle": "digits-tiny", "network_width": 8}, "network_width", "Extra inputs are not permitted"),
        ({"bundle": "digits-tiny", "attack": "optimize", "optimize_steps": 0}, "optimize_steps",
         "greater than or equal to 1"),
        ({"bundle": "digits-tiny", "attack": "optimize", "optimize_steps": 100001}, "optimize_steps",
         "less than or equal to 100000"),
        ({"bundle": "digits-tiny", "attack": "optimize", "optimize_steps": "5"}, "optimize_steps",
         "Input should be a valid integer"),
        # settings the chosen attack would silently ignore are refused, naming the field
        ({"bundle": "digits-tiny", "attack": "optimize", "epochs": 3}, "epochs", "the optimize attack has no epochs"),
        ({"bundle": "digits-tiny", "attack": "optimize", "optimize_steps": 5, "epochs": 1}, "epochs",
         "its budget is optimize_steps"),
        ({"bundle": "digits-tiny", "optimize_steps": 5}, "optimize_steps",
         "the decoder attack does not optimise per image"),
        ({"bundle": "digits-tiny", "attack": "decoder", "optimize_steps": 5}, "optimize_steps",
         "applies to optimize and decoder+optimize only"),
        ({"bundle": "digits-tiny", "attack": "gan", "epochs": 2, "optimize_steps": 5}, "optimize_steps",
         "the gan attack does not optimise per image"),
        ({"bundle": "digits-tiny", "attack": "optimize", "network_channels": 8}, "network_channels",
         "the optimize attack has no decoding network"),
        ({"bundle": "digits-tiny", "attack": "optimize", "network_blocks": 0}, "network_blocks",
         "the optimize attack has no decoding network"),
        ({"bundle": "digits-tiny", "min_steps": -1}, "min_steps", "greater than or equal to 0"),
        ({"bundle": "digits-tiny", "min_steps": 100001}, "min_steps", "less than or equal to 100000"),
        ({"bundle": "digits-tiny", "min_steps": "5600"}, "min_steps", "Input should be a valid integer"),
        ({"bundle": "digits-tiny", "attack": "optimize", "min_steps": 0}, "min_steps",
         "the optimize attack has no decoding network to size or train"),
    ],
)
def test_bad_bodies_get_422_naming_the_field(service: AuditService, body: dict, field: str, message: str) -> None:
    with service.client() as http:
        response = http.post("/v1/audits", json=body)
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert any(e["loc"] == ["body", field] and message in e["msg"] for e in errors), errors


@pytest.mark.parametrize(
    "body",
    [
        {"attack": "optimize", "optimize_steps": 5},
        {"attack": "optimize"},
        {"attack": "decoder+optimize", "epochs": 1, "optimize_steps": 5, "network_channels": 8, "network_blocks": 0,
         "min_steps": 100},
        {"attack": "gan", "epochs": 3, "network_channels": 8, "min_steps": 100},
        {"min_steps": 0},  # the decoder (default attack), its minimum written out
    ],
)
def test_each_attack_takes_its_own_settings(body: dict) -> None:
    """The other side of the 422s above: the settings an attack does use are accepted (the hybrid takes all)."""
    created = AuditCreate.model_validate({"bundle": "digits-tiny", **body})
    assert created.model_dump(exclude_defaults=True) == {"bundle": "digits-tiny", **body}


def test_malformed_json_is_422(service: AuditService) -> None:
    with service.client() as http:
        response = http.post("/v1/audits", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert "JSON decode error" in response.json()["detail"][0]["msg"]


def test_unknown_bundle_and_audit_are_404(service: AuditService) -> None:
    with service.client() as http:
        for name in ("no-such-bundle", "not-a-bundle", "../digits-tiny", "0" * 16):
            response = http.post("/v1/audits", json={"bundle": name})
            assert (response.status_code, response.json()) == (404, {"detail": DETAIL_BUNDLE_NOT_FOUND})
        for method, suffix in (("GET", ""), ("DELETE", ""), ("GET", "/reconstructions.png"), ("GET", "/report")):
            response = http.request(method, f"/v1/audits/feedface{suffix}")
            assert (response.status_code, response.json()) == (404, {"detail": DETAIL_AUDIT_NOT_FOUND})
        assert http.get("/v1/audits", params={"status": "exploded"}).status_code == 422


def test_unauthenticated_garbage_is_401_before_the_body_is_read(service: AuditService) -> None:
    """Issue 10 item 6: unparseable JSON without a token got 422 (the body was parsed first)."""
    with service.client(token=None) as http:
        response = http.post("/v1/audits", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 401 and response.json() == {"detail": DETAIL_UNAUTHORIZED}


def test_oversized_and_chunked_bodies_are_refused_unread(service: AuditService) -> None:
    """Issue 10 item 6: a 200 MB POST was read whole (12 s, ~610 MB RSS) before the token was checked."""
    declared_only = (b"POST /v1/audits HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 209715200\r\n\r\n")
    host, port = service.url.removeprefix("http://").rsplit(":", 1)
    for token in (None, TOKEN):  # with or without a token the body is never read
        auth = b"" if token is None else f"Authorization: Bearer {token}\r\n".encode()
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall(declared_only.replace(b"Host: x\r\n", b"Host: x\r\n" + auth))  # sends no body at all
            status_line = raw.recv(4096).split(b"\r\n", 1)[0]
        assert status_line.split()[1] == (b"401" if token is None else b"413"), status_line
    with service.client() as http:
        chunked = http.post("/v1/audits", content=iter([b'{"bundle": ', b'"digits-tiny"}']),
                            headers={"Content-Type": "application/json"})
        assert chunked.status_code == 411
        assert http.post("/v1/audits", content=b"x" * (64 * 1024 + 1)).status_code == 413
        assert http.get("/v1/bundles", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
