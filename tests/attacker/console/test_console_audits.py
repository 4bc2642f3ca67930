"""The console's audits pages over real HTTP against a real cem-audit: start an audit through the form and follow it
to its verdict, cancel one, and every refused form (CSRF, origin, bad numbers) changes nothing."""

from __future__ import annotations

import io
import re
from urllib.parse import urlsplit

import httpx
import pytest
from console_helpers import console_client, csrf_token
from PIL import Image
from polling import wait_for
from service_helpers import (
    CAPTURED_SAMPLES,
    SUCCEEDED_AUDIT_MIN_STEPS,
    SUCCEEDED_AUDIT_NETWORK,
    AuditService,
    wait_status,
)

from attacker.attack_names import ATTACKS
from attacker.attacks.evaluate import GRID_SAMPLES
from attacker.service.console.pages import audits as audits_page
from attacker.service.console.verdict import RULE

pytestmark = pytest.mark.e2e  # audits run by the worker of a real cem-audit

FINAL = {"succeeded", "failed", "cancelled", "interrupted"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY_FORM = {"bundle": "digits-tiny", "attack": "decoder", "epochs": "1",
             "network_channels": str(SUCCEEDED_AUDIT_NETWORK["channels"]),
             "network_blocks": str(SUCCEEDED_AUDIT_NETWORK["blocks"]), "min_steps": "", "optimize_steps": "",
             "seed": "7",
             "use_captures": "on"}
LONG_FORM = {**TINY_FORM, "epochs": "500", "use_captures": ""}  # runs for minutes unless cancelled
LEAST_STEPS_ROW = '<tr><th scope="row">Least decoder steps</th><td class="text">'


def _token(console: httpx.Client) -> str:
    return csrf_token(console.get("/console/audits").text)


def _audit_count(service: AuditService) -> int:
    with service.client() as api:
        return len(api.get("/v1/audits", params={"limit": 1000}).json()["audits"])


def _alert(page: str) -> str:
    match = re.search(r'<p class="error" role="alert">(.*?)</p>', page, re.DOTALL)
    assert match is not None, page
    return match.group(1)


def _submit(console: httpx.Client, form: dict[str, str]) -> str:
    response = console.post("/console/audits", data={**form, "csrf_token": _token(console)})
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert re.fullmatch(r"/console/audits/[0-9a-f]{32}", location)
    return location.rsplit("/", 1)[-1]


def test_grid_samples_matches_the_attack_code() -> None:
    assert audits_page.GRID_SAMPLES == GRID_SAMPLES


def test_start_form_lists_bundles_attacks_and_defaults(console: httpx.Client) -> None:
    page = console.get("/console/audits")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert '<form id="start-audit" method="post" action="/console/audits"' in html
    assert re.search(r'<select id="start-bundle" name="bundle" required>\s*<option value="digits-tiny">', html)
    assert "not-a-bundle" not in html  # a folder that is no bundle is not offered
    assert re.findall(r'<option value="([^"]*)"(?: selected)?>[^<]*</option>', html.split('id="start-attack"')[1]
                      .split("</select>")[0]) == list(ATTACKS)
    for name in ("epochs", "network_channels", "network_blocks", "min_steps", "optimize_steps"):
        assert re.search(rf'<input id="start-{name}" name="{name}" type="number"[^>]*placeholder="default">', html)
    assert re.search(r'name="seed" type="number"[^>]*value="0"', html)
    assert re.search(r'<input id="start-use-captures" name="use_captures" type="checkbox" value="on" checked>', html)
    assert '<form id="compare-form" method="get" action="/console/compare"' in html and "Compare selected" in html
    assert page.headers["content-security-policy"].startswith("default-src 'none'")


@pytest.mark.slow  # a real one-epoch audit: about 30 s on a busy 2-core machine
def test_start_an_audit_through_the_form_and_follow_it_to_its_verdict(service: AuditService,
                                                                      console: httpx.Client) -> None:
    audit_id = _submit(console, TINY_FORM)
    with service.client() as api:
        stored = api.get(f"/v1/audits/{audit_id}").json()
    assert (stored["epochs"], stored["network_channels"], stored["network_blocks"], stored["seed"]) == (1, 8, 1, 7)
    assert stored["optimize_steps"] is None and stored["use_captures"] is True and stored["attack"] == "decoder"

    first = console.get(f"/console/audits/{audit_id}").text
    state = console.get(f"/console/audits/{audit_id}/status").json()
    if state["status"] not in FINAL:  # while it runs: the element console.js follows, and a cancel form
        assert f'data-poll="/console/audits/{audit_id}/status"' in first and "data-reload-when-done" in first
        assert f'action="/console/audits/{audit_id}/cancel"' in first
    row = console.get("/console/audits").text
    assert f'<tr data-audit-id="{audit_id}">' in row
    assert f'<input type="checkbox" name="ids" value="{audit_id}" form="compare-form"' in row

    def finished() -> dict | None:
        response = console.get(f"/console/audits/{audit_id}/status")
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        body = response.json()
        assert set(body) == {"id", "status", "progress", "message"} and body["id"] == audit_id
        assert 0 <= body["progress"] <= 1
        return body if body["status"] in FINAL else None

    final = wait_for(finished, 300, "the console's status of the audit to be final", interval_s=0.3)
    assert final["status"] == "succeeded", service.log()[-3000:]
    with service.client() as api:
        audit = api.get(f"/v1/audits/{audit_id}").json()
    page = console.get(f"/console/audits/{audit_id}")
    assert page.status_code == 200
    html = page.text
    assert "data-poll" not in html and f'action="/console/audits/{audit_id}/cancel"' not in html
    assert f'{LEAST_STEPS_ROW}default (0)</td></tr>' in html  # left empty: the decoder's own, as the audit used
    # the verdict leads the results, with its rule and the numbers it used
    match = re.search(r'<section id="verdict" class="verdict (leaks|partial|protected)"', html)
    assert match is not None
    assert html.index('id="verdict"') < html.index('id="strongest"') < html.index('id="metrics"')
    assert RULE.replace("<", "&lt;") in html
    infer = audit["metrics"]["infer"]
    evidence = html[html.index('<table class="evidence">'):html.index("</table>", html.index('class="evidence"'))]
    assert f"<td>{infer['mse']:.4g}</td><td>{infer['psnr']:.4g}</td><td>{infer['ssim']:.4g}</td>" in evidence
    metrics_table = html[html.index('<table id="metrics">'):]
    for column in ("train", "infer", "captured"):
        values = audit["metrics"][column]
        assert f'<tr data-column="{column}">' in metrics_table
        assert f"<td>{values['n']}</td><td>{values['mse']:.4g}</td><td>{values['psnr']:.4g}</td>" in metrics_table
    assert f"{100 * infer['attack_accuracy']:.1f} %" in metrics_table  # attack accuracy next to its ceiling
    assert '<div class="zoom" data-target="gallery" hidden>' in html
    for scale in ("0", "1", "2", "4"):
        assert f'<button type="button" data-scale="{scale}"' in html
    image = re.search(r'<div id="gallery" class="gallery">\s*<figure>\s*<img src="([^"]+)" alt="([^"]+)">', html)
    assert image is not None and image.group(1) == f"/console/audits/{audit_id}/reconstructions.png"
    alt = image.group(2)
    assert "top row the original images, bottom row their reconstructions" in alt
    assert f"the first {GRID_SAMPLES} of the {CAPTURED_SAMPLES} captured samples reconstructed" in alt
    png = console.get(image.group(1))
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(PNG_SIGNATURE)
    with service.client() as api:
        assert png.content == api.get(f"/v1/audits/{audit_id}/reconstructions.png").content
    Image.open(io.BytesIO(png.content)).verify()

    report = console.get(f"/console/audits/{audit_id}/report")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert "data:image/png;base64," in report.text and "<h1>Model inversion audit</h1>" in report.text
    policy = report.headers["content-security-policy"]
    assert "script-src" not in policy and "'unsafe-inline'" not in policy and "style-src 'sha256-" in policy

    finished_cancel = console.post(f"/console/audits/{audit_id}/cancel", data={"csrf_token": _token(console)})
    assert finished_cancel.status_code == 409
    assert _alert(finished_cancel.text) == "audit already finished: nothing to cancel"

    listed = console.get("/console/audits", params={"status": "succeeded"}).text
    row_html = listed[listed.index(f'<tr data-audit-id="{audit_id}">'):]
    row_html = row_html[:row_html.index("</tr>")]
    assert f"<td>{infer['mse']:.4g}</td>" in row_html and f'level-{match.group(1)}' in row_html
    assert f'href="/console/audits/{audit_id}"' in row_html and "Cancel" not in row_html


def test_cancel_through_the_form_after_forged_cancels_were_refused(service: AuditService,
                                                                   console: httpx.Client) -> None:
    audit_id = _submit(console, LONG_FORM)
    token = _token(console)
    other_origin = f"http://{urlsplit(service.url).hostname}:{urlsplit(service.url).port + 1}"
    for data, headers in (({}, {}), ({"csrf_token": "0" * 64}, {}), ({"csrf_token": token}, {"Origin": other_origin})):
        refused = console.post(f"/console/audits/{audit_id}/cancel", data=data, headers=headers)
        assert refused.status_code == 403 and "Form refused" in refused.text
    with service.client() as api:
        audit = api.get(f"/v1/audits/{audit_id}").json()
    assert audit["status"] in ("queued", "running") and audit["cancel_requested"] is False  # nothing changed

    cancelled = console.post(f"/console/audits/{audit_id}/cancel", data={"csrf_token": token},
                             headers={"Origin": service.url})
    assert cancelled.status_code == 303 and cancelled.headers["location"] == f"/console/audits/{audit_id}"
    with service.client() as api:
        audit = wait_status(api, audit_id, FINAL, timeout_s=120)
    assert audit["status"] == "cancelled"
    page = console.get(f"/console/audits/{audit_id}").text
    assert "This audit was cancelled" in page and 'id="verdict"' not in page and "data-poll" not in page
    again = console.post(f"/console/audits/{audit_id}/cancel", data={"csrf_token": token})
    assert again.status_code == 303  # as the API's DELETE: cancelling a cancelled audit is no error
    early = console.get(f"/console/audits/{audit_id}/reconstructions.png")
    assert early.status_code == 409 and early.headers["content-type"].startswith("text/html")


def test_start_forms_without_the_right_token_or_origin_are_refused(service: AuditService,
                                                                    console: httpx.Client) -> None:
    before = _audit_count(service)
    token = _token(console)
    other_origin = f"http://{urlsplit(service.url).hostname}:{urlsplit(service.url).port + 1}"
    for data, headers in ((TINY_FORM, {}), ({**TINY_FORM, "csrf_token": token[::-1]}, {}),
                          ({**TINY_FORM, "csrf_token": token}, {"Origin": other_origin}),
                          ({**TINY_FORM, "csrf_token": token}, {"Referer": other_origin + "/console/audits"})):
        refused = console.post("/console/audits", data=data, headers=headers)
        assert refused.status_code == 403, refused.text
        assert "Nothing was changed" in refused.text
    other = console_client(service)  # another session: this session's token does not fit it
    try:
        assert other.post("/console/audits", data={**TINY_FORM, "csrf_token": token}).status_code == 403
    finally:
        other.close()
    assert _audit_count(service) == before


@pytest.mark.parametrize(("changes", "field", "reason"), [
    ({"epochs": "abc"}, "epochs", "expected a whole number, got &#39;abc&#39;"),
    ({"seed": "1.5"}, "seed", "expected a whole number"),
    ({"network_blocks": "-1"}, "network_blocks", "greater than or equal to 0"),
    ({"min_steps": "-1"}, "min_steps", "greater than or equal to 0"),
    ({"attack": "optimize", "epochs": "", "network_channels": "", "network_blocks": "", "min_steps": "100"},
     "min_steps", "the optimize attack has no decoding network"),
    ({"epochs": "100000"}, "epochs", "less than or equal to 1000"),
    ({"optimize_steps": "5"}, "optimize_steps", "the decoder attack does not optimise per image"),
    ({"attack": "optimize", "optimize_steps": "5"}, "epochs", "the optimize attack has no epochs"),
    ({"attack": "telepathy"}, "attack", "Input should be"),
])
def test_bad_input_is_a_422_page_naming_the_field(service: AuditService, console: httpx.Client,
                                                  changes: dict[str, str], field: str, reason: str) -> None:
    before = _audit_count(service)
    response = console.post("/console/audits", data={**TINY_FORM, **changes, "csrf_token": _token(console)})
    assert response.status_code == 422 and response.headers["content-type"].startswith("text/html")
    alert = _alert(response.text)
    assert alert.startswith(f"{field}: ") and reason in alert
    assert _audit_count(service) == before


def test_unknown_bundle_audit_and_status_are_404_pages(service: AuditService, console: httpx.Client) -> None:
    before = _audit_count(service)
    missing = console.post("/console/audits", data={**TINY_FORM, "bundle": "no-such", "csrf_token": _token(console)})
    assert missing.status_code == 404 and _alert(missing.text) == "bundle not found"
    assert _audit_count(service) == before
    for suffix in ("", "/status", "/reconstructions.png", "/report"):
        response = console.get(f"/console/audits/{'0' * 32}{suffix}")
        assert response.status_code == 404 and response.headers["content-type"].startswith("text/html")
        assert _alert(response.text) == "audit not found"
    unknown = console.post(f"/console/audits/{'0' * 32}/cancel", data={"csrf_token": _token(console)})
    assert unknown.status_code == 404


def test_the_audit_page_shows_the_least_decoder_steps_asked_for(console: httpx.Client, succeeded_audit: dict) -> None:
    html = console.get(f"/console/audits/{succeeded_audit['id']}").text
    assert f"{LEAST_STEPS_ROW}{SUCCEEDED_AUDIT_MIN_STEPS}</td></tr>" in html


def test_list_filters_by_status(console: httpx.Client, succeeded_audit: dict) -> None:
    assert succeeded_audit["status"] == "succeeded", succeeded_audit["error"]
    succeeded = console.get("/console/audits", params={"status": "succeeded"}).text
    assert f'<tr data-audit-id="{succeeded_audit["id"]}">' in succeeded
    assert all(status == "succeeded" for status in re.findall(r'<td class="text">(queued|running|succeeded|failed|'
                                                               r'cancelled|interrupted)</td>', succeeded))
    assert "data-poll" not in succeeded.split('id="audit-list"')[1]  # nothing unfinished is listed
    failed = console.get("/console/audits", params={"status": "failed"}).text
    assert f'<tr data-audit-id="{succeeded_audit["id"]}">' not in failed
    bad = console.get("/console/audits", params={"status": "exploded"})
    assert bad.status_code == 422 and _alert(bad.text).startswith("status: expected one of queued, running")


def test_pages_and_status_need_a_session(service: AuditService, succeeded_audit: dict) -> None:
    audit_id = succeeded_audit["id"]
    with httpx.Client(base_url=service.url, timeout=30) as anonymous:
        for path in (f"/console/audits/{audit_id}", f"/console/audits/{audit_id}/status",
                     f"/console/audits/{audit_id}/reconstructions.png", "/console/audits"):
            response = anonymous.get(path)
            assert response.status_code == 303 and response.headers["location"].startswith("/console/login?next=")
        assert anonymous.post("/console/audits", data=TINY_FORM).status_code == 303  # to the login, not a job


def test_the_list_narrows_to_one_bundle(console: httpx.Client, succeeded_audit: dict) -> None:
    page = console.get("/console/audits", params={"bundle": "digits-tiny"}).text
    assert f'data-audit-id="{succeeded_audit["id"]}"' in page and 'id="bundle-filter"' in page
    other = console.get("/console/audits", params={"bundle": "no-such-bundle"}).text
    assert "data-audit-id=" not in other and "of bundle no-such-bundle" in other
