"""The comparison table the demo prints: σ only against σ + CEM, per attack."""

from __future__ import annotations

from typing import Any

from cem.worst_case import worst_case

COLUMNS = ("train", "infer", "captured")
LABELLED = ("train", "infer")  # the columns with ground-truth labels, where attack accuracy is measured


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "—"


def _metric(metrics: dict[str, Any], column: str, name: str) -> Any:
    """One metric of one column; None where the column was not scored (no captured traffic: the column is None)."""
    return (metrics.get(column) or {}).get(name)


def cem_gain_percent(baseline_mse: float | None, cem_mse: float | None) -> float | None:
    """Relative rise of the attacker's MSE with CEM; positive means CEM made inversion harder."""
    if not baseline_mse or cem_mse is None:
        return None
    return 100.0 * (cem_mse - baseline_mse) / baseline_mse


def _bound_cell(bound: dict[str, Any] | None) -> str:
    """ξ and its kind (``est``/``rel``/``floor``), ``!`` when the attack beat it (so it is no floor)."""
    if not bound or not isinstance(bound.get("xi"), (int, float)):
        return "—"
    kind = {"estimate": "est", "relative": "rel"}.get(bound.get("kind", "relative"), bound.get("kind", "?"))
    beaten = "!" if bound.get("exceeds_attack") or bound.get("exceeds_mean_image") else ""
    return f"{bound['xi']:.1e} {kind}{beaten}"


def _doubling(run: dict[str, Any]) -> str:
    gain = run.get("doubling_gain")
    return "" if gain is None else f" (MSE {-100 * gain:+.1f}% against half the epochs)"


def convergence_lines(models: list[dict[str, Any]], attacks: list[str]) -> list[str]:
    """Per model and attack, the epoch each column's attack kept, and a flag where it was still improving:
    an attack stopped early makes the defense look better than it is."""
    lines = ["", "attack training (best epoch / epochs run, per column):"]
    for model in models:
        for attack in attacks:
            runs = (model.get("training") or {}).get(attack) or {}
            cells = [f"{column} {run['best_epoch']}/{run['epochs']}" + _doubling(run)
                     + (" STILL IMPROVING (stopped early)" if run["still_improving"] else "")
                     for column, run in runs.items() if run]
            lines.append(f"  {model['name']}/{attack}: " + (", ".join(cells) if cells else "—"))
    return lines


def identity_lines(models: list[dict[str, Any]], attacks: list[str]) -> list[str]:
    """Per model and attack, the attack accuracy of each labelled column, with the classifier's accuracy on the
    original images (the ceiling) and chance: whether what leaked is still recognisable, beside the MSE."""
    lines = ["", ("attack accuracy (share of reconstructions the attacker's classifier labels correctly; "
                 "in brackets: on the originals, chance):")]
    for model in models:
        for attack in attacks:
            metrics = model.get("audits", {}).get(attack, {})
            cells = [f"{c} {_fmt(_metric(metrics, c, 'attack_accuracy'), '.3f')} "
                     f"({_fmt(_metric(metrics, c, 'classifier_accuracy'), '.3f')}, "
                     f"{_fmt(_metric(metrics, c, 'chance_accuracy'), '.2f')})" for c in LABELLED]
            lines.append(f"  {model['name']}/{attack}: " + ", ".join(cells))
    return lines


def worst_case_lines(models: list[dict[str, Any]], attacks: list[str]) -> list[str]:
    """Per model and column, the attack that reconstructed best (a defense is as strong as its strongest
    attacker), and with two models the CEM gain against that worst case."""
    strongest = [worst_case({a: {c: _metric(m.get("audits", {}).get(a, {}), c, "mse") for c in COLUMNS}
                             for a in attacks}) for m in models]
    lines = ["", f"worst case (the lowest MSE of the {len(attacks)} attacks, per column):"]
    for model, entry in zip(models, strongest, strict=True):
        lines.append(f"  {model['name']}: " + ", ".join(
            f"{c} {e['attack']} {e['mse']:.5f}" for c, e in entry.items()))
    if len(models) == 2:
        gains = [f"{c} {_fmt(cem_gain_percent(strongest[0][c]['mse'], strongest[1][c]['mse']), '+.1f')}%"
                 for c in COLUMNS if c in strongest[0] and c in strongest[1]]
        lines.append("  CEM gain against the worst case: " + ", ".join(gains))
    return lines


def render_table(models: list[dict[str, Any]], attacks: list[str]) -> str:
    """``models``: [{"name", "accuracy", "wire_accuracy", "audits": {attack: {column: metrics}},
    "bounds": {attack: audit bound}}]. The ξ column shows each ξ's kind (cem.bounds)."""
    lines = []
    width = max(8, *(len(a) for a in attacks))
    header = f"{'model':<11} {'attack':<{width}} {'acc':>6} {'wire acc':>8} " + " ".join(
        f"{c + ' MSE':>12} {'PSNR':>6} {'SSIM':>6}" for c in COLUMNS
    ) + f" {'ξ (kind)':>13}"
    lines.append(header)
    lines.append("-" * len(header))
    for model in models:
        for attack in attacks:
            metrics = model["audits"].get(attack, {})
            cells = " ".join(
                f"{_fmt(_metric(metrics, c, 'mse'), '.5f'):>12} {_fmt(_metric(metrics, c, 'psnr'), '.2f'):>6} "
                f"{_fmt(_metric(metrics, c, 'ssim'), '.3f'):>6}"
                for c in COLUMNS
            )
            lines.append(
                f"{model['name']:<11} {attack:<{width}} {_fmt(model.get('accuracy'), '.4f'):>6} "
                f"{_fmt(model.get('wire_accuracy'), '.4f'):>8} {cells} "
                f"{_bound_cell(model.get('bounds', {}).get(attack)):>13}"
            )
    if len(models) == 2:
        base, cem = models
        lines.append("")
        for attack in attacks:
            gains = []
            for column in COLUMNS:
                gain = cem_gain_percent(
                    _metric(base["audits"].get(attack, {}), column, "mse"),
                    _metric(cem["audits"].get(attack, {}), column, "mse"),
                )
                gains.append(f"{column} {_fmt(gain, '+.1f')}%")
            lines.append(f"CEM gain in attack MSE ({attack}): " + ", ".join(gains))
        delta = None
        if isinstance(base.get("accuracy"), float) and isinstance(cem.get("accuracy"), float):
            delta = 100.0 * (cem["accuracy"] - base["accuracy"])
        lines.append(f"accuracy change with CEM: {_fmt(delta, '+.2f')} points")
    if len(attacks) > 1:
        lines.extend(worst_case_lines(models, attacks))
    lines.extend(identity_lines(models, attacks))
    lines.extend(convergence_lines(models, attacks))
    lines.append("ξ kinds: est = estimate (H(x) from a Gaussian fit), rel = relative (H(x) := 0); neither is a "
                 "proven floor; '!' = an attacker or the mean-image guess did better than this ξ")
    return "\n".join(lines)
