"""Screenshots of the audit console's main pages for docs/console/, taken in a real headless Chromium.

    .venv/bin/python scripts/console_screenshots.py --demo-out demo-out [--experiments runs/experiments] \
        [--out docs/console]

It serves what a finished ``make demo`` left in ``--demo-out`` (bundles, captures and
the audit database with its audits) with a fresh ``cem-audit`` on a free loopback
port, logs in through the form like a user, and saves full-page PNGs of the login,
audits, one audit, the comparison of the σ-only and σ+CEM audits, the models, the
captures and, with ``--experiments``, the experiments list and the first report; the audits page is
taken again at phone width. Run ``make demo`` first (``cem-demo --out DIR`` for
another folder). Needs Debian's chromium and chromedriver (``make browser``) and
selenium (the test extra).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from cem.processes import ServiceProcess

DESKTOP = (1440, 900)
PHONE = (390, 844)


def start_audit_service(demo_out: Path, experiments: Path | None, state: Path, token: str) -> ServiceProcess:
    """``cem-audit`` on a copy of the demo's database (screenshots never change the demo's folder)."""
    shutil.copy2(demo_out / "audit.db", state / "audit.db")
    argv = [sys.executable, "-m", "attacker.service.cli", "--host", "127.0.0.1", "--port", "0",
            "--bundles", str(demo_out / "bundles"), "--captures", str(demo_out / "captures"),
            "--db", str(state / "audit.db"), "--device", "cpu"]
    if experiments is not None:
        argv += ["--experiments", str(experiments)]
    return ServiceProcess.start(argv, log_path=state / "audit.log", name="cem-audit",
                                env={**os.environ, "CEM_AUDIT_TOKEN": token}, new_session=True)


def open_browser(width: int, height: int) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=shutil.which("chromedriver")))


def save_full_page(browser: webdriver.Chrome, url: str, path: Path, width: int) -> None:
    """Load ``url`` at ``width``, wait for its images, and save the whole page (the window fitted to its height)."""
    browser.set_window_size(width, 800)  # measure the page at this width, from a short window
    browser.get(url)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not browser.execute_script(
            "return [...document.images].every(i => i.complete);"):
        time.sleep(0.2)
    height = int(browser.execute_script("return document.documentElement.scrollHeight;"))
    browser.set_window_size(width, max(height, 400))
    browser.save_screenshot(str(path))
    print(f"wrote {path}")


def comparison_pair(audits: list[dict], cem_bundles: set[str]) -> list[dict]:
    """The oldest two succeeded audits of one attack on two different bundles (the demo's σ-only and σ+CEM), the
    model without CEM first: the baseline the comparison's changes are read against."""
    for first in reversed(audits):
        for second in reversed(audits):
            if second["attack"] == first["attack"] and second["bundle"] != first["bundle"]:
                return sorted((first, second), key=lambda a: a["bundle"] in cem_bundles)
    return list(reversed(audits[:2]))


def log_in(browser: webdriver.Chrome, base: str, token: str) -> None:
    browser.get(base + "/console/login")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-out", type=Path, default=Path("demo-out"), help="folder a finished demo wrote")
    parser.add_argument("--experiments", type=Path, help="folder of cem-experiment outputs to show")
    parser.add_argument("--out", type=Path, default=Path("docs/console"))
    args = parser.parse_args(argv)
    if not (args.demo_out / "audit.db").is_file():
        parser.error(f"{args.demo_out} has no audit.db: run `make demo` (or cem-demo --out {args.demo_out}) first")
    args.out.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(32)
    with tempfile.TemporaryDirectory() as tmp:
        service = start_audit_service(args.demo_out, args.experiments, Path(tmp), token)
        base = f"http://{service.address}"
        try:
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as api:
                audits = [a for a in api.get("/v1/audits").json()["audits"] if a["status"] == "succeeded"]
                cem_bundles = {b["name"] for b in api.get("/v1/bundles").json()["bundles"] if b.get("cem")}
            if len(audits) < 2:
                parser.error(f"expected at least two succeeded audits in {args.demo_out}/audit.db")
            ids = "&".join(f"ids={a['id']}" for a in comparison_pair(audits, cem_bundles))
            pages = [("audits", "/console/audits"), ("audit", f"/console/audits/{audits[0]['id']}"),
                     ("compare", f"/console/compare?{ids}"), ("models", "/console/models"),
                     ("captures", "/console/captures")]
            if args.experiments is not None:
                pages.append(("experiments", "/console/experiments"))
                reported = sorted(p.name for p in args.experiments.iterdir() if (p / "report/table1.json").is_file())
                if reported:
                    pages.append(("experiment", f"/console/experiments/{reported[0]}"))
            browser = open_browser(*DESKTOP)
            try:
                save_full_page(browser, base + "/console/login", args.out / "login.png", DESKTOP[0])
                log_in(browser, base, token)
                for name, path in pages:
                    save_full_page(browser, base + path, args.out / f"{name}.png", DESKTOP[0])
                save_full_page(browser, base + "/console/audits", args.out / "audits-phone.png", PHONE[0])
            finally:
                browser.quit()
        finally:
            service.terminate(grace_s=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
