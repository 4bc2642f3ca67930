"""One entry point for both attacks: ``run_attack("decoder" | "gan", split, ...)``.

``epochs`` is the knob every front end exposes (with the network's size). For the decoder attack it is
the decoder's epoch count (default 50; with its convergence check it also
runs half as many first, see attacker.attacks.decoder). For the GAN attack it is the adversarial
epoch count (default 150); unless an initial generator is passed, the generator
is first trained as a decoder attack for ``ceil(epochs / 3)`` epochs (50 at the
default, the paper's ratio), then fine-tuned adversarially.
"""

from __future__ import annotations

import dataclasses
import math

from attacker.attack_names import AttackName, check_attack_name
from attacker.attacks.data import AttackSplit
from attacker.attacks.decoder import DecoderAttackConfig, train_decoder_attack
from attacker.attacks.gan import GanAttackConfig, train_gan_attack
from attacker.attacks.loop import TrainedAttack
from attacker.attacks.monitor import ProgressMonitor
from cem.models import InversionNetwork
from cem.obfuscation import ObfuscationConfig

GAN_PRETRAIN_RATIO = 3


def run_attack(
    attack: str,
    split: AttackSplit,
    obfuscation: ObfuscationConfig,
    *,
    epochs: int | None = None,
    seed: int = 0,
    monitor: ProgressMonitor | None = None,
    decoder_config: DecoderAttackConfig = DecoderAttackConfig(),
    gan_config: GanAttackConfig = GanAttackConfig(),
    init: InversionNetwork | None = None,
) -> TrainedAttack:
    """Train attack ``attack`` on ``split`` and return its selected network (eval mode)."""
    name = check_attack_name(attack)
    monitor = monitor or ProgressMonitor()
    if name is AttackName.DECODER:
        decoder = decoder_config if epochs is None else dataclasses.replace(decoder_config, epochs=epochs)
        return train_decoder_attack(split, obfuscation, decoder, seed=seed, monitor=monitor)
    gan = gan_config if epochs is None else dataclasses.replace(gan_config, epochs=epochs)
    if init is not None:
        return train_gan_attack(split, obfuscation, gan, init=init, seed=seed, monitor=monitor)
    # The GAN run is judged on its own curve; checking the pre-training's convergence would cost half of it again.
    pretrain = dataclasses.replace(
        decoder_config, epochs=math.ceil(gan.epochs / GAN_PRETRAIN_RATIO), convergence_check=False
    )
    share = pretrain.epochs / (pretrain.epochs + gan.epochs)
    pretrained = train_decoder_attack(split, obfuscation, pretrain, seed=seed, monitor=monitor.child(0.0, share))
    return train_gan_attack(
        split, obfuscation, gan, init=pretrained.network, seed=seed, monitor=monitor.child(share, 1.0 - share)
    )
