"""The console in a real headless Chromium against a real cem-audit: log in, start an audit and watch its
progress move without a reload, compare two audits, see the images load, and a cross-site form refused."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from browser import start_browser
from polling import wait_for
from service_helpers import SUCCEEDED_AUDIT_NETWORK, TOKEN, AuditService

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WATCHED_EPOCHS = 4  # long enough (a few seconds) for the page to show the progress between 0 and 1


@pytest.fixture()
def browser() -> Iterator[Any]:
    session = start_browser()
    try:
        yield session
    finally:
        session.quit()


def _log_in(browser: Any, service: AuditService, page: str = "/console/audits") -> None:
    from selenium.webdriver.common.by import By

    browser.get(service.url + page)
    assert "/console/login" in browser.current_url
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait_for(lambda: browser.current_url.endswith(page) or None, 30, f"the browser to land on {page}")


def _images_loaded(browser: Any, selector: str) -> bool:
    return bool(browser.execute_script(
        "const images = [...document.querySelectorAll(arguments[0])];"
        "return images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0);", selector))


def test_page_without_session_redirects_to_login(browser: Any, service: AuditService) -> None:
    browser.get(service.url + "/console/models")
    assert "/console/login?next=%2Fconsole%2Fmodels" in browser.current_url
    assert browser.title.startswith("Log in")


def test_start_watch_and_compare_audits(browser: Any, service: AuditService, succeeded_audit: dict) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _log_in(browser, service)
    form = browser.find_element(By.ID, "start-audit")
    Select(form.find_element(By.NAME, "bundle")).select_by_value("digits-tiny")
    Select(form.find_element(By.NAME, "attack")).select_by_value("decoder")
    for name, value in (("epochs", WATCHED_EPOCHS), ("network_channels", SUCCEEDED_AUDIT_NETWORK["channels"]),
                        ("network_blocks", SUCCEEDED_AUDIT_NETWORK["blocks"]), ("seed", 5)):
        field = form.find_element(By.NAME, name)
        field.clear()
        field.send_keys(str(value))
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(lambda: "/console/audits/" in browser.current_url or None, 30, "the audit page")
    audit_id = browser.current_url.rstrip("/").rsplit("/", 1)[-1]

    # The page is marked once; the script updates it in place, so the mark survives until the final reload.
    browser.execute_script("window.__notReloaded = true;")
    seen: list[tuple[str, float]] = []

    def progress_moved() -> bool | None:
        reloaded = not browser.execute_script("return window.__notReloaded === true;")
        assert not reloaded, f"the page reloaded before it showed progress between 0 and 1 (seen: {seen})"
        state = browser.execute_script(
            "const e = document.querySelector('[data-poll]');"
            "return e ? [e.dataset.status || '', e.querySelector('progress').value] : null;")
        if state:
            seen.append((state[0], float(state[1])))
        return True if any(0 < value < 1 and status == "running" for status, value in seen) else None

    wait_for(progress_moved, 180, "the audit page to show progress between 0 and 1 without a reload")
    wait_for(lambda: browser.find_elements(By.ID, "verdict") or None, 300, "the audit to finish and its page to reload")
    assert browser.find_element(By.ID, "metrics").is_displayed()
    wait_for(lambda: _images_loaded(browser, "#gallery img") or None, 30, "the gallery images to load")

    browser.get(service.url + "/console/audits")
    for ident in (succeeded_audit["id"], audit_id):
        browser.find_element(By.CSS_SELECTOR, f"input[name=ids][value='{ident}']").click()
    browser.find_element(By.CSS_SELECTOR, "#compare-form button[type=submit]").click()
    wait_for(lambda: browser.find_elements(By.ID, "comparison") or None, 30, "the comparison page")
    table = browser.find_element(By.ID, "comparison").text
    assert "digits-tiny" in table
    wait_for(lambda: _images_loaded(browser, ".pair img") or None, 30, "the paired galleries to load")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".pair img")) == 2


class _ForgedFormPage(http.server.BaseHTTPRequestHandler):
    """Another origin (same host, another port): a page whose form posts to the console on load."""

    target = ""

    def do_GET(self) -> None:
        body = (
            "<!doctype html><html><body><form id=f method=post action='" + self.target + "'>"
            "<input name=bundle value=digits-tiny><input name=attack value=decoder><input name=epochs value=1>"
            "</form><script>document.getElementById('f').submit()</script></body></html>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_cross_site_form_post_is_refused(browser: Any, service: AuditService) -> None:
    from selenium.webdriver.common.by import By

    _log_in(browser, service)
    with service.client() as api:
        before = {a["id"] for a in api.get("/v1/audits", params={"limit": 1000}).json()["audits"]}
    handler = type("Forged", (_ForgedFormPage,), {"target": service.url + "/console/audits"})
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{evil.server_address[1]}/")
        wait_for(lambda: browser.current_url.startswith(service.url) or None, 30, "the forged form to be posted")
        wait_for(lambda: "Form refused" in browser.find_element(By.TAG_NAME, "body").text or None, 30,
                 "the console to refuse the forged form")
    finally:
        evil.shutdown()
        evil.server_close()
    with service.client() as api:
        assert {a["id"] for a in api.get("/v1/audits", params={"limit": 1000}).json()["audits"]} == before
