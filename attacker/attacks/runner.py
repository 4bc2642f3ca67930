"""One entry point for every attack: ``run_attack("decoder" | "gan" | "optimize" | "decoder+optimize", split, ...)``.

``epochs`` is the knob every front end exposes (with the network's size). For the decoder attack it is
the decoder's epoch count (default 50; with its convergence check it also
runs half as many first, see attacker.attacks.decoder). For the GAN attack it is the adversarial
epoch count (default 150); unless an initial generator is passed, the generator
is first trained as a decoder attack for ``ceil(epochs / 3)`` epochs (50 at the
default, the paper's ratio), then fine-tuned adversarially. The optimisation attack
has no epochs (its budget is ``OptimizeAttackConfig.steps`` per image; asking for
epochs is refused); for ``decoder+optimize`` ``epochs`` are the decoder's. Both need
the bundle's ``encoder`` (attacker.attacks.optimize).

``decoder_config.min_steps`` applies wherever the decoder config trains a decoder: the
decoder attack, ``decoder+optimize``'s decoder and the GAN's decoder pre-training (its
``ceil(epochs / 3)`` epochs are raised to that many steps, its adversarial epochs are
not); ``train_decoder_attack`` raises the epochs once, the configs here only carry it.

``distributed`` runs any of them data-parallel over the ranks of a process group
(attacker.attacks.parallel); every rank must call ``run_attack`` alike, and all return
the same network.

The GAN attack is resumable: with the disk cache on, its pre-training and its adversarial state are kept there
and an interrupted run continues where it stopped (``attacker.attacks.resume``).
"""

from __future__ import annotations

import dataclasses
import math

from torch import nn

from attacker.attack_names import OPTIMIZING_ATTACKS, AttackName, check_attack_name
from attacker.attacks.data import AttackSplit
from attacker.attacks.decoder import DecoderAttackConfig, resolved_epochs, train_decoder_attack
from attacker.attacks.gan import GanAttackConfig, train_gan_attack
from attacker.attacks.loop import TrainedAttack, create_seeded_network, inversion_config_for
from attacker.attacks.monitor import ProgressMonitor
from attacker.attacks.optimize import OptimizeAttackConfig, train_optimize_attack
from attacker.attacks.resume import GAN_KIND, PRETRAIN_KIND, RunEntry, load_trained, run_entry, save_trained
from cem.distributed import SINGLE_PROCESS, DistributedContext
from cem.errors import ConfigError
from cem.models import InversionNetwork
from cem.obfuscation import ObfuscationConfig

GAN_PRETRAIN_RATIO = 3
HYBRID_DECODER_SHARE = 0.7  # the hybrid's progress: its decoder attack, then the refinement


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
    encoder: nn.Module | None = None,
    optimize_config: OptimizeAttackConfig = OptimizeAttackConfig(),
    decoder: TrainedAttack | None = None,
    distributed: DistributedContext = SINGLE_PROCESS,
    resumable: bool = True,
) -> TrainedAttack:
    """Train attack ``attack`` on ``split`` and return its selected network (eval mode).

    ``decoder``: for ``decoder+optimize``, a decoder attack already trained on this split to start from
    (a benchmark that also runs the decoder attack then trains it once); else it is trained here.
    ``resumable``: the GAN attack keeps and resumes its run in the disk cache (module docstring); False (a
    benchmark that times it) trains it all here."""
    name = check_attack_name(attack)
    monitor = monitor or ProgressMonitor()
    learned_config = decoder_config if epochs is None else dataclasses.replace(decoder_config, epochs=epochs)
    if name in OPTIMIZING_ATTACKS:
        if encoder is None:
            raise ConfigError(f"expected the bundle's encoder for the {name} attack, got None")
        if name is AttackName.OPTIMIZE:
            if epochs is not None:
                raise ConfigError(f"expected no epochs for the optimize attack (it runs {optimize_config.steps} "
                                  f"optimisation steps per image), got {epochs}")
            return train_optimize_attack(split, obfuscation, encoder, optimize_config, seed=seed, monitor=monitor,
                                         distributed=distributed)
        learned = decoder or train_decoder_attack(split, obfuscation, learned_config, seed=seed,
                                                  monitor=monitor.child(0.0, HYBRID_DECODER_SHARE),
                                                  distributed=distributed)
        refined = train_optimize_attack(split, obfuscation, encoder, optimize_config, init=learned.network, seed=seed,
                                        monitor=monitor.child(HYBRID_DECODER_SHARE, 1.0 - HYBRID_DECODER_SHARE),
                                        distributed=distributed)
        refined.started_from = learned
        refined.extra["decoder_val_mse"] = learned.best_val_mse()
        return refined
    if name is AttackName.DECODER:
        return train_decoder_attack(split, obfuscation, learned_config, seed=seed, monitor=monitor,
                                    distributed=distributed)
    gan = gan_config if epochs is None else dataclasses.replace(gan_config, epochs=epochs)
    kept = distributed if resumable else None
    if init is not None:
        entry = _entry(GAN_KIND, split, obfuscation, gan, seed, init, kept)
        return train_gan_attack(split, obfuscation, gan, init=init, seed=seed, monitor=monitor,
                                distributed=distributed, entry=entry)
    # The GAN run is judged on its own curve; checking the pre-training's convergence would cost half of it again.
    pretrain = dataclasses.replace(
        decoder_config, epochs=math.ceil(gan.epochs / GAN_PRETRAIN_RATIO), convergence_check=False
    )
    pretrain_epochs = resolved_epochs(len(split.fit), pretrain)  # what it will run: the progress share
    share = pretrain_epochs / (pretrain_epochs + gan.epochs)
    pretrained = _pretrained_generator(split, obfuscation, pretrain, seed, monitor.child(0.0, share), distributed,
                                       _entry(PRETRAIN_KIND, split, obfuscation, pretrain, seed, None, kept))
    assert isinstance(pretrained.network, InversionNetwork)
    entry = _entry(GAN_KIND, split, obfuscation, gan, seed, pretrained.network, kept)
    trained = train_gan_attack(
        split, obfuscation, gan, init=pretrained.network, seed=seed, monitor=monitor.child(share, 1.0 - share),
        distributed=distributed, entry=entry,
    )
    trained.pretraining_cached = pretrained.resumed_epochs > 0
    return trained


def _entry(kind: str, split: AttackSplit, obfuscation: ObfuscationConfig, settings: object, seed: int,
           init: InversionNetwork | None, distributed: DistributedContext | None) -> RunEntry | None:
    """The run's cache entry; None when not ``resumable`` (``distributed`` None) or not kept there."""
    if distributed is None:
        return None
    return run_entry(kind, split, obfuscation, settings, seed, init=init, distributed=distributed)


def _pretrained_generator(split: AttackSplit, obfuscation: ObfuscationConfig, config: DecoderAttackConfig, seed: int,
                          monitor: ProgressMonitor, distributed: DistributedContext,
                          entry: RunEntry | None) -> TrainedAttack:
    """The GAN generator's decoder pre-training, or the one these inputs trained before (``entry``, trained and
    stored there when missing; ``attacker.attacks.resume``): then all its epochs count as resumed."""
    if entry is not None:
        shape = inversion_config_for(split, num_blocks=config.num_blocks, channels=config.channels)
        cached = load_trained(entry, create_seeded_network(shape, seed, split.fit.features.device),
                              epochs=resolved_epochs(len(split.fit), config), has_val=len(split.val) > 0)
        if cached is not None:
            monitor.report(1.0, "decoder attack: pre-training loaded from the cache")
            cached.resumed_epochs = len(cached.history)
            return cached
    trained = train_decoder_attack(split, obfuscation, config, seed=seed, monitor=monitor, distributed=distributed)
    if entry is not None:
        best = trained.history[trained.best_epoch - 1]["val_mse"] if trained.best_epoch else None
        save_trained(entry, trained, best)
    return trained
