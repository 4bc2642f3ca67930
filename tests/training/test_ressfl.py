"""ResSFL (a proxy inversion network the encoder trains against), and the Noise_ARL / Noise_Nopeek compositions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from attacker.audit import AuditSpec, run_audit
from cem.bundle import load_bundle
from cem.errors import ConfigError
from cem.manifest import WEIGHT_FILES, Manifest
from cem.metrics import ssim_ref_per_image, ssim_ref_unchecked
from cem.models import InversionConfig, InversionNetwork, SplitModel, SplitModelConfig
from cem.obfuscation import ObfuscationConfig
from edge_client.runtime import EncoderRuntime
from training import TrainConfig, train
from training.cem_plugin import CEMConfig, CEMRegularizer
from training.config import PROFILES
from training.defenses import DefenseStack, ResSFLDefense, parse_defense
from training.loops import train_one_epoch
from training.ressfl import ProxyAdversary, ProxySetup
from training.trainer import build_defenses

SIGMA = 0.1
# a tiny proxy: 1 block of 8 channels, threshold 0 so the penalty is active from the first batch
TINY_RESSFL = "ressfl:1.0,ssim_threshold=0,pretrain_epochs=1,proxy_blocks=1,proxy_channels=8"
CPU = torch.device("cpu")


def tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(16, 1, 32, 32, generator=g), torch.arange(16) % 4


def tiny_model(stack: DefenseStack) -> SplitModel:
    torch.manual_seed(0)
    return SplitModel(stack.configure_model(
        SplitModelConfig(width=0.125, in_channels=1, num_classes=4, mean=(0.3,), std=(0.3,))
    ))


def adversaries_of(stack: DefenseStack, model: SplitModel, loader: DataLoader) -> list[ProxyAdversary]:
    setup = ProxySetup(model.config.feature_shape, 1, 32, stack.obfuscation(), milestones=(), device=CPU)
    torch.manual_seed(5)  # the same proxy initialisation in every run compared
    adversaries = stack.create_adversaries(setup)
    for adversary in adversaries:
        adversary.pretrain(model.encoder, loader, torch.Generator().manual_seed(7))
    return adversaries


class CountingSGD(torch.optim.SGD):
    steps = 0

    def step(self, closure=None):  # type: ignore[no-untyped-def, override]
        self.steps += 1
        return super().step(closure)


def one_step(specs: tuple[str, ...], cem_lambda: float = 0.0) -> tuple[dict[str, torch.Tensor], dict[str, float], int]:
    """One real training step at lr 0 (weights unchanged, gradients kept): the encoder's gradient and stats."""
    stack = build_defenses(TrainConfig(noise_std=SIGMA, defenses=specs, cem_lambda=0.0))
    model = tiny_model(stack)
    x, y = tiny_batch()
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    adversaries = adversaries_of(stack, model, loader)
    cem = None
    if cem_lambda:
        cem = CEMRegularizer(CEMConfig(lam=cem_lambda, k=1, lr_coupling="none"), noise_std=SIGMA, num_classes=4,
                             dataset_size=16, image_dim=32 * 32)
        with torch.no_grad():
            cem.refit(model.encoder(x).flatten(1), y)
    optimizer = CountingSGD(model.parameters(), lr=0.0)
    torch.manual_seed(9)  # the decoder's dropout draws the same mask in every run compared
    stats = train_one_epoch(model, loader, optimizer, obfuscation=stack.obfuscation(), defenses=stack, cem=cem,
                            cem_weight=cem_lambda, generator=torch.Generator().manual_seed(2), device=CPU,
                            adversaries=adversaries)
    grads = {name: p.grad.clone() for name, p in model.encoder.named_parameters() if p.grad is not None}
    return grads, stats, optimizer.steps


def difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: a[name] - b[name] for name in a}


def norm(grads: dict[str, torch.Tensor]) -> float:
    return float(torch.stack([g.norm() for g in grads.values()]).norm())


def test_the_default_proxy_is_the_references_res_normN4C64() -> None:
    defense = ResSFLDefense(weight=0.3)
    config = InversionConfig(num_blocks=defense.proxy_blocks, channels=defense.proxy_channels)
    assert sum(p.numel() for p in InversionNetwork(config).parameters()) == 415_091  # reference_notes §4.5
    assert (defense.pretrain_epochs, defense.proxy_lr, defense.ssim_threshold) == (30, 1e-3, None)


def test_ressfl_changes_the_encoders_gradient_by_exactly_its_penalty() -> None:
    plain, _, _ = one_step(())
    with_ressfl, stats, steps = one_step((TINY_RESSFL,))
    assert steps == 1 and stats["proxy_penalty"] > 0
    assert norm(difference(with_ressfl, plain)) > 1e-3 * norm(plain)
    # the change is the gradient of weight · max(SSIM − 0, 0) through the noisy features
    stack = build_defenses(TrainConfig(noise_std=SIGMA, defenses=(TINY_RESSFL,), cem_lambda=0.0))
    model = tiny_model(stack)
    x, y = tiny_batch()
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    (adversary,) = adversaries_of(stack, model, loader)
    model.train()
    sent = model.encoder(x)
    sent = sent + SIGMA * torch.randn(sent.shape, generator=torch.Generator().manual_seed(2))
    adversary.update(x, sent)
    penalty, ssim = adversary.penalty(x, sent)
    assert float(penalty.detach()) == pytest.approx(float(ssim)) == pytest.approx(stats["proxy_ssim"], rel=1e-5)
    names = [name for name, _ in model.encoder.named_parameters()]
    expected = dict(zip(names, torch.autograd.grad(penalty, list(model.encoder.parameters())), strict=True))
    for name, grad in difference(with_ressfl, plain).items():
        assert torch.allclose(grad, expected[name], atol=1e-6), name


def test_the_proxy_is_fitted_on_the_features_the_decoder_receives() -> None:
    stack = build_defenses(TrainConfig(noise_std=SIGMA, defenses=(TINY_RESSFL,), cem_lambda=0.0))
    model = tiny_model(stack)
    x, y = tiny_batch()
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    events: list[tuple[str, torch.Tensor]] = []
    model.encoder.register_forward_hook(lambda m, i, o: events.append(("encoder", o.detach().clone())))
    model.decoder.register_forward_pre_hook(lambda m, i: events.append(("decoder", i[0].detach().clone())))
    setup = ProxySetup(model.config.feature_shape, 1, 32, stack.obfuscation(), milestones=(), device=CPU)
    (adversary,) = stack.create_adversaries(setup)
    adversary.proxy.register_forward_pre_hook(lambda m, i: events.append(("proxy", i[0].detach().clone())))
    adversary.pretrain(model.encoder, loader, torch.Generator().manual_seed(7))
    assert [kind for kind, _ in events] == ["encoder", "proxy"] * 2
    for (_, clean), (_, fitted) in zip(events[0::2], events[1::2], strict=True):
        assert float((fitted - clean).std()) == pytest.approx(SIGMA, rel=0.1)  # the bundle's σ, not clean z
    events.clear()
    train_one_epoch(model, loader, torch.optim.SGD(model.parameters(), lr=0.01), obfuscation=stack.obfuscation(),
                    defenses=stack, cem=None, cem_weight=0.0, generator=torch.Generator().manual_seed(2),
                    device=CPU, adversaries=[adversary])
    assert [kind for kind, _ in events] == ["encoder", "decoder", "proxy", "proxy"] * 2  # update, then penalty
    for i in range(0, len(events), 4):
        clean, sent, fitted, penalised = (t for _, t in events[i : i + 4])
        assert torch.equal(fitted, sent) and torch.equal(penalised, sent)  # the very noise draw the server sees
        assert float((sent - clean).std()) == pytest.approx(SIGMA, rel=0.1)


def test_ressfl_and_cem_add_up_in_one_backward_and_one_step() -> None:
    plain, _, _ = one_step(())
    cem_only, cem_stats, _ = one_step((), cem_lambda=4.0)
    ressfl_only, _, _ = one_step((TINY_RESSFL,))
    both, stats, steps = one_step((TINY_RESSFL,), cem_lambda=4.0)
    assert steps == 1 and stats["cem_loss"] == pytest.approx(cem_stats["cem_loss"]) and stats["proxy_penalty"] > 0
    from_cem, from_ressfl = difference(cem_only, plain), difference(ressfl_only, plain)
    assert min(norm(from_cem), norm(from_ressfl)) > 1e-3 * norm(plain)  # both terms contribute
    for name, grad in difference(both, plain).items():
        assert torch.allclose(grad, from_cem[name] + from_ressfl[name], atol=1e-6), name


def test_penalty_is_zero_below_the_threshold_and_the_proxy_gets_no_gradient_from_it() -> None:
    setup = ProxySetup((8, 8, 8), 1, 32, ObfuscationConfig(noise_std=SIGMA), milestones=(), device=CPU)
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    z = torch.rand(4, 8, 8, 8, requires_grad=True)
    above = ResSFLDefense(weight=2.0, ssim_threshold=0.0, proxy_blocks=0, proxy_channels=4).create_adversary(setup)
    penalty, ssim = above.penalty(x, z)
    assert float(penalty.detach()) == pytest.approx(2.0 * max(float(ssim), 0.0))
    penalty.backward()
    assert z.grad is not None and all(p.grad is None for p in above.proxy.parameters())
    below = ResSFLDefense(weight=2.0, ssim_threshold=0.99, proxy_blocks=0, proxy_channels=4).create_adversary(setup)
    assert float(below.penalty(x, z)[0].detach()) == 0.0
    recon = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ssim_ref_unchecked(recon, x), ssim_ref_per_image(recon, x))  # the paper's SSIM scale


def test_spec_grammar_sets_every_recorded_field_and_rejects_the_rest() -> None:
    defense = parse_defense("ressfl:0.3,ssim_threshold=0.6,pretrain_epochs=5,proxy_channels=16")
    assert defense.record() == {"name": "ressfl", "weight": 0.3, "ssim_threshold": 0.6, "pretrain_epochs": 5,
                                "proxy_blocks": 4, "proxy_channels": 16, "proxy_lr": 1e-3}
    assert type(parse_defense("ressfl:1,pretrain_epochs=2").pretrain_epochs) is int  # type: ignore[attr-defined]
    for spec, message in (("ressfl:0.3,depth=2", "expected ',field=value' once per field of ressfl"),
                          ("ressfl:0.3,pretrain_epochs", "got 'pretrain_epochs'"),
                          ("ressfl:0.3,proxy_lr=1e-3,proxy_lr=1e-2", "once per field"),
                          ("ressfl:0.3,weight=0.2", "once per field"),
                          ("ressfl:0.3,pretrain_epochs=two", "expected a number for ressfl's pretrain_epochs"),
                          ("ressfl:0", "expected ressfl weight > 0"),
                          ("ressfl:0.3,ssim_threshold=1", r"ssim_threshold in \[0, 1\)"),
                          ("dropout:0.2,p=0.3", "once per field of dropout")):
        with pytest.raises(ConfigError, match=message):
            parse_defense(spec)
    with pytest.raises(ConfigError, match="resolved ressfl ssim_threshold"):
        ResSFLDefense(weight=0.3).create_adversary(
            ProxySetup((8, 8, 8), 1, 32, ObfuscationConfig(), milestones=(), device=CPU)
        )


def test_only_the_ressfl_threshold_depends_on_the_data_set_never_the_nopeek_weight() -> None:
    for dataset in PROFILES:
        records = build_defenses(TrainConfig(dataset=dataset, noise_std=0.025, cem_lambda=0.0,
                                             defenses=("distcorr:0.3", "ressfl:0.3"))).records()
        assert records[2] == {"name": "distcorr", "weight": 0.3}, dataset  # B15: no per-data-set scaling
        expected = 0.6 if dataset in ("facescrub", "tinyimagenet") else 0.5  # reference_notes §4.5
        assert records[3]["ssim_threshold"] == expected, dataset
    explicit = build_defenses(TrainConfig(dataset="digits", noise_std=0.1, cem_lambda=0.0,
                                          defenses=("ressfl:0.3,ssim_threshold=0.7",)))
    assert explicit.records()[-1]["ssim_threshold"] == 0.7


SHORT_RUN = {"dataset": "digits", "width": 0.125, "noise_std": SIGMA, "progress": False, "device": "cpu", "seed": 1}
ARL_SPEC = "ressfl:0.5,pretrain_epochs=1,proxy_blocks=0,proxy_channels=8"


def test_noise_arl_trains_and_every_party_rebuilds_the_recorded_settings(tmp_path: Path) -> None:
    result = train(TrainConfig(out_dir=tmp_path / "arl", defenses=(ARL_SPEC,), cem_lambda=0.0, epochs=1, **SHORT_RUN))
    record = {"name": "ressfl", "weight": 0.5, "ssim_threshold": 0.5, "pretrain_epochs": 1, "proxy_blocks": 0,
              "proxy_channels": 8, "proxy_lr": 1e-3}  # the digits threshold, filled in by the trainer
    assert result.manifest.defenses == [{"name": "noise", "std": SIGMA}, {"name": "bottleneck", "channels": 8}, record]
    assert 0 < result.history[0]["proxy_ssim"] < 1 and "proxy_penalty" in result.history[0]
    assert sorted(p.name for p in result.bundle.iterdir() if p.suffix == ".safetensors") == sorted(
        WEIGHT_FILES.values())  # the proxy is training-only
    raw = json.loads((result.bundle / "manifest.json").read_text())
    assert Manifest.from_dict(raw).defenses[-1] == record and Manifest.from_dict(raw).to_dict() == raw
    manifest, _ = load_bundle(result.bundle)
    assert manifest.defenses == result.manifest.defenses
    edge = EncoderRuntime(result.bundle, seed=0)  # the edge applies the noise and nothing else
    assert edge.manifest.defenses[-1] == record and edge.obfuscation == ObfuscationConfig(noise_std=SIGMA)
    assert tuple(edge.encode(torch.rand(2, 1, 32, 32)).shape) == (2, 8, 8, 8)
    audit = run_audit(AuditSpec(bundle_dir=result.bundle, epochs=1, device="cpu", network_channels=8,
                                network_blocks=0))
    assert audit.details["defenses"][-1] == record and audit.details["noise_std"] == SIGMA


@pytest.mark.slow
def test_noise_arl_with_cem_trains_both_terms_in_the_same_epochs(tmp_path: Path) -> None:
    spec = ARL_SPEC + ",ssim_threshold=0.1"  # below digits' proxy SSIM, so the penalty acts
    result = train(TrainConfig(out_dir=tmp_path / "arl-cem", defenses=(spec,), cem_lambda=2.0, epochs=2, **SHORT_RUN))
    last = result.history[-1]
    assert last["cem_weight"] > 0 and last["cem_loss"] > 0 and last["proxy_penalty"] > 0
    assert result.manifest.cem is not None and result.manifest.defenses[-1]["ssim_threshold"] == 0.1


def test_noise_nopeek_trains_a_short_digits_run(tmp_path: Path) -> None:
    result = train(TrainConfig(out_dir=tmp_path / "nopeek", defenses=("distcorr:0.3",), cem_lambda=0.0, epochs=2,
                               **SHORT_RUN))
    assert result.manifest.defenses == [{"name": "noise", "std": SIGMA}, {"name": "bottleneck", "channels": 8},
                                        {"name": "distcorr", "weight": 0.3}]
    assert result.manifest.cem is None and result.history[1]["train_loss"] < result.history[0]["train_loss"]
    assert "proxy_ssim" not in result.history[-1]
