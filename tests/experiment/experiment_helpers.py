"""What the experiment tests share: a small spec and a stand-in for the probe (imported by name)."""

from __future__ import annotations

from collections.abc import Sequence

from experiment.probe import Argv, ProbeResult, Resolution

BASE = """
[experiment]
name = "unit"
datasets = ["digits"]
seeds = [0, 1]

[train]
sigma = 0.1
cem_lambdas = [0, 2]

[[rows]]
label = "Bottleneck"

[[rows]]
label = "Dropout"
defenses = ["dropout:0.2"]

[attacks.decoder]
epochs = 3
"""


def _resolve_train(argv: Sequence[str]) -> Resolution:
    """What the trainer's resolve_config would give, for the flags these tests use."""
    flags: dict[str, list[str]] = {}
    for flag, value in zip(argv[::2], argv[1::2], strict=False):
        flags.setdefault(flag, []).append(value)
    resolved: dict[str, object] = {
        "dataset": flags["--dataset"][0], "seed": int(flags["--seed"][0]), "arch": "vgg11_bn_sgm",
        "cut_layer": int(flags.get("--cut-layer", ["4"])[0]), "noise_std": float(flags.get("--noise-std", ["0.1"])[0]),
        "cem_lambda": float(flags["--cem-lambda"][0]), "defenses": flags.get("--defense", [])}
    if "--nproc" in flags:  # the real probe keys --nproc when it is not 1
        resolved["nproc"] = int(flags["--nproc"][0])
    return Resolution(resolved, None)


def _resolve_attack(argv: Sequence[str]) -> Resolution:
    args = list(argv)
    if "--min-steps" in args and args[args.index("--min-steps") + 1] == "0":  # the real probe keys min_steps 0 as
        del args[args.index("--min-steps"):args.index("--min-steps") + 2]  # no minimum: out of the key
    resolved: dict[str, object] = {"args": args}
    if "--nproc" in argv:  # the real probe keys --nproc when it is not 1
        resolved["nproc"] = int(argv[list(argv).index("--nproc") + 1])
    return Resolution(resolved, None)


def fake_prober(train: Sequence[Argv], attack: Sequence[Argv]) -> ProbeResult:
    return ProbeResult(
        datasets=("digits", "mnist5k"), archs=("resnet20", "vgg11_bn_sgm"),
        defenses=("bottleneck", "distcorr", "dropout", "noise", "ressfl"), field_defenses=("bottleneck", "noise"),
        attacks=("decoder", "gan"),
        train={argv: _resolve_train(argv) for argv in train},
        attack={argv: _resolve_attack(argv) for argv in attack})
