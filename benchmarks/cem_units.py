"""What λ means: the CEM pull relative to the task loss, per lr stage, for every loss form.

On one trained encoder (a bundle), for batches of the training split, this
measures the median over batches of

    |λ · s(lr) · ∂L_C/∂z| / |∂L_task/∂z|        (norms over the whole batch's z)

at the reference's five learning-rate stages, for

* ``ref_log_hinge``: the authors' loss (the unit of λ);
* ``paper_diag``: Eq. 7, normalised to paper units (the default);
* ``raw Eq. 7``: Eq. 7 summed over all D dimensions without normalisation, with
  s(lr) = 1 (the previous convention: what the old ``--cem-lambda`` multiplied).

The mixture is fitted on the encoder's clean training features exactly as the
trainer does after an epoch. reference_notes §3.4 measured the authors' own code
on a converged digits encoder (σ = 0.1, k = 5): 0.23, 1.15, 5.7, 11.5 at
lr 0.05, 0.01, 0.002, ≤ 4e-4.

    .venv/bin/python benchmarks/cem_units.py --bundle runs/base --lambda 16 --k 5 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from cem.bundle import load_bundle
from cem.data import load_dataset
from cem.obfuscation import ObfuscationConfig, obfuscate
from training.cem_plugin import CEMConfig, CEMRegularizer

LR_STAGES = (0.05, 0.01, 0.002, 4e-4, 8e-5)
FORMS = ("ref_log_hinge", "paper_diag", "raw_eq7")


class RawEq7(CEMRegularizer):
    """Eq. 7 without the paper-unit normalisation (κ = 1): the previous meaning of λ."""

    def reference_pull_scale(self, counts: torch.Tensor, labels: torch.Tensor, feature_dim: int) -> torch.Tensor:
        return torch.ones_like(counts)


def measure(bundle: Path, lam: float, k: int, batch_size: int, seed: int) -> dict[str, dict[str, float]]:
    """{form: {lr: median ratio}} on the bundle's training split."""
    manifest, model = load_bundle(bundle)
    model.train()  # the pull acts during training: train-mode BN, as the trainer's loss sees it
    dataset, info = load_dataset(manifest.dataset.name, "train")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model.eval()
        features = torch.cat([model.encoder(x) for x, _ in DataLoader(dataset, batch_size=256)])
        labels = torch.cat([y for _, y in DataLoader(dataset, batch_size=256)])
        model.train()
    noise = ObfuscationConfig(noise_std=manifest.noise_std)
    regularizers = {}
    for form in FORMS:
        config = CEMConfig(lam=lam, k=k, loss_form="paper_diag" if form == "raw_eq7" else form,
                           lr_coupling="none" if form == "raw_eq7" else "ref", persist_updates=False)
        cem = (RawEq7 if form == "raw_eq7" else CEMRegularizer)(
            config,
            noise_std=manifest.noise_std,
            num_classes=info.num_classes,
            dataset_size=len(dataset),
            image_dim=info.in_channels * info.image_size**2,
        )
        cem.refit(features, labels, generator=torch.Generator().manual_seed(seed))
        regularizers[form] = cem
    ratios: dict[str, dict[float, list[float]]] = {form: {lr: [] for lr in LR_STAGES} for form in FORMS}
    generator = torch.Generator().manual_seed(seed)
    for x, y in loader:
        z = model.encoder(x).detach().requires_grad_()
        task = F.cross_entropy(model.decoder(obfuscate(z, noise, generator)), y)
        (task_grad,) = torch.autograd.grad(task, z)
        for form, cem in regularizers.items():
            (cem_grad,) = torch.autograd.grad(cem.loss(z, y), z)
            for lr in LR_STAGES:
                ratios[form][lr].append(float(cem.weight(lr) * cem_grad.norm() / task_grad.norm()))
    return {
        form: {f"{lr:g}": statistics.median(values) for lr, values in per_lr.items()} for form, per_lr in ratios.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True, help="a trained bundle (σ > 0)")
    parser.add_argument("--lambda", dest="lam", type=float, default=16.0)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = measure(args.bundle, args.lam, args.k, args.batch_size, args.seed)
    print(f"median |λ·s(lr)·∂L_C/∂z| / |∂L_task/∂z|, λ = {args.lam:g}, k = {args.k}, bundle {args.bundle}")
    print(f"{'form':>14} " + " ".join(f"{'lr ' + lr:>11}" for lr in result["paper_diag"]))
    for form, per_lr in result.items():
        print(f"{form:>14} " + " ".join(f"{v:11.3g}" for v in per_lr.values()))
    ours, ref = result["paper_diag"], result["ref_log_hinge"]
    print(f"{'paper/ref':>14} " + " ".join(f"{ours[lr] / ref[lr]:11.3f}" for lr in ours))
    if args.json:
        print(json.dumps({"lambda": args.lam, "k": args.k, "bundle": str(args.bundle), "ratios": result}))


if __name__ == "__main__":
    main()
