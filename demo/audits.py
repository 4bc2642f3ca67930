"""Audit every model with every attack over the REST API and keep what the table and the reports need.

Shared by the two ways the demo runs: ``cem-demo`` (services as local processes)
and the compose stack's one-shot ``report`` service (``cem-demo-report``), so both
print the same table from the same requests. Needs only the REST client, no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from attacker.client import NETWORK_ATTACKS, AttackName, AuditClient, AuditStatus, AuditView
from cem.errors import CEMError
from demo.profiles import DemoProfile


class DemoError(CEMError):
    """A step of the demo failed; the message says which and where its log is."""


def audit_models(client: AuditClient, models: list[dict[str, Any]], attacks: tuple[str, ...], profile: DemoProfile,
                 seed: int, report_dir: Path, say: Callable[[str], None]) -> dict[str, str]:
    """Submit one audit per model (``model["bundle"]``: the bundle's folder) and attack, on the captured traffic
    too, attack by attack (a service running two at once then runs audits of about equal length side by side);
    wait for each, narrating its progress; store metrics, bound and training in ``model``; save each audit's HTML
    report and reconstruction grid in ``report_dir``. Returns {"model/attack": report path}."""
    # optimize has no epochs and no decoding network (the API refuses both); decoder+optimize's are its decoder's
    epochs = {AttackName.DECODER: profile.decoder_epochs, AttackName.GAN: profile.gan_epochs,
              AttackName.HYBRID: profile.decoder_epochs, AttackName.OPTIMIZE: None}
    # the decoder's least steps go where decoder_epochs go; the GAN's pre-training is sized by gan_epochs alone
    min_steps = {AttackName.DECODER: profile.decoder_min_steps, AttackName.HYBRID: profile.decoder_min_steps}

    def learned(attack: AttackName, size: int | None) -> int | None:
        return size if attack in NETWORK_ATTACKS else None

    report_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(model, attack, client.submit(Path(model["bundle"]).name, attack=attack, epochs=epochs[attack],
                                          use_captures=True, seed=seed,
                                          network_channels=learned(attack, profile.network_channels),
                                          network_blocks=learned(attack, profile.network_blocks),
                                          min_steps=min_steps.get(attack)))
            for attack in map(AttackName, attacks) for model in models]
    reports: dict[str, str] = {}
    for model, attack, job in jobs:
        label = f"{model['name']}/{attack}"
        shown: dict[str, Any] = {"status": None, "progress": -1.0}

        def show(audit: AuditView, label: str = label, shown: dict[str, Any] = shown) -> None:
            """A line when the status changes or the progress moved by a tenth since the last line."""
            if audit.status is not shown["status"] or audit.progress - shown["progress"] >= 0.1:
                shown.update(status=audit.status, progress=audit.progress)
                say(f"  audit {label}: {audit.status} {100 * audit.progress:.0f}%")

        final = client.wait(job.id, on_update=show, poll_interval_s=1.0)
        if final.status is not AuditStatus.SUCCEEDED:
            raise DemoError(f"audit {label} ended {final.status}: {final.error}")
        results = final.model_dump(mode="json", include={"metrics", "bound", "training"})  # as the service sent
        model["audits"][attack] = results["metrics"]
        model.setdefault("bounds", {})[attack] = results["bound"]
        model.setdefault("training", {})[attack] = results["training"]
        html = report_dir / f"{model['name']}-{attack}.html"
        html.write_text(client.fetch_report(job.id))
        (report_dir / f"{model['name']}-{attack}.png").write_bytes(client.fetch_png(job.id))
        reports[label] = str(html)
    return reports
