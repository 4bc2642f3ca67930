"""Demo profiles: how much training and attacking a demo run does.

``fast`` is sized for a few minutes on two CPU cores after installation and
runs the decoder attack only: at a length that fits, the GAN attack (which
starts from a short decoder attack) reconstructed ten times worse than the
decoder, a number that says nothing about the defense; ``paper`` uses every
default (the trainer's digits profile, 50 decoder-attack epochs, 150 GAN epochs)
and both attacks; ``tiny`` exists for the orchestration tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from attacker.client import ATTACKS, AttackName
from cem.errors import ConfigError


@dataclass(frozen=True)
class DemoProfile:
    name: str
    train_epochs: int | None      # None: the trainer's default for digits
    decoder_epochs: int | None    # None: the attack's default
    gan_epochs: int | None
    train_width: float | None = None
    edge_limit: int | None = None  # test images the edge sends through the tap (None: all)
    attacks: tuple[str, ...] = ATTACKS  # run unless the command line names others


PROFILES: dict[str, DemoProfile] = {
    "fast": DemoProfile("fast", train_epochs=None, decoder_epochs=12, gan_epochs=6,
                        attacks=(AttackName.DECODER.value,)),
    "paper": DemoProfile("paper", train_epochs=None, decoder_epochs=None, gan_epochs=None),
    "tiny": DemoProfile("tiny", train_epochs=2, decoder_epochs=1, gan_epochs=1, train_width=0.25, edge_limit=64),
}


def get_profile(name: str) -> DemoProfile:
    if name not in PROFILES:
        raise ConfigError(f"expected a demo profile in {sorted(PROFILES)}, got {name!r}")
    return PROFILES[name]
