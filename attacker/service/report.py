"""The HTML audit report: the strongest attack, metrics, the privacy bound and the reconstruction grid in one page.

It leads with the worst case (per column, the attack that reconstructed best, ``details["worst_case"]``):
a defense is only as strong as the strongest attack against it.

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

from attacker.attack_names import ATTACKS, OPTIMIZING_ATTACKS, AttackName
from attacker.service.jobs import Job
from cem.bounds import BOUND_LABELS, stored_bound

SPLITS = (
    ("train", "attacker's training split"),
    ("infer", "held-out inference split"),
    ("captured", "captured traffic (ground truth known)"),
)
COLUMNS = SPLITS[:2]  # the protocols an attack is trained and scored under
OPTIMIZING = tuple(sorted(a.value for a in OPTIMIZING_ATTACKS))
NO_NETWORK = "none: the optimize attack has no decoding network"
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
td.text {{ text-align: left; }}
</style>
</head>
<body>
<h1>Model inversion audit</h1>
<table>{summary}</table>
<h2>Strongest attack</h2>
{strongest}
<h2>Reconstruction quality</h2>
<p class="muted">Lower MSE, higher PSNR and SSIM mean the attacker recovers the private images better.</p>
<table>
<tr><th>split</th><th>n</th><th>MSE</th><th>PSNR (dB)</th><th>SSIM</th><th>SSIM (reference, zero-padded)</th></tr>
{metrics}</table>
{identity}{runs}<h2>Privacy bound (Theorem 1)</h2>
{bound}
<h2>Reconstructions</h2>
<p class="muted">Originals above their reconstructions; columns grouped as train, inference and captured samples.</p>
{image}
</body>
</html>
"""


def format_number(value: Any, digits: int = 4) -> str:
    """A metric for display (the report and the console): 4 significant digits, "–" for missing or NaN, "∞"."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "–"
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
    cells = [kind, *(format_number(value.get(key)) for key in ("xi", "entropy_bound", "mean_image_mse", "attack_mse")),
             str(value.get("label") or BOUND_LABELS[kind])]
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


def _seconds(value: Any) -> str:
    return "–" if isinstance(value, bool) or not isinstance(value, (int, float)) else f"{value:.1f} s"


def _column(details: dict[str, Any], key: str) -> dict[str, Any]:
    values = details.get(key)
    return values if isinstance(values, dict) else {}


def _optimize(values: dict[str, Any]) -> dict[str, Any]:
    run = values.get("optimize")
    return run if isinstance(run, dict) else {}


def _share(value: Any) -> str:
    """An accuracy (a share in [0, 1]) with two decimals."""
    return "–" if isinstance(value, bool) or not isinstance(value, (int, float)) else f"{value:.2f}"


def identity_text(values: dict[str, Any]) -> str:
    """A column's identity leakage in words: attack accuracy 0.62 (classifier on originals 0.98, chance 0.10)."""
    return (f"attack accuracy {_share(values.get('attack_accuracy'))} (classifier on originals "
            f"{_share(values.get('classifier_accuracy'))}, chance {_share(values.get('chance_accuracy'))})")


def compared_attacks(attack: str, details: dict[str, Any]) -> list[str]:
    """The attacks an audit scored: its own, and for decoder+optimize the decoder alone (where it recorded it)."""
    alone = attack == AttackName.HYBRID.value and any("decoder_alone" in _column(details, key) for key, _ in COLUMNS)
    return [attack] + ([AttackName.DECODER.value] if alone else [])


def strongest_note(attack: str, details: dict[str, Any]) -> str:
    """What an audit's strongest-attack table covers: one attack's own MSE, or the hybrid against its decoder alone
    (the report and the console say it in the same words)."""
    compared = compared_attacks(attack, details)
    others = ", ".join(a for a in ATTACKS if a not in compared)
    if len(compared) == 1:
        return (f"Only one attack was run ({attack}): each MSE is its own, not a worst case over attacks. "
                f"The worst case needs audits with the others too ({others}).")
    return (f"This audit compared {attack} with its decoder alone (listed as {AttackName.DECODER.value}) where "
            f"both were scored. The worst case over all attacks needs audits with the others too ({others}).")


def _strongest_html(attack: str, details: dict[str, Any]) -> str:
    """Per column, the attack with the lowest MSE among those the audit ran, and what that comparison covers."""
    worst = details.get("worst_case")
    if not isinstance(worst, dict):  # a result older than the field
        return (f'<p class="muted">This result was recorded before audits named their strongest attack: the '
                f"tables below are the {html.escape(attack)} attack alone, not a worst case over attacks.</p>")
    rows = []
    for key, label in SPLITS:
        entry = worst.get(key)
        if not isinstance(entry, dict):
            continue
        cells = [label, str(entry.get("attack", "–")), format_number(entry.get("mse")),
                 format_number(entry.get("attacks"))]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    if not rows:
        return '<p class="muted">No attack reached a finite MSE on any column.</p>'
    note = strongest_note(attack, details)
    head = "<tr><th>split</th><th>strongest attack</th><th>its MSE</th><th>attacks compared</th></tr>"
    intro = ('<p class="muted">A defense is only as strong as the strongest attack against it: per column, the '
             "attack with the lowest MSE.</p>")
    return f'{intro}\n<table>{head}{"".join(rows)}</table>\n<p class="muted">{html.escape(note)}</p>'


def _runs_html(attack: str, details: dict[str, Any], metrics: dict[str, Any]) -> str:
    """Per column: how the attack's training (or per-image optimisation) went and how long it and scoring took."""
    columns = [(label, _column(details, key), metrics.get(key) or {}) for key, label in COLUMNS]
    columns = [(label, values, scores) for label, values, scores in columns if "best_epoch" in values]
    if not columns:  # a result older than these details
        return ""
    optimizing = attack in OPTIMIZING
    hybrid = attack == AttackName.HYBRID.value
    if optimizing:
        header = ["column", "τ (TV weight, chosen on validation)", "steps per image"]
    else:
        header = ["column", "epochs", "best epoch"]
    header += ["still improving", "attack time", "evaluation time"] + (["refinement (MSE)"] if hybrid else [])
    rows = []
    for label, values, scores in columns:
        run = _optimize(values)
        if optimizing:
            cells = [label, format_number(run.get("tv_weight")), format_number(run.get("steps_per_image"))]
        else:
            cells = [label, format_number(values.get("epochs")), format_number(values.get("best_epoch"))]
        cells += ["yes" if values.get("still_improving") else "no", _seconds(values.get("attack_s")),
                  _seconds(values.get("eval_s"))]
        if hybrid:
            alone = values.get("decoder_alone")
            alone_mse = alone.get("mse") if isinstance(alone, dict) else None
            refinement = f"decoder alone {format_number(alone_mse)} → refined {format_number(scores.get('mse'))}"
            alone_accuracy = alone.get("attack_accuracy") if isinstance(alone, dict) else None
            if alone_accuracy is not None or scores.get("attack_accuracy") is not None:
                refinement += (f"; attack accuracy {_share(alone_accuracy)} → "
                               f"{_share(scores.get('attack_accuracy'))}")
            cells.append(refinement)
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    note = ('<p class="muted">An optimisation attack\'s attack time is choosing τ on the attacker\'s validation '
            "images (after training its decoder, for decoder+optimize); its evaluation time is optimising every "
            "scored image.</p>" if optimizing else "")
    return f"<h2>Attack runs</h2>\n<table>{head}{''.join(rows)}</table>{note}\n"


def render_report(job: Job, png: bytes | None) -> str:
    """The report page for a succeeded job (``job.result`` is its ``AuditResult.to_dict()``)."""
    result = job.result or {}
    request = job.request
    attack = str(result.get("attack", request.attack))
    details = result.get("details")
    details = details if isinstance(details, dict) else {}
    network = details.get("network")
    network = network if isinstance(network, dict) else {}  # absent in results older than the field
    if attack == AttackName.OPTIMIZE.value:
        epochs = "none: the optimize attack optimises each image (steps below)"
        channels = blocks = min_steps = NO_NETWORK
    else:
        epochs = _requested(request.epochs) + (" (its decoder's)" if attack == AttackName.HYBRID.value else "")
        channels = _requested(request.network_channels, network.get("channels"))
        blocks = _requested(request.network_blocks, network.get("blocks"))
        min_steps = _requested(request.min_steps, details.get("min_steps"))
    steps = []
    if attack in OPTIMIZING:
        used = _optimize(_column(details, "train")).get("steps")
        steps = [("optimisation steps per image", _requested(request.optimize_steps, used))]
    summary = _rows(
        [
            ("audit", job.id),
            ("status", job.status),
            ("bundle", request.bundle),
            ("model id", request.model_id),
            ("attack", attack),
            ("epochs", epochs),
            *steps,
            ("attack network channels", channels),
            ("attack network blocks", blocks),
            ("decoder's least optimizer steps", min_steps),
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
        cells = "".join(f"<td>{format_number(values.get(m))}</td>" for m in ("n", "mse", "psnr", "ssim", "ssim_ref"))
        metric_rows.append(f"<tr><td>{html.escape(label)}</td>{cells}</tr>")
        if values.get("attack_accuracy") is not None:  # labelled columns of results that record identity leakage
            metric_rows.append(f'<tr><td>{html.escape(label)}</td><td colspan="5" class="text">'
                               f"{html.escape(identity_text(values))}</td></tr>")
    identity = ""
    if any(isinstance(v, dict) and v.get("attack_accuracy") is not None for v in metrics.values()):
        identity = ('<p class="muted">Attack accuracy: the share of reconstructions that an evaluation classifier, '
                    "trained on the attacker&#x27;s own images only, assigns to their true class. The classifier on "
                    "the original images is its ceiling; chance (1 / classes) means nothing about the class "
                    "leaked.</p>\n")
    bound_html = _bound_html(result.get("bound"))
    if png:
        encoded = base64.b64encode(png).decode("ascii")
        image = f'<img alt="originals above reconstructions" src="data:image/png;base64,{encoded}">'
    else:
        image = '<p class="muted">No reconstruction image was stored.</p>'
    return PAGE.format(
        job_id=html.escape(job.id), summary=summary, strongest=_strongest_html(attack, details),
        metrics="".join(metric_rows), identity=identity,
        runs=_runs_html(attack, details, metrics), bound=bound_html, image=image,
    )
