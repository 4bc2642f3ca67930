"""Obfuscation defenses as composable, registered parts (paper §5.1, reference_notes §4).

A defense can do up to three things, and each of them composes with the others
and with CEM:

* change the architecture (``bottleneck``: channels of the edge bottleneck conv,
  or ``None`` for the paper's No_defense baseline without one);
* change the client-side transform (``noise``, ``dropout``, ``topk``), which is
  always applied through ``cem.obfuscation.obfuscate`` so the decoder trains on,
  and the edge later sends, exactly that tensor;
* add a training loss (``distcorr``: NoPeek distance correlation between the
  input and the clean features);
* train an adversary alongside the encoder (``ressfl``: a proxy inversion network,
  ``training.ressfl``), whose penalty joins the same single backward;
* reshape the model at the start of an epoch (``patrol``: ResSFL on an edge with an
  extra front conv, whose channels are pruned at one epoch, ``training.patrol``).

Every defense writes one manifest record, e.g. ``{"name": "dropout", "p": 0.2}``.
CLI strings ``name:strength`` map onto the defense's strength field; further fields
follow as ``,field=value`` (``ressfl:0.3,pretrain_epochs=5``), so every setting a
record holds can be given on the command line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from cem.errors import ConfigError, UnknownNameError
from cem.models import InversionConfig, SplitModel, SplitModelConfig
from cem.obfuscation import ObfuscationConfig
from training.patrol import matching_ratio, prune_edge
from training.ressfl import PROXY_BLOCKS, PROXY_CHANNELS, ProxyAdversary, ProxySetup

DCOR_EPS = 1e-7
PATROL_PRUNE_FRACTION = 0.75  # the reference's scripts: pruning at epoch 180 of 240


class Defense:
    """Base of all defenses: every hook defaults to 'no change'."""

    name: ClassVar[str]
    strength_field: ClassVar[str]
    # Why the defense cannot train under DistributedDataParallel (``training.data_parallel``), or None when it can.
    data_parallel_refusal: ClassVar[str | None] = None

    def record(self) -> dict[str, Any]:
        """The manifest entry: the name plus the dataclass fields."""
        return {"name": self.name, **dataclasses.asdict(self)}  # type: ignore[call-overload]

    def configure_model(self, config: SplitModelConfig) -> SplitModelConfig:
        return config

    def configure_obfuscation(self, config: ObfuscationConfig) -> ObfuscationConfig:
        return config

    def loss(self, x: torch.Tensor, z_clean: torch.Tensor) -> torch.Tensor | None:
        """Extra training loss from the images x (B, C, S, S) in [0, 1] and clean features (B, ...)."""
        return None

    def create_adversary(self, setup: ProxySetup) -> ProxyAdversary | None:
        """A training-only adversary the encoder is trained against (``training.ressfl``), or None."""
        return None

    def before_epoch(self, model: SplitModel, epoch: int) -> bool:
        """Change the model at the start of ``epoch`` (1-based); True when its Parameters were replaced,
        so the trainer must rebuild its optimiser (B10)."""
        return False


_DEFENSES: dict[str, type[Defense]] = {}


def register_defense(name: str) -> Callable[[type[Defense]], type[Defense]]:
    """Class decorator that makes a defense available to ``create_defense`` and ``--defense``."""

    def decorate(cls: type[Defense]) -> type[Defense]:
        cls.name = name
        _DEFENSES[name] = cls
        return cls

    return decorate


def available_defenses() -> list[str]:
    return sorted(_DEFENSES)


def create_defense(name: str, **kwargs: Any) -> Defense:
    if name not in _DEFENSES:
        raise UnknownNameError(f"expected a defense in {available_defenses()}, got {name!r}")
    try:
        return _DEFENSES[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"defense {name!r} got unexpected arguments {sorted(kwargs)}: {exc}") from exc


def _parse_number(cls: type[Defense], field: str, text: str, where: str) -> int | float:
    """``text`` as the dataclass field's number type (int for ``int``/``int | None``, else float)."""
    field_type = {f.name: f.type for f in dataclasses.fields(cls)}[field]  # type: ignore[arg-type]
    try:
        return int(text) if field_type in (int, "int", "int | None") else float(text)
    except ValueError as exc:
        raise ConfigError(f"expected a number {where}, got {text!r}") from exc


def parse_defense(spec: str) -> Defense:
    """``"dropout:0.2"`` -> DropoutDefense(p=0.2). The strength is required; other fields follow as
    ``,field=value``: ``"ressfl:0.3,ssim_threshold=0.6"``."""
    name, sep, rest = spec.partition(":")
    if name not in _DEFENSES:
        raise UnknownNameError(f"expected a defense in {available_defenses()} (as name:strength), got {spec!r}")
    cls = _DEFENSES[name]
    value, *extras = rest.split(",")
    if not sep or not value:
        raise ConfigError(f"expected '{name}:<{cls.strength_field}>', got {spec!r}")
    kwargs = {cls.strength_field: _parse_number(cls, cls.strength_field, value, f"after '{name}:'")}
    known = sorted(f.name for f in dataclasses.fields(cls) if f.name != cls.strength_field)  # type: ignore[arg-type]
    for extra in extras:
        field, eq, text = extra.partition("=")
        if not eq or field not in known or field in kwargs:
            raise ConfigError(f"expected ',field=value' once per field of {name} in {known}, got {extra!r} in {spec!r}")
        kwargs[field] = _parse_number(cls, field, text, f"for {name}'s {field}")
    return create_defense(name, **kwargs)


@register_defense("noise")
@dataclass(frozen=True)
class NoiseDefense(Defense):
    """Gaussian noise on the transmitted features; ``std`` is a standard deviation."""

    std: float
    strength_field: ClassVar[str] = "std"

    def __post_init__(self) -> None:
        if not self.std >= 0:
            raise ConfigError(f"expected noise std >= 0, got {self.std}")

    def configure_obfuscation(self, config: ObfuscationConfig) -> ObfuscationConfig:
        return dataclasses.replace(config, noise_std=self.std)


@register_defense("bottleneck")
@dataclass(frozen=True)
class BottleneckDefense(Defense):
    """Width of the edge bottleneck conv: fewer channels carry less of the image.

    ``channels=None`` removes the bottleneck (No_defense baseline); the record then
    says ``{"name": "bottleneck", "channels": null}`` so the manifest is explicit.
    """

    channels: int | None
    strength_field: ClassVar[str] = "channels"

    def __post_init__(self) -> None:
        if self.channels is not None and self.channels < 1:
            raise ConfigError(f"expected bottleneck channels >= 1 or none, got {self.channels}")

    def configure_model(self, config: SplitModelConfig) -> SplitModelConfig:
        return dataclasses.replace(config, bottleneck_channels=self.channels)


@register_defense("dropout")
@dataclass(frozen=True)
class DropoutDefense(Defense):
    """Zero each transmitted value with probability ``p`` (no rescaling, as in service)."""

    p: float
    strength_field: ClassVar[str] = "p"

    def __post_init__(self) -> None:
        if not 0 < self.p < 1:
            raise ConfigError(f"expected dropout p in (0, 1), got {self.p}")

    def configure_obfuscation(self, config: ObfuscationConfig) -> ObfuscationConfig:
        return dataclasses.replace(config, dropout_p=self.p)


@register_defense("topk")
@dataclass(frozen=True)
class TopKDefense(Defense):
    """Zero the smallest ``ratio`` of each sample's transmitted values."""

    ratio: float
    strength_field: ClassVar[str] = "ratio"

    def __post_init__(self) -> None:
        if not 0 < self.ratio < 1:
            raise ConfigError(f"expected top-k prune ratio in (0, 1), got {self.ratio}")

    def configure_obfuscation(self, config: ObfuscationConfig) -> ObfuscationConfig:
        return dataclasses.replace(config, topk_ratio=self.ratio)


@register_defense("distcorr")
@dataclass(frozen=True)
class DistCorrDefense(Defense):
    """NoPeek: ``weight`` · distance correlation(x, clean z), pushing z to forget x's geometry.

    The weight is used as given for every data set (the reference scaled it by
    10 for CIFAR-10 only, reference_notes B15).
    """

    weight: float
    strength_field: ClassVar[str] = "weight"

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ConfigError(f"expected distcorr weight > 0, got {self.weight}")

    def loss(self, x: torch.Tensor, z_clean: torch.Tensor) -> torch.Tensor:
        return self.weight * distance_correlation(x.flatten(1), z_clean.flatten(1))


@register_defense("ressfl")
@dataclass(frozen=True)
class ResSFLDefense(Defense):
    """ResSFL: ``weight`` · max(SSIM(proxy(z_sent), x) − ``ssim_threshold``, 0) against a proxy inverter.

    The proxy (``training.ressfl``: ``proxy_blocks`` residual blocks of ``proxy_channels``,
    Adam at ``proxy_lr``) is pre-trained for ``pretrain_epochs`` epochs, then updated one
    step per batch; it sees the features after the bundle's noise (fixing B12). With
    ``--noise-std σ`` this is the paper's Noise_ARL. ``ssim_threshold=None`` means the data
    set's value (``training.config``: 0.5 CIFAR/digits, 0.6 FaceScrub/TinyImageNet), filled in
    by the trainer before the record is written. Training-only: the edge, cloud and
    attacker ignore the record (no client transform, no weights in the bundle).
    """

    weight: float
    ssim_threshold: float | None = None
    pretrain_epochs: int = 30
    proxy_blocks: int = PROXY_BLOCKS
    proxy_channels: int = PROXY_CHANNELS
    proxy_lr: float = 1e-3
    strength_field: ClassVar[str] = "weight"
    data_parallel_refusal: ClassVar[str | None] = (
        "its proxy inverter is a second network with its own optimiser, which each process would pre-train and "
        "update on its own shard, so the ranks would penalise the encoder against different attackers")

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ConfigError(f"expected ressfl weight > 0, got {self.weight}")
        if self.ssim_threshold is not None and not 0 <= self.ssim_threshold < 1:
            raise ConfigError(f"expected ressfl ssim_threshold in [0, 1), got {self.ssim_threshold}")
        if self.pretrain_epochs < 0 or self.proxy_blocks < 0 or self.proxy_channels < 1:
            raise ConfigError(
                "expected ressfl pretrain_epochs >= 0, proxy_blocks >= 0 and proxy_channels >= 1, got "
                f"{self.pretrain_epochs}, {self.proxy_blocks} and {self.proxy_channels}"
            )
        if not self.proxy_lr > 0:
            raise ConfigError(f"expected ressfl proxy_lr > 0, got {self.proxy_lr}")

    def create_adversary(self, setup: ProxySetup) -> ProxyAdversary:
        if self.ssim_threshold is None:
            raise ConfigError("expected a resolved ressfl ssim_threshold (a number), got None; "
                              "see training.trainer.build_defenses")
        proxy = InversionConfig.for_features(setup.feature_shape, setup.image_channels, setup.image_size,
                                             num_blocks=self.proxy_blocks, channels=self.proxy_channels)
        return ProxyAdversary(proxy, setup, weight=self.weight, ssim_threshold=self.ssim_threshold,
                              lr=self.proxy_lr, pretrain_epochs=self.pretrain_epochs)


@register_defense("patrol")
@dataclass(frozen=True)
class PatrolDefense(ResSFLDefense):
    """PATROL: ResSFL (its ``weight``, threshold and proxy fields and its adversary, inherited) on an edge with an
    extra front conv, whose trunk channels are pruned at the start of epoch ``prune_epoch`` (``training.patrol``).

    ``prune_epoch=None`` means 3/4 of the run (the reference's scripts pruned at 180 of 240 epochs) and
    ``prune_ratio=None`` the smallest ratio that brings the encoder back to the size it has without the
    front conv; the trainer fills both in before the record is written. The pruned channel counts are
    in the manifest's model record (``front_conv``, ``edge_channels``), from which every party rebuilds.
    VGG11 and ResNet-20, with a bottleneck only.
    """

    prune_epoch: int | None = None
    prune_ratio: float | None = None
    data_parallel_refusal: ClassVar[str | None] = (
        "it trains against ResSFL's per-process proxy inverter, and its pruning replaces the encoder's Parameters "
        "mid-run, which DistributedDataParallel, holding the old ones, would never synchronise again")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prune_epoch is not None and self.prune_epoch < 1:
            raise ConfigError(f"expected patrol prune_epoch >= 1, got {self.prune_epoch}")
        if self.prune_ratio is not None and not 0 < self.prune_ratio < 1:
            raise ConfigError(f"expected patrol prune_ratio in (0, 1), got {self.prune_ratio}")

    def resolved(self, epochs: int, model: SplitModelConfig) -> PatrolDefense:
        """The pruning settings filled in for a run of ``epochs`` on ``model`` (the configured model, front
        conv included): 3/4 of the run, the size-matching ratio. Refuses a pruning epoch the run never reaches."""
        prune_epoch = max(1, round(PATROL_PRUNE_FRACTION * epochs)) if self.prune_epoch is None else self.prune_epoch
        if prune_epoch > epochs:
            raise ConfigError(f"expected patrol prune_epoch <= the run's {epochs} epochs, got {prune_epoch}")
        ratio = matching_ratio(model) if self.prune_ratio is None else self.prune_ratio
        return dataclasses.replace(self, prune_epoch=prune_epoch, prune_ratio=ratio)

    def configure_model(self, config: SplitModelConfig) -> SplitModelConfig:
        if not config.has_bottleneck:
            raise ConfigError("expected a bottleneck with patrol (its pruning keeps the transmitted width), "
                              "got --bottleneck none")
        return dataclasses.replace(config, front_conv=True)

    def before_epoch(self, model: SplitModel, epoch: int) -> bool:
        if self.prune_epoch is None or self.prune_ratio is None:
            raise ConfigError("expected a resolved patrol prune_epoch and prune_ratio, got None; "
                              "see training.trainer._prepare")
        if epoch != self.prune_epoch:
            return False
        prune_edge(model, self.prune_ratio)
        return True


def _centered_distances(samples: torch.Tensor) -> torch.Tensor:
    """(B, P) -> (B, B) double-centred Euclidean distance matrix."""
    sq = samples.pow(2).sum(dim=1)
    gram = samples @ samples.T
    dist = (sq.unsqueeze(1) - 2.0 * gram + sq.unsqueeze(0)).clamp_min(DCOR_EPS).sqrt()
    return dist - dist.mean(dim=0, keepdim=True) - dist.mean(dim=1, keepdim=True) + dist.mean()


def distance_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sample distance correlation (not squared) of two batches a (B, P), b (B, Q) -> scalar in [0, 1]."""
    if a.shape[0] != b.shape[0] or a.shape[0] < 2:
        raise ConfigError(f"expected two batches of equal size >= 2, got {a.shape[0]} and {b.shape[0]}")
    ca, cb = _centered_distances(a), _centered_distances(b)
    dcov = ((ca * cb).mean() + DCOR_EPS).sqrt()
    dvar_a = ((ca * ca).mean() + DCOR_EPS).sqrt()
    dvar_b = ((cb * cb).mean() + DCOR_EPS).sqrt()
    return dcov / ((dvar_a * dvar_b + DCOR_EPS).sqrt() + DCOR_EPS)


@dataclass(frozen=True)
class DefenseStack:
    """Defenses combined: the model config, client transform and loss terms they imply."""

    defenses: tuple[Defense, ...]

    def __post_init__(self) -> None:
        names = [d.name for d in self.defenses]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"expected each defense at most once, got {duplicates} more than once")
        if {"ressfl", "patrol"} <= set(names):
            raise ConfigError("expected ressfl or patrol, got both: patrol already trains against ResSFL's proxy")
        self._check_noise_is_bounded()

    def _check_noise_is_bounded(self) -> None:
        """Refuse noise without a bottleneck: σ has a fixed meaning only against Sigmoid outputs in (0, 1).

        Checked here, where the final σ is known, so it holds however the trainer resolved it.
        """
        unbounded = any(isinstance(d, BottleneckDefense) and d.channels is None for d in self.defenses)
        std = next((d.std for d in self.defenses if isinstance(d, NoiseDefense)), 0.0)
        if unbounded and std > 0:
            raise ConfigError(
                f"expected --noise-std 0 with --bottleneck none, got {std}: Gaussian noise is only meaningful on "
                "the Sigmoid-bounded bottleneck features (against unbounded ReLU features σ has no fixed scale); "
                "the No_defense baseline is --bottleneck none --noise-std 0 --cem-lambda 0"
            )

    def configure_model(self, config: SplitModelConfig) -> SplitModelConfig:
        for defense in self.defenses:
            config = defense.configure_model(config)
        return config

    def obfuscation(self) -> ObfuscationConfig:
        config = ObfuscationConfig()
        for defense in self.defenses:
            config = defense.configure_obfuscation(config)
        return config

    @property
    def has_loss(self) -> bool:
        """Whether any defense adds a training loss (overrides ``Defense.loss``): under data parallelism
        the trainer then gathers the global batch's images for it."""
        return any(type(d).loss is not Defense.loss for d in self.defenses)

    def loss(self, x: torch.Tensor, z_clean: torch.Tensor) -> torch.Tensor | None:
        terms = [t for t in (d.loss(x, z_clean) for d in self.defenses) if t is not None]
        return torch.stack(terms).sum() if terms else None

    def resolved(self, epochs: int, model: SplitModelConfig) -> DefenseStack:
        """The stack with every defense's run-dependent settings filled in (``PatrolDefense.resolved``)."""
        return DefenseStack(tuple(d.resolved(epochs, model) if isinstance(d, PatrolDefense) else d
                                  for d in self.defenses))

    def create_adversaries(self, setup: ProxySetup) -> list[ProxyAdversary]:
        """The training-only adversaries of the stack (``ressfl``'s proxy), fresh and not yet pre-trained."""
        return [a for a in (d.create_adversary(setup) for d in self.defenses) if a is not None]

    def before_epoch(self, model: SplitModel, epoch: int) -> bool:
        """Every defense's start-of-epoch change; True when any replaced the model's Parameters."""
        changed = [d.before_epoch(model, epoch) for d in self.defenses]
        return any(changed)

    def records(self) -> list[dict[str, Any]]:
        return [d.record() for d in self.defenses]
