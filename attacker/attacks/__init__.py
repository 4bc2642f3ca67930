"""Model inversion attacks on transmitted features: decoder-based and GAN-based.

``compute_feature_set`` + ``build_attack_split`` prepare the attacker's data for a
protocol (``train`` or ``infer``), ``run_attack`` trains an attack and
``evaluate_attack`` scores it on held-out images, with ``attack_accuracy`` (identity
leakage) when given a classifier from ``evaluation_classifier`` (``train_evaluation_classifier``
behind a disk cache). ``attacker.audit.run_audit`` strings them together for one bundle.
"""

from attacker.attack_names import ATTACKS, AttackName, check_attack_name
from attacker.attacks.classifier_cache import evaluation_classifier
from attacker.attacks.data import (
    MODES,
    AttackSplit,
    FeatureSet,
    build_attack_split,
    compute_feature_set,
    load_images,
    load_labeled_images,
)
from attacker.attacks.decoder import DecoderAttackConfig, train_decoder_attack
from attacker.attacks.evaluate import Evaluation, evaluate_attack, iterate_reconstructions
from attacker.attacks.gan import GanAttackConfig, train_gan_attack
from attacker.attacks.grid import GridGroup, render_grid_png
from attacker.attacks.identity import IdentityClassifier, IdentityMeter, train_evaluation_classifier
from attacker.attacks.loop import TrainedAttack
from attacker.attacks.monitor import AttackCancelled, ProgressMonitor
from attacker.attacks.optimize import FeatureMatchingInverter, OptimizeAttackConfig, train_optimize_attack
from attacker.attacks.runner import run_attack

__all__ = [
    "ATTACKS",
    "MODES",
    "AttackCancelled",
    "AttackName",
    "AttackSplit",
    "DecoderAttackConfig",
    "Evaluation",
    "FeatureMatchingInverter",
    "FeatureSet",
    "GanAttackConfig",
    "GridGroup",
    "IdentityClassifier",
    "IdentityMeter",
    "OptimizeAttackConfig",
    "ProgressMonitor",
    "TrainedAttack",
    "build_attack_split",
    "check_attack_name",
    "compute_feature_set",
    "evaluate_attack",
    "evaluation_classifier",
    "iterate_reconstructions",
    "load_images",
    "load_labeled_images",
    "render_grid_png",
    "run_attack",
    "train_decoder_attack",
    "train_evaluation_classifier",
    "train_gan_attack",
    "train_optimize_attack",
]
