"""``cem-train``: train a split classifier with defenses and CEM, write a bundle.

    cem-train --dataset digits --out runs/digits
    cem-train --dataset digits --cem-lambda 0 --defense dropout:0.2 --json --out runs/base
    cem-train --dataset digits --noise-std 0.1 --defense ressfl:0.3 --out runs/noise-arl
    cem-train --dataset digits --nproc 2 --threads 1 --out runs/ddp      # DistributedDataParallel, 2 processes
    torchrun --nproc_per_node 2 $(which cem-train) --dataset digits --out runs/ddp   # the same, launched by hand

With ``--json`` the last stdout line is one JSON object with at least
``accuracy``, ``model_id``, ``bundle`` and ``entropy_bound``. Progress goes to
stderr. Exit status 2 means a configuration or data error, 1 a failure while
running (message on stderr; ``cem.cli`` holds the convention). Under torchrun
only rank 0 prints, logs and writes; ``--batch-size`` is the global batch
(``training.data_parallel``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import NoReturn

from cem.cli import run_cli
from cem.data import available_datasets
from cem.devices import DEVICE_CHOICES, resolve_device
from cem.distributed import launch_env_rank
from cem.launch import check_devices, exit_command, relaunch, run_or_relaunch
from cem.models import available_archs
from cem.threads import THREADS_HELP, apply_threads
from training.cem_plugin import FEATURE_SOURCES, LOSS_FORMS, LR_COUPLINGS, CEMConfig
from training.config import TrainConfig, resolve_config
from training.data_parallel import check_data_parallel
from training.defenses import available_defenses
from training.trainer import build_defenses, train

logger = logging.getLogger("training.cli")

WORKER_MODULE = "training.cli"  # what ``--nproc N`` starts N of, through torchrun (``cem.launch``)


def bottleneck_arg(value: str) -> int | None:
    """``"none"`` -> None (no bottleneck); else an integer. The range is checked once, by ``TrainConfig``."""
    if value.strip().lower() == "none":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a channel count >= 1 or 'none', got {value!r}") from None


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cem-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default=TrainConfig.dataset, choices=available_datasets())
    data.add_argument("--data-dir", type=Path, default=TrainConfig.data_dir, help="folder holding the data set's files")
    data.add_argument("--download", action="store_true", help="fetch CIFAR through torchvision (needs internet)")
    data.add_argument("--augment", action=argparse.BooleanOptionalAction, default=TrainConfig.augment,
                      help="default: per data set")
    data.add_argument("--workers", type=int, default=TrainConfig.workers, help="DataLoader worker processes")
    data.add_argument("--validation-fraction", type=float, default=TrainConfig.validation_fraction,
                      help="hold out this share of the training split (a fixed permutation) and report val_accuracy; "
                           "use it to choose settings, never the test split")
    model = parser.add_argument_group("model")
    model.add_argument("--arch", choices=available_archs(), default=TrainConfig.arch,
                       help="split backbone (default: per data set, resnet20 on tinyimagenet, else vgg11_bn_sgm)")
    model.add_argument("--cut-layer", type=int, default=TrainConfig.cut_layer,
                       help="backbone entries on the edge: VGG convs and pools (1-12, default 4) or the ResNet-20 "
                            "stem and blocks (1-9, default 5)")
    model.add_argument("--bottleneck", type=bottleneck_arg, default=TrainConfig.bottleneck,
                       help="channels of the edge bottleneck (a defense), or 'none' for the No_defense baseline")
    model.add_argument(
        "--width", type=float, default=TrainConfig.width, help="channel multiplier (default: per data set)"
    )
    defense = parser.add_argument_group("defenses")
    defense.add_argument(
        "--noise-std",
        type=float,
        default=TrainConfig.noise_std,
        help="σ of Gaussian noise on the sent features, a standard deviation as in the paper "
        "(default: per data set; the paper's 0.025 on CIFAR/FaceScrub/TinyImageNet, 0.1 on digits)",
    )
    defense.add_argument("--defense", action="append", default=[], metavar="NAME:STRENGTH[,FIELD=VALUE...]",
                         help=f"repeatable; one of {available_defenses()}, e.g. dropout:0.2 topk:0.5 distcorr:0.3 "
                              "ressfl:0.3 (ResSFL; with --noise-std > 0 the paper's Noise_ARL) or "
                              "ressfl:0.3,ssim_threshold=0.6,pretrain_epochs=10, patrol:0.3 (PATROL: ResSFL, a "
                              "front conv and channel pruning; VGG11 only) (docs/training.md)")
    cem = parser.add_argument_group("CEM")
    cem.add_argument("--cem-lambda", type=float, default=CEMConfig.lam,
                     help="the paper's λ (as in the authors' code: 16 is the paper's default); 0 disables "
                          "(default: per data set, 16 except digits)")
    cem.add_argument("--cem-k", type=int, default=CEMConfig.k, help="mixture components per class")
    cem.add_argument("--cem-loss", choices=LOSS_FORMS, default=CEMConfig.loss_form)
    cem.add_argument("--cem-on", choices=FEATURE_SOURCES, default=CEMConfig.evaluate_on,
                     help="evaluate L_C on clean or noisy features")
    cem.add_argument("--cem-lr-coupling", choices=LR_COUPLINGS, default=CEMConfig.lr_coupling,
                     help="'ref' (the paper's λ): L_C's gradient scaled by 0.001/lr until lr < 4.1e-4, as in the "
                          "authors' code; 'none': λ is the weight at every lr")
    cem.add_argument("--cem-warmup-epochs", type=int, default=CEMConfig.warmup_epochs,
                     help="epochs without L_C before the first mixture")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="default: per data set")
    optim.add_argument("--batch-size", type=int, default=TrainConfig.batch_size,
                       help="the global batch: with N processes each takes batch-size / N per step")
    optim.add_argument("--lr", type=float, default=TrainConfig.lr)
    optim.add_argument("--momentum", type=float, default=TrainConfig.momentum)
    optim.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    run = parser.add_argument_group("run")
    run.add_argument("--seed", type=int, default=TrainConfig.seed)
    run.add_argument("--device", choices=DEVICE_CHOICES, default=TrainConfig.device)
    run.add_argument("--threads", type=int, default=None, help=THREADS_HELP + "; per process")
    run.add_argument("--nproc", type=int, default=1,
                     help="train with DistributedDataParallel on this many local processes (re-launches itself "
                          "through torchrun; gloo on CPU, NCCL with one GPU per process)")
    run.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    run.add_argument("--json", action="store_true", help="print the result as one JSON line (last stdout line)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run.add_argument("-v", "--verbose", action="store_true", help="log every epoch")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    cem = CEMConfig(
        lam=args.cem_lambda,
        k=args.cem_k, loss_form=args.cem_loss, evaluate_on=args.cem_on,
        lr_coupling=args.cem_lr_coupling, warmup_epochs=args.cem_warmup_epochs,
    )
    return TrainConfig(
        dataset=args.dataset,
        out_dir=args.out,
        data_dir=args.data_dir,
        download=args.download,
        arch=args.arch,
        cut_layer=args.cut_layer,
        bottleneck=args.bottleneck,
        width=args.width,
        noise_std=args.noise_std,
        defenses=tuple(args.defense),
        cem=cem,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        augment=args.augment,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
        device=args.device,
        workers=args.workers,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    apply_threads(args.threads)
    summary = train(config_from_args(args)).to_dict()
    if launch_env_rank() != 0:  # every rank returns rank 0's result; one prints it
        return 0
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"accuracy {summary['accuracy']:.4f}  entropy bound {summary['entropy_bound']}  "
              f"model {summary['model_id']}  bundle {summary['bundle']}  ({summary['duration_s']:.1f} s)")
    return 0


def launch(args: argparse.Namespace, argv: list[str]) -> int:
    """``--nproc N``: check the configuration once here, then run N workers through torchrun."""
    config = resolve_config(config_from_args(args))
    check_data_parallel(config.batch_size, build_defenses(config), args.nproc)
    check_devices(args.nproc, resolve_device(config.device))
    return relaunch(args.nproc, argv, WORKER_MODULE)


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    verbose = args.verbose and launch_env_rank() == 0  # ranks > 0 keep to warnings and errors
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def body() -> int:
        return run_or_relaunch(args.nproc, argv, run=lambda: run(args), launch=lambda workers: launch(args, workers))

    return run_cli(parser.prog, body)


def entry() -> NoReturn:
    """``cem-train`` and ``python -m training.cli`` (torchrun's workers): ``main``, then ``exit_command``."""
    exit_command(main())


if __name__ == "__main__":
    entry()
