"""PATROL's channel pruning of the edge, and the optimiser rebuild it needs (reference_notes §4.6, B10).

PATROL (paper ref [7], Table 1) = an extra front conv on the edge (``SplitModelConfig.front_conv``),
ResSFL adversarial training (``training.ressfl``), and, at the start of one epoch, structured
pruning of the edge's channels, so that the encoder, grown by the front conv, is no larger
than the other defenses' encoders. Which channels may go is the arch's to say
(``SplitArch.prune_groups``): on VGG11 each trunk conv's outputs (read by the next conv), on
ResNet-20 each edge block's inner channels (read by the block's second conv; a block's output
is tied to its shortcut, and stays whole).

* **Which channels.** ``torch.nn.utils.prune.ln_structured`` (L2 norm of each output filter,
  ``round(ratio · channels)`` pruned per conv) chooses them, on a throw-away copy of each conv.
  ``prune.remove`` would only make the zeros permanent in a tensor of the same shape, so the
  encoder would not shrink and the bundle would not say what was pruned; the kept filters are
  therefore copied into a narrower encoder rebuilt from the config (``edge_channels``), the very
  constructor the edge, the cloud and the attacker use on the manifest. The front conv, the stem
  and the bottleneck conv are never pruned (the reference protected all three); without a
  bottleneck VGG's last trunk conv is kept whole too, since the cloud reads its channels. The importance is the weights'
  norm, not the reference's Taylor score of ``sum(encoder(random input))`` on a fixed 32×32 probe
  (B10's second point): it depends on no probe input and no image size.
* **Ratio.** ``matching_ratio``: the smallest ratio (steps of ``RATIO_STEP``) whose pruned encoder
  has at most the parameters of the same encoder without the front conv; the reference fixed 0.05,
  which leaves VGG11's encoder at 85,583 parameters against the others' 85,256 (ResNet-20 at
  cut 5: 0.02, 112,320 against 112,472).
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
from cem.models.archs import PruneGroup, get_arch

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


def _groups(encoder: SplitEncoder) -> list[PruneGroup]:
    """The edge's channel groups, in the order ``edge_channels`` counts them (the arch knows its layout)."""
    return get_arch(encoder.config.arch).prune_groups(encoder)


def pruned_config(config: SplitModelConfig, ratio: float) -> SplitModelConfig:
    """The config ``prune_edge`` would leave at ``ratio`` (the channel counts only depend on the widths)."""
    with torch.device("meta"):
        encoder = SplitEncoder(config)
    counts = tuple(g.conv.out_channels - round(ratio * g.conv.out_channels) if g.consumer is not None
                   else g.conv.out_channels for g in _groups(encoder))
    if not counts or min(counts) < 1:
        raise ConfigError(f"expected a prune ratio that keeps a channel of every conv, got {ratio}")
    return dataclasses.replace(config, edge_channels=counts)


def encoder_parameters(config: SplitModelConfig) -> int:
    """Parameters of the encoder ``config`` builds (built on the meta device: no memory, no init cost)."""
    with torch.device("meta"):
        return sum(p.numel() for p in SplitEncoder(config).parameters())


def matching_ratio(config: SplitModelConfig) -> float:
    """Smallest multiple of ``RATIO_STEP`` whose pruned encoder is no larger than ``config``'s without PATROL."""
    if not get_arch(config.arch).edge_widths(config):
        raise ConfigError(f"expected an edge with channels patrol can prune, got none in {config.arch} at cut "
                          f"{config.cut_layer} (at cut 1 ResNet-20's edge is its stem, never pruned)")
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
    """Replace ``model.encoder`` by one whose channel groups keep their L2-strongest filters; -> the new config.

    Per group, the kept filters of its conv (weights, bias), the matching entries of its BN (affine
    and running statistics) and the matching input channels of the conv that reads it are copied;
    every other tensor is copied whole, and the decoder is untouched. Every encoder Parameter is new
    afterwards: rebuild the optimiser (``carry_optimizer_state``).
    """
    old = model.encoder
    groups = _groups(old)
    keeps = {group: channels_to_keep(group.conv, ratio) for group in groups if group.consumer is not None}
    config = dataclasses.replace(model.config, edge_channels=tuple(
        len(keeps[group]) if group in keeps else group.conv.out_channels for group in groups
    ))
    if not keeps:
        raise ConfigError(f"expected an edge with channels to prune, got none at cut {config.cut_layer}")
    new = SplitEncoder(config).to(next(old.parameters()).device).train(old.training)
    outputs: dict[int, torch.Tensor] = {}  # id(module) -> kept output channels (dim 0 of each of its tensors)
    inputs: dict[int, torch.Tensor] = {}  # id(conv) -> kept input channels (dim 1 of its weight)
    for group, keep in keeps.items():
        outputs[id(group.conv)] = keep
        if group.norm is not None:
            outputs[id(group.norm)] = keep
        inputs[id(group.consumer)] = keep
    targets = dict(new.named_modules())
    for name, before in old.named_modules():
        after = targets[name]
        kept_out, kept_in = outputs.get(id(before)), inputs.get(id(before))
        tensors = [*before.named_parameters(recurse=False), *before.named_buffers(recurse=False)]
        for key, value in tensors:
            if kept_out is not None and value.ndim >= 1:
                value = value[kept_out]
            if kept_in is not None and value.ndim >= 2:
                value = value[:, kept_in]
            target = getattr(after, key)
            if target.shape != value.shape:
                raise ConfigError(f"expected {name}.{key} of shape {tuple(target.shape)} after pruning, "
                                  f"got {tuple(value.shape)}")
            target.copy_(value)
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
