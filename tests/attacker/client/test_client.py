"""``AuditClient`` and ``cem-audit-client`` against the running service."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from service_helpers import SUCCEEDED_AUDIT_MIN_STEPS, TOKEN, AuditService

from attacker.attack_names import ATTACKS, AttackName
from attacker.client import AuditClient, AuditClientError
from attacker.client.cli import describe, get_args_parser, main, run
from attacker.service.api.schemas import Health
from attacker.service.errors import DETAIL_BUNDLE_NOT_FOUND, DETAIL_UNAUTHORIZED
from attacker.service.jobs import AuditStatus


def run_cli(capsys: pytest.CaptureFixture, service: AuditService, *argv: str, token: str = TOKEN) -> tuple[int, dict]:
    code = main(["--url", service.url, "--token", token, "--json", *argv])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.e2e  # a real audit job through cem-audit and its worker
def test_client_reads_results_and_maps_errors(service: AuditService, succeeded_audit: dict) -> None:
    with AuditClient(service.url, TOKEN) as client:
        assert client.health() == Health(status="ok")
        assert [b.name for b in client.list_bundles()] == ["digits-tiny"]
        assert client.captures().samples == 12
        audit = client.wait(succeeded_audit["id"], timeout_s=5)
        assert audit.status is AuditStatus.SUCCEEDED and audit.metrics is not None and audit.metrics.train.n > 0
        assert audit.model_dump(mode="json") == succeeded_audit  # the typed view loses nothing the service sent
        assert audit.worst_case is not None and audit.worst_case.infer is not None
        assert (audit.worst_case.infer.attack, audit.worst_case.infer.mse) == ("decoder", audit.metrics.infer.mse)
        assert audit.metrics.infer.attack_accuracy is not None and audit.metrics.infer.chance_accuracy == 0.1
        text = describe(succeeded_audit)
        assert f" min steps {SUCCEEDED_AUDIT_MIN_STEPS}" in text.splitlines()[0]  # the first line: what was asked
        assert f"strongest attack (infer): decoder MSE {audit.metrics.infer.mse:.4f} (1 attack compared)" in text
        assert f"attack accuracy {audit.metrics.infer.attack_accuracy:.2f} (classifier on originals" in text
        assert audit.id in [a.id for a in client.list_audits(AuditStatus.SUCCEEDED)]
        assert client.fetch_png(audit.id).startswith(b"\x89PNG")
        assert "<h1>Model inversion audit</h1>" in client.fetch_report(audit.id)
        with pytest.raises(AuditClientError) as caught:
            client.submit("no-such-bundle")
        assert (caught.value.status_code, caught.value.detail) == (404, DETAIL_BUNDLE_NOT_FOUND)
        with pytest.raises(AuditClientError, match=r"epochs: Input should be greater than or equal to 1"):
            client.submit("digits-tiny", epochs=0)
        with pytest.raises(AuditClientError, match=r"network_channels: Input should be greater than or equal to 1"):
            client.submit("digits-tiny", network_channels=0)
        with pytest.raises(AuditClientError, match=r"network_blocks: Input should be less than or equal to 32"):
            client.submit("digits-tiny", network_blocks=33)
        with pytest.raises(AuditClientError, match=r"optimize_steps: .*the decoder attack does not optimise"):
            client.submit("digits-tiny", optimize_steps=5)
        with pytest.raises(AuditClientError, match=r"min_steps: .*the optimize attack has no decoding network"):
            client.submit("digits-tiny", attack=AttackName.OPTIMIZE, min_steps=100)
        with pytest.raises(AuditClientError, match=r"epochs: .*the optimize attack has no epochs"):
            client.submit("digits-tiny", attack=AttackName.OPTIMIZE, epochs=2, optimize_steps=5)
    with AuditClient(service.url, "wrong-token-0123456789") as client, pytest.raises(AuditClientError) as caught:
        client.list_audits()
    assert (caught.value.status_code, caught.value.detail) == (401, DETAIL_UNAUTHORIZED)
    with AuditClient("http://127.0.0.1:9", TOKEN, timeout_s=2) as client, \
            pytest.raises(AuditClientError, match="cannot reach"):
        client.health()


def test_the_client_starts_without_torch() -> None:
    """``cem-audit-client`` shares the API's models, not the attack code: no torch import on each call."""
    script = "import sys, attacker.client.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", script], timeout=120).returncode == 0


def test_submit_sends_the_optimisation_settings(capsys: pytest.CaptureFixture) -> None:
    """``AuditClient.submit`` and ``cem-audit-client submit`` put optimize_steps in the body, only when given."""
    sent: list[dict] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(202, json={"id": "a1", "status": "queued"})

    parser = get_args_parser()
    with AuditClient("http://audit.invalid", TOKEN, transport=httpx.MockTransport(answer)) as client:
        client.submit("b", attack=AttackName.OPTIMIZE, optimize_steps=7)
        client.submit("b", attack=AttackName.HYBRID, epochs=2)
        result, code = run(parser.parse_args(["submit", "--bundle", "b", "--attack", "decoder+optimize",
                                              "--optimize-steps", "9"]), client)
    assert (result, code) == ({"id": "a1", "status": "queued"}, 0)
    assert sent[0] == {"bundle": "b", "attack": "optimize", "use_captures": True, "seed": 0, "optimize_steps": 7}
    assert "optimize_steps" not in sent[1] and sent[1]["epochs"] == 2
    assert (sent[2]["attack"], sent[2]["optimize_steps"]) == ("decoder+optimize", 9)
    for name in ATTACKS:
        assert parser.parse_args(["submit", "--bundle", "b", "--attack", name]).attack == name
    with pytest.raises(SystemExit):
        parser.parse_args(["submit", "--bundle", "b", "--attack", "fgsm"])
    assert f"{{{','.join(ATTACKS)}}}" in capsys.readouterr().err  # the choices, as argparse lists them


def test_describe_an_optimisation_audit() -> None:
    run_ = {"epochs": 20, "best_epoch": 20, "still_improving": False, "doubling_gain": None, "attack_s": 1.25,
            "eval_s": 3.5, "optimize": {"tv_weight": 0.3, "steps_per_image": 20},
            "decoder_alone": {"mse": 0.05, "psnr": 13.0, "ssim": 0.3, "still_improving": False}}
    audit = {"id": "a", "status": "succeeded", "progress": 1.0, "bundle": "b", "attack": "decoder+optimize",
             "optimize_steps": 20, "metrics": {"train": {"mse": 0.04, "psnr": 14.0, "ssim": 0.4, "n": 3}},
             "training": {"train": run_}}
    text = describe(audit)  # a result older than worst_case and attack accuracy
    assert "attack decoder+optimize optimize steps 20" in text
    assert ("train: attack optimised 20 steps per image, τ 0.3, refinement: decoder alone MSE 0.0500 → 0.0400, "
            "attack 1.2 s, evaluation 3.5 s") in text
    assert "strongest" not in text and "accuracy" not in text
    identity = {"attack_accuracy": 0.7, "classifier_accuracy": 0.97, "chance_accuracy": 0.1}
    audit["metrics"]["train"].update(identity)
    audit["training"]["train"]["decoder_alone"]["attack_accuracy"] = 0.55
    audit["worst_case"] = {"train": {"attack": "decoder+optimize", "mse": 0.04, "attacks": 2}, "infer": None}
    lines = describe(audit).splitlines()
    assert lines[1:3] == [  # right after the header: the worst case leads
        "  strongest attack (train): decoder+optimize MSE 0.0400 (2 attacks compared)",
        ("  compared decoder+optimize with its decoder alone: the worst case over attacks needs audits with the "
         "others too (gan, optimize)"),
    ]
    assert ("train: MSE 0.0400  PSNR 14.00 dB  SSIM 0.400  (n=3)  attack accuracy 0.70 (classifier on originals "
            "0.97, chance 0.10)") in lines[3]
    assert "refinement: decoder alone MSE 0.0500 → 0.0400, attack accuracy 0.55 → 0.70, attack 1.2 s" in lines[4]
    audit["attack"], audit["worst_case"]["train"]["attacks"] = "decoder", 1
    assert ("only one attack was run: the worst case over attacks needs audits with the others too (gan, optimize, "
            "decoder+optimize)") in describe(audit)


def test_answers_that_do_not_fit_their_model_are_client_errors() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"status": "dead"}))
    message = r"GET /healthz: expected a Health body, got status: Input should be 'ok'"
    with AuditClient("http://audit.invalid", TOKEN, transport=transport) as client, \
            pytest.raises(AuditClientError, match=message):
        client.health()


@pytest.mark.e2e  # a real audit job through cem-audit and its worker
def test_cli_status_downloads_and_errors(service: AuditService, succeeded_audit: dict, tmp_path: Path, capsys) -> None:
    audit_id = succeeded_audit["id"]
    code, result = run_cli(capsys, service, "status", audit_id)
    assert code == 0 and json.dumps(result) == json.dumps(succeeded_audit)  # the service's JSON, key order included
    code, result = run_cli(capsys, service, "wait", audit_id, "--png", str(tmp_path / "g.png"),
                           "--report", str(tmp_path / "r.html"))
    assert code == 0 and result["status"] == "succeeded"
    assert (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG") and "<img" in (tmp_path / "r.html").read_text()
    code, result = run_cli(capsys, service, "list", "--status", "succeeded")
    assert code == 0 and audit_id in [a["id"] for a in result["audits"]]
    code, result = run_cli(capsys, service, "submit", "--bundle", "nope")
    assert code == 2 and result["status_code"] == 404
    for option, field, value in (("--network-channels", "network_channels", "999"),
                                 ("--network-blocks", "network_blocks", "999"), ("--min-steps", "min_steps", "-1")):
        code, result = run_cli(capsys, service, "submit", "--bundle", "digits-tiny", option, value)
        assert code == 2 and result["status_code"] == 422 and field in result["error"]  # sent, and refused
    for argv, field in ((("--attack", "optimize", "--epochs", "2"), "epochs"),
                        (("--attack", "gan", "--optimize-steps", "5"), "optimize_steps"),
                        (("--attack", "optimize", "--optimize-steps", "0"), "optimize_steps")):
        code, result = run_cli(capsys, service, "submit", "--bundle", "digits-tiny", *argv)
        assert code == 2 and result["status_code"] == 422 and f"{field}: " in result["error"]
    code, result = run_cli(capsys, service, "bundles", token="wrong-token-0123456789")
    assert code == 2 and result["status_code"] == 401
