"""The inversion attacks by name, apart from the code that trains them.

``attacker.attacks`` (``run_attack``) imports torch and every attack; wherever an
audit is only described (the REST schemas, the job store, ``cem-audit-client``,
the demo) the names are all that is needed, and importing them from here keeps
the client's start-up free of torch.
"""

from __future__ import annotations

import enum

from cem.errors import UnknownNameError


class AttackName(str, enum.Enum):
    """An inversion attack: ``decoder`` trains a decoder on the features, ``gan`` then fine-tunes it adversarially;
    ``optimize`` searches, per intercepted feature, for the image the encoder maps to it; ``decoder+optimize``
    refines the decoder's reconstruction by that search.

    The values are part of the audit API and of its stored jobs: add members, never rename one.
    """

    DECODER = "decoder"
    GAN = "gan"
    OPTIMIZE = "optimize"
    HYBRID = "decoder+optimize"

    def __str__(self) -> str:  # the value, as StrEnum (Python >= 3.11) would: f-strings, logs and file names
        return self.value


ATTACKS: tuple[str, ...] = tuple(attack.value for attack in AttackName)  # for argparse choices and messages
# The attacks that optimise each intercepted feature (they take optimize_steps) and those that learn a
# decoding network (they take its size); optimize is the one without.
OPTIMIZING_ATTACKS: frozenset[AttackName] = frozenset({AttackName.OPTIMIZE, AttackName.HYBRID})
NETWORK_ATTACKS: frozenset[AttackName] = frozenset(set(AttackName) - {AttackName.OPTIMIZE})


def check_attack_name(attack: str) -> AttackName:
    """``attack`` as an ``AttackName``; an ``UnknownNameError`` naming the choices otherwise."""
    try:
        return AttackName(attack)
    except ValueError:
        raise UnknownNameError(f"expected an attack in {ATTACKS}, got {attack!r}") from None
