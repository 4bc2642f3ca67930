"""PATROL's channel pruning of the edge, and the optimiser rebuild it needs (reference_notes §4.6, B10).

PATROL (paper ref [7], Table 1) = an extra front conv on the edge (``SplitModelConfig.front_conv``),
ResSFL adversarial training (``training.ressfl``), and, at the start of one epoch, structured
pruning of the edge trunk's output channels, so that the encoder, grown by the front conv, is
no larger than the other defenses' encoders.

* **Which channels.** ``torch.nn.utils.prune.ln_structured`` (L2 norm of each output filter,
  ``round(ratio · channels)`` pruned per conv) chooses them, on a throw-away copy of each conv.
  ``prune.remove`` would only make the zeros permanent in a tensor of the same shape, so the
  encoder would not shrink and the bundle would not say what was pruned; the kept filters are
  therefore copied into a narrower encoder rebuilt from the config (``edge_channels``), the very
  constructor the edge, the cloud and the attacker use on the manifest. The front conv and the
  bottleneck conv are never pruned (the reference protected both); without a bottleneck the last
  trunk conv is kept whole too, since the cloud reads its channels. The importance is the weights'
  norm, not the reference's Taylor score of ``sum(encoder(random input))`` on a fixed 32×32 probe
  (B10's second point): it depends on no probe input and no image size.
* **Ratio.** ``matching_ratio``: the smallest ratio (steps of ``RATIO_STEP``) whose pruned encoder
  has at most the parameters of the same encoder without the front conv; the reference fixed 0.05,
  which leaves VGG11's encoder at 85,583 parameters against the others' 85,256.
* **The optimiser (B10).** Pruning creates new Parameter objects. The reference kept its optimiser,
  which still held the old ones, so the encoder never changed again after the pruning epoch.
  ``carry_optimizer_state`` moves the lr, the schedule position and the momentum of the surviving
  (decoder) parameters to an optimiser built over the model's current parameters; the pruned
  encoder's momentum starts from zero.
"""

from __future__ import annotations

import copy
import dataclasses
import logging

import torch
from torch import nn
from torch.nn.utils import prune

from cem.errors import ConfigError
from cem.models import SplitEncoder, SplitModel, SplitModelConfig

logger = logging.getLogger(__name__)

RATIO_STEP = 0.005
NORM_ORDER = 2


def channels_to_keep(conv: nn.Conv2d, ratio: float) -> torch.Tensor:
    """Sorted indices of the output channels structured L2 pruning keeps at ``ratio`` in [0, 1); ``conv`` untouched."""
    if not 0 <= ratio < 1:
        raise ConfigError(f"expected a prune ratio in [0, 1), got {ratio}")
    probe = copy.deepcopy(conv)
    prune.ln_structured(probe, "weight", amount=ratio, n=NORM_ORDER, dim=0)
    mask: torch.Tensor = probe.get_buffer("weight_mask")  # (out, in, k, k) of 0/1, set by ln_structured
    keep = mask.flatten(1).any(dim=1).nonzero().flatten()
    if keep.numel() == 0:
        raise ConfigError(f"expected a prune ratio that keeps a channel of {conv.out_channels}, got {ratio}")
    return keep


def _trunk_convs(encoder: SplitEncoder) -> list[nn.Conv2d]:
    """The edge trunk's convs in order, PATROL's front conv excluded: the ones ``edge_channels`` counts."""
    convs = [m for m in encoder.features.modules() if isinstance(m, nn.Conv2d)]
    return convs[1:] if encoder.config.front_conv else convs


def _prunable(encoder: SplitEncoder) -> list[nn.Conv2d]:
    convs = _trunk_convs(encoder)
    return convs if encoder.config.has_bottleneck else convs[:-1]


def pruned_config(config: SplitModelConfig, ratio: float) -> SplitModelConfig:
    """The config ``prune_edge`` would leave at ``ratio`` (the channel counts only depend on the widths)."""
    with torch.device("meta"):
        encoder = SplitEncoder(config)
    prunable = {id(conv) for conv in _prunable(encoder)}
    counts = tuple(conv.out_channels - round(ratio * conv.out_channels) if id(conv) in prunable else conv.out_channels
                   for conv in _trunk_convs(encoder))
    if min(counts) < 1:
        raise ConfigError(f"expected a prune ratio that keeps a channel of every conv, got {ratio}")
    return dataclasses.replace(config, edge_channels=counts)


def encoder_parameters(config: SplitModelConfig) -> int:
    """Parameters of the encoder ``config`` builds (built on the meta device: no memory, no init cost)."""
    with torch.device("meta"):
        return sum(p.numel() for p in SplitEncoder(config).parameters())


def matching_ratio(config: SplitModelConfig) -> float:
    """Smallest multiple of ``RATIO_STEP`` whose pruned encoder is no larger than ``config``'s without PATROL."""
    target = encoder_parameters(dataclasses.replace(config, front_conv=False, edge_channels=None))
    for step in range(round(1 / RATIO_STEP)):
        ratio = round(step * RATIO_STEP, 6)
        try:
            if encoder_parameters(pruned_config(config, ratio)) <= target:
                return ratio
        except ConfigError:
            break
    raise ConfigError(f"expected a prune ratio that brings the encoder to {target} parameters, got none below 1")


@torch.no_grad()
def prune_edge(model: SplitModel, ratio: float) -> SplitModelConfig:
    """Replace ``model.encoder`` by one whose trunk convs keep their L2-strongest filters; -> the new config.

    The kept filters, biases and the following BN's statistics are copied, and the next conv's input
    channels sliced to match; the decoder and its parameters are untouched. Every encoder Parameter
    is new afterwards: rebuild the optimiser (``carry_optimizer_state``).
    """
    old = model.encoder
    keeps = {id(conv): channels_to_keep(conv, ratio) for conv in _prunable(old)}
    config = dataclasses.replace(model.config, edge_channels=tuple(
        len(keeps[id(conv)]) if id(conv) in keeps else conv.out_channels for conv in _trunk_convs(old)
    ))
    new = SplitEncoder(config).to(next(old.parameters()).device).train(old.training)
    new.normalize.load_state_dict(old.normalize.state_dict())
    channels: torch.Tensor | None = None  # kept channels of the tensor flowing into the next module; None: all
    for before, after in zip(old.modules(), new.modules(), strict=True):  # a chain: each conv feeds the next
        if isinstance(before, nn.Conv2d) and isinstance(after, nn.Conv2d):
            out = keeps.get(id(before))
            weight = before.weight if out is None else before.weight[out]  # (out, in, k, k)
            after.weight.copy_(weight if channels is None else weight[:, channels])
            if before.bias is not None and after.bias is not None:
                after.bias.copy_(before.bias if out is None else before.bias[out])
            channels = out
        elif isinstance(before, nn.BatchNorm2d) and isinstance(after, nn.BatchNorm2d):
            state = before.state_dict()
            after.load_state_dict({k: v if channels is None or v.ndim == 0 else v[channels] for k, v in state.items()})
        elif list(before.parameters(recurse=False)):
            raise ConfigError(f"expected an edge of convs, BN and parameter-free layers, got {type(before).__name__}")
    model.encoder = new
    model.config = model.decoder.config = config
    logger.info("PATROL pruned the edge at ratio %.3f: channels %s, %d encoder parameters",
                ratio, config.edge_channels, sum(p.numel() for p in new.parameters()))
    return config


def carry_optimizer_state(
    old: torch.optim.Optimizer,
    old_scheduler: torch.optim.lr_scheduler.LRScheduler,
    new: torch.optim.Optimizer,
    new_scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    """Move what ``old`` and its scheduler know to ``new`` (built over the model's current parameters).

    Each group's hyperparameters (its current lr, ``initial_lr``) and the schedule position carry over;
    the per-parameter state (momentum) carries for the parameters ``new`` still holds, by identity.
    """
    if len(old.param_groups) != len(new.param_groups):
        raise ConfigError(f"expected optimisers with as many groups, got {len(old.param_groups)} and "
                          f"{len(new.param_groups)}")
    for before, after in zip(old.param_groups, new.param_groups, strict=True):
        after.update({k: v for k, v in before.items() if k != "params"})
    for group in new.param_groups:
        for param in group["params"]:
            if param in old.state:
                new.state[param] = old.state[param]
    new_scheduler.load_state_dict(old_scheduler.state_dict())
