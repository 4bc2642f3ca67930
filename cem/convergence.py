"""When an attack counts as still improving, and how to say why: one rule for the attacks and every report.

An attack stopped while it was still improving makes a defense look stronger
than it is, so every attack judges its own convergence
(``attacker.attacks.loop.TrainedAttack.still_improving``) and every report
repeats the judgment. Kept free of torch: the experiment runner's records and
the benchmark tables read it too.
"""

from __future__ import annotations

CONVERGENCE_TAIL = 0.1  # judge convergence on the last tenth of the epochs
CONVERGENCE_TOLERANCE = 0.02  # more than 2 % better there, or from half the epochs to all: still improving


def doubling_note(gain: float) -> str:
    """Why an attack with a half-budget run was flagged, given that run's ``gain``. Within the tolerance its own
    doubling did not help, so the flag is its starting point's: the hybrid inherits a still-improving decoder."""
    if gain > CONVERGENCE_TOLERANCE:
        return (f"doubling its epochs lowered the validation MSE by {100 * gain:.1f} % "
                f"(> {100 * CONVERGENCE_TOLERANCE:g} %)")
    return (f"it started from a decoder attack that was still improving (its own doubling changed the validation "
            f"MSE by {-100 * gain:+.1f} %)")
