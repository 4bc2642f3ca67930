"""The HTML audit report: metrics, the privacy bound and the reconstruction grid in one page.

Self-contained (the PNG is inlined as a data URI, no scripts, no external
assets) so it can be saved, mailed or archived as a single file. Every value
that comes from a job is escaped.
"""

from __future__ import annotations

import base64
import html
import math
from datetime import datetime, timezone
from typing import Any

from attacker.service.jobs import Job
from cem.bounds import BOUND_LABELS, stored_bound

SPLITS = (
    ("train", "attacker's training split"),
    ("infer", "held-out inference split"),
    ("captured", "captured traffic (ground truth known)"),
)
BOUND_HEADER = ("<tr><th>kind</th><th>ξ</th><th>H(x|z) bound (nats)</th><th>mean-image MSE</th>"
                "<th>best attack MSE</th><th>what it means</th></tr>")

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>CEM audit {job_id}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ border: 1px solid #ccc; padding: .3rem .7rem; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
img {{ image-rendering: pixelated; max-width: 100%; border: 1px solid #ccc; }}
.muted {{ color: #666; }}
.warn {{ color: #8a1c00; }}
</style>
</head>
<body>
<h1>Model inversion audit</h1>
<table>{summary}</table>
<h2>Reconstruction quality</h2>
<p class="muted">Lower MSE, higher PSNR and SSIM mean the attacker recovers the private images better.</p>
<table>
<tr><th>split</th><th>n</th><th>MSE</th><th>PSNR (dB)</th><th>SSIM</th><th>SSIM (reference, zero-padded)</th></tr>
{metrics}</table>
<h2>Privacy bound (Theorem 1)</h2>
{bound}
<h2>Reconstructions</h2>
<p class="muted">Originals above their reconstructions; columns grouped as train, inference and captured samples.</p>
{image}
</body>
</html>
"""


def _number(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–"
    if isinstance(value, int):
        return str(value)
    return "∞" if math.isinf(value) else f"{value:.{digits}g}"


def _time(value: float | None) -> str:
    return datetime.fromtimestamp(value, timezone.utc).isoformat(timespec="seconds") if value else "–"


def _requested(value: int | None, used: Any = None) -> str:
    """A requested setting; None: "default", with the value the audit used when its result records one."""
    if value is not None:
        return str(value)
    return f"default ({used})" if isinstance(used, int) and not isinstance(used, bool) else "default"


def _rows(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in pairs)


def _bound_row(value: dict[str, Any]) -> str:
    kind = str(value.get("kind", "relative"))
    cells = [kind, _number(value.get("xi")), _number(value.get("entropy_bound")), _number(value.get("mean_image_mse")),
             _number(value.get("attack_mse")), str(value.get("label") or BOUND_LABELS[kind])]
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def _bound_html(bound: dict[str, Any] | None) -> str:
    """The ξ values with their kinds, and in words wherever a "bound" exceeds what attackers achieved."""
    bound = stored_bound(bound)
    if not bound:
        return '<p class="muted">The bundle records no bound (trained without noise, so Σ_p is undefined).</p>'
    values = [bound] + ([bound["relative"]] if isinstance(bound.get("relative"), dict) else [])
    notes = "".join(f"<li>{html.escape(str(w))}</li>" for w in bound.get("warnings") or [])
    warnings = f'<ul class="warn">{notes}</ul>' if notes else ""
    assumption = bound.get("assumption")
    caveat = f'<p class="muted">Estimate: {html.escape(str(assumption))}.</p>' if assumption else ""
    rows = "".join(_bound_row(v) for v in values)
    return f"<table>{BOUND_HEADER}{rows}</table>{caveat}{warnings}"


def render_report(job: Job, png: bytes | None) -> str:
    """The report page for a succeeded job (``job.result`` is its ``AuditResult.to_dict()``)."""
    result = job.result or {}
    request = job.request
    details = result.get("details")
    network = details.get("network") if isinstance(details, dict) else None
    network = network if isinstance(network, dict) else {}  # absent in results older than the field
    summary = _rows(
        [
            ("audit", job.id),
            ("status", job.status),
            ("bundle", request.bundle),
            ("model id", request.model_id),
            ("attack", str(result.get("attack", request.attack))),
            ("epochs", _requested(request.epochs)),
            ("attack network channels", _requested(request.network_channels, network.get("channels"))),
            ("attack network blocks", _requested(request.network_blocks, network.get("blocks"))),
            ("dataset", request.dataset or "the bundle's"),
            ("captured samples reconstructed", str(result.get("captured_reconstructions", 0))),
            ("started", _time(job.started_at)),
            ("finished", _time(job.finished_at)),
        ]
    )
    metrics = result.get("metrics") or {}
    metric_rows = []
    for key, label in SPLITS:
        values = metrics.get(key)
        if not values:
            continue
        cells = "".join(f"<td>{_number(values.get(m))}</td>" for m in ("n", "mse", "psnr", "ssim", "ssim_ref"))
        metric_rows.append(f"<tr><td>{html.escape(label)}</td>{cells}</tr>")
    bound_html = _bound_html(result.get("bound"))
    if png:
        encoded = base64.b64encode(png).decode("ascii")
        image = f'<img alt="originals above reconstructions" src="data:image/png;base64,{encoded}">'
    else:
        image = '<p class="muted">No reconstruction image was stored.</p>'
    return PAGE.format(
        job_id=html.escape(job.id), summary=summary, metrics="".join(metric_rows), bound=bound_html, image=image
    )
