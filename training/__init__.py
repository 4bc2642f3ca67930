"""Training of split classifiers with obfuscation defenses and the CEM regulariser.

Public surface: ``train(TrainConfig) -> TrainResult`` for scripts, the CEM
plug-in (``CEMConfig``, ``CEMRegularizer``) for any training loop, and the
defense registry (``register_defense``, ``create_defense``).
"""

from training.cem_plugin import CEMConfig, CEMRegularizer, MixtureNotFittedError
from training.config import TrainConfig, resolve_config
from training.defenses import Defense, DefenseStack, available_defenses, create_defense, parse_defense, register_defense
from training.trainer import TrainResult, train

__all__ = [
    "CEMConfig",
    "CEMRegularizer",
    "Defense",
    "DefenseStack",
    "MixtureNotFittedError",
    "TrainConfig",
    "TrainResult",
    "available_defenses",
    "create_defense",
    "parse_defense",
    "register_defense",
    "resolve_config",
    "train",
]
