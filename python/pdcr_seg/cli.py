"""The `pdcr-seg` command (also `python -m pdcr_seg`): train, eval, predict, experiment.

    pdcr-seg train --data nuclei --model unet --width 16 --pdcr --uafr --epochs 10 --out runs/a
    pdcr-seg eval --checkpoint runs/a/checkpoint_best.pt --out runs/a/eval
    pdcr-seg predict --checkpoint runs/a/checkpoint_best.pt --input images/ --out runs/a/masks
    pdcr-seg models                                            (parameters and FLOPs, Table IV)
    pdcr-seg nnunet install | uninstall | convert              (PDCR and UAFR in nnU-Net v2)
    torchrun --nproc_per_node=2 -m pdcr_seg train ...          (DistributedDataParallel)

Bad input (a missing folder, images without masks, an unknown model, a bad setting, an --out
that holds an earlier run) prints one line to stderr and exits with status 2; set
PDCR_SEG_TRACEBACK=1 to see the traceback instead. Ctrl-C prints one line (for train: how to
resume) and exits with status 130.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .config import FIELDS, ConfigError, TrainConfig, from_dict, from_run, load_yaml


def _pair(text: str) -> list[str]:
    parts = text.split(":")
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"expected LAYER_A:LAYER_B, got {text!r}")
    return parts


def _count_or(word: str):
    """An argparse type: an integer, or `word` (which means None: the setting's other meaning)."""
    def parse(text: str):
        if text == word:
            return None
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer or {word}, got {text!r}") from None
    return parse


def _add_train_options(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: only the options given on the command line override the config file and defaults
    S = argparse.SUPPRESS
    d = TrainConfig()
    p.add_argument("--config", default=S, metavar="FILE.yaml", help="settings; the command line overrides them")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=S, help=f"synthetic, nuclei, lung-ct (CT of 4 patients, licence CC BY-NC 3.0: "
                                              f"non-commercial use only), bacteria or folder:PATH (default {d.data})")
    g.add_argument("--fold", type=int, default=S, help="lung-ct: test patient 0-3, validation the next (default 0)")
    g.add_argument("--dims", type=int, choices=[2, 3], default=S, help="2: images (default); 3: volumes")
    g.add_argument("--image-size", type=int, default=S, help=f"side of the square tiles (default {d.image_size})")
    g.add_argument("--patch-size", type=int, nargs=3, default=S, metavar=("D", "H", "W"),
                   help="3-D: training crops and sliding-window size (default 16 32 32)")
    g.add_argument("--samples-per-epoch", type=int, default=S, help="3-D: random crops per epoch (default 32)")
    g.add_argument("--num-classes", type=int, default=S, help="classes (default: the data's)")
    g.add_argument("--fraction", type=float, default=S, help="train on this fraction of the training split")
    g.add_argument("--no-augment", dest="augment", action="store_false", default=S,
                   help="no augmentation (default: the paper's)")
    g.add_argument("--ignore-index", type=int, default=S, help="label value of unlabelled pixels")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=S, help=f"unet, fcn, deeplabv3plus, deeplabv3plus_resnet, "
                                               f"monai.BasicUNet, monai.UNet (default {d.model})")
    g.add_argument("--width", type=int, default=S, help="base width (default: the model's, 64)")
    g = p.add_argument_group("PDCR and UAFR")
    g.add_argument("--pdcr", action="store_true", default=S,
                   help="add PDCR (the paper's main setting: encoder stages 2-4, decoder stages, pair 2:3)")
    g.add_argument("--pdcr-preset", choices=["paper", "encoder"], default=S,
                   help="PDCR's layers: paper (default) or encoder (stages 2-4 and the pair, no decoder)")
    g.add_argument("--pdcr-mode", choices=["hierarchical", "receptive_field"], default=S)
    g.add_argument("--pdcr-weight", type=float, default=S, help=f"weight of eq. 12 (default {d.pdcr_weight})")
    g.add_argument("--pdcr-layers", nargs="+", default=S, metavar="LAYER")
    g.add_argument("--pdcr-cross", nargs="*", type=_pair, default=S, metavar="A:B",
                   help="cross-layer pairs (default: encoder stages 2:3; none: give the flag alone)")
    g.add_argument("--pdcr-decoder", action="store_true", default=S, help="H-PDCR on the decoder stages too")
    g.add_argument("--pdcr-samples", nargs="+", type=int, default=S, metavar="N",
                   help="N per layer, the last repeating (default 128 64 32 8)")
    g.add_argument("--pdcr-dense", action="store_true", default=S, help="every position of each PDCR layer")
    g.add_argument("--pdcr-pair-reduction", choices=["sum", "mean"], default=S)
    g.add_argument("--pdcr-patch-reduction", choices=["mean", "sum"], default=S,
                   help="over the patch series: mean (default; Section V-C2 (3)) or sum (eq. 12 as printed)")
    g.add_argument("--pdcr-tau", type=float, default=S, help=f"temperature of eq. 9 (default {d.pdcr_tau}, the authors')")
    g.add_argument("--pdcr-cross-samples", type=_count_or("own"), default=S, metavar="N|own",
                   help=f"N on each layer of a cross-layer pair (default {d.pdcr_cross_samples}; own: each layer's N)")
    g.add_argument("--pdcr-target-ratio", type=float, default=S, metavar="R",
                   help="set the PDCR weight so that ||grad PDCR|| / ||grad seg|| is R (seg: CE or Dice + CE): measured over the first "
                        "--pdcr-calibration-steps steps at --pdcr-weight (which train with the segmentation loss alone), "
                        "then weight x R / their median, fixed")
    g.add_argument("--pdcr-calibration-steps", type=int, default=S,
                   help=f"steps measured for --pdcr-target-ratio (default {d.pdcr_calibration_steps})")
    g.add_argument("--uafr", action="store_true", default=S, help="add UAFR (every encoder and decoder stage)")
    g.add_argument("--uafr-layers", nargs="+", default=S, metavar="LAYER")
    g.add_argument("--uafr-hidden", type=_count_or("wide"), default=S, metavar="N|wide",
                   help=f"hidden channels of UAFR's head (default {d.uafr_hidden}, the authors'; wide: min(C, 64))")
    g.add_argument("--balance-every", type=int, default=S, metavar="K",
                   help=f"with PDCR: measure ||grad PDCR|| and the segmentation loss's ||grad seg|| at step 0 and every K steps "
                        f"(default {d.balance_every}; 0: never)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=S, help=f"(default {d.epochs})")
    g.add_argument("--max-steps", type=int, default=S, help="stop after this many steps in all")
    g.add_argument("--batch-size", type=int, default=S, help=f"(default {d.batch_size})")
    g.add_argument("--lr", type=float, default=S, help=f"(default {d.lr})")
    g.add_argument("--weight-decay", type=float, default=S, help=f"(default {d.weight_decay})")
    g.add_argument("--dice-loss", action="store_true", default=S, help="MONAI DiceCELoss instead of cross-entropy")
    g.add_argument("--seed", type=int, default=S, help=f"(default {d.seed})")
    g = p.add_argument_group("machinery")
    g.add_argument("--device", default=S, help="auto, cpu, cuda or cuda:N (default auto)")
    g.add_argument("--amp", action="store_true", default=S, help="bfloat16 autocast")
    g.add_argument("--sync-bn", action="store_true", default=S, help="SyncBatchNorm across processes (CUDA)")
    g.add_argument("--workers", type=int, default=S, help="data loader processes (default 0)")
    g.add_argument("--overlays", type=int, default=S, help=f"test tiles drawn (default {d.overlays})")
    p.add_argument("--out", default=S, help="run directory, new or empty (default: a new runs/<date>-<time>-<model>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUT exactly where its last finished epoch left it (its settings; "
                        "--epochs / --max-steps may extend it: the cosine schedule is stretched to the new length; "
                        "a --max-steps stop counted its epoch as done)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in OUT (its files are removed once the new run's settings and data "
                        "are checked); without it a non-empty OUT is refused")


def train_config(args: argparse.Namespace) -> TrainConfig:
    """Defaults < OUT/config.yaml (with --resume) < --config FILE < the command line."""
    given = {k: v for k, v in vars(args).items() if k in FIELDS}
    base = TrainConfig()
    if getattr(args, "resume", False):
        if "out" not in given:
            raise ConfigError("--resume needs --out RUN_FOLDER: the run to continue")
        saved = Path(given["out"]) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume: {saved} does not exist (no run to continue in {saved.parent})")
        base = from_run(load_yaml(saved), source=str(saved))  # an older run: with its own values
    if hasattr(args, "config"):
        base = from_dict(load_yaml(args.config), base, source=f"config file {args.config}")
    return from_dict(given, base).validate()


def _device(name: str):
    from .config import check_device
    from .distributed import resolve_device

    check_device(name)
    return resolve_device(name)


def cmd_train(args) -> int:
    cfg = train_config(args)  # first: a bad setting is refused before torch and MONAI are imported
    from .train import train

    train(cfg, resume=args.resume, overwrite=args.overwrite)
    return 0


def cmd_eval(args) -> int:
    from . import distributed
    from .data import build_datasets
    from .evaluate import evaluate, inference_roi, load_run
    from .train import write_overlays

    from .config import absolute_data_spec
    from .figures import fmt
    from .rundir import check_output_folder, write_text

    out = Path(args.out)
    check_output_folder(out, overwrite=args.overwrite)
    device = _device(args.device)
    model, handle, cfg, state = load_run(args.checkpoint, device)
    data = absolute_data_spec(args.data or cfg.data)
    bundle = build_datasets(data, image_size=cfg.image_size, seed=cfg.seed, augment=False,
                            num_classes=state["data"]["num_classes"], dims=cfg.dims, patch_size=cfg.patch_size,
                            fold=cfg.fold if data == cfg.data else 0)  # the run's fold, on its data
    if bundle.in_channels != state["data"]["in_channels"]:
        raise ConfigError(f"{data} has {bundle.in_channels} image channels, the model takes "
                          f"{state['data']['in_channels']}")
    dataset = getattr(bundle, args.split)
    ctx = distributed.Context(0, 1, 0, device)
    result = evaluate(model, dataset, bundle.num_classes, ctx, batch_size=cfg.batch_size,
                      ignore_index=cfg.ignore_index, roi=inference_roi(cfg))
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    result = {"checkpoint": str(Path(args.checkpoint).absolute()), "data": bundle.description, "split": args.split,
              **result}
    write_text(out / "metrics.json", json.dumps(result, indent=2) + "\n")
    write_overlays(model, handle, dataset, bundle.num_classes, device, out / "overlays", args.overlays,
                   f"{cfg.model} on {data} ({args.split})", roi=inference_roi(cfg), class_names=bundle.class_names)
    print(f"{args.split} ({result['images']} images): Dice {fmt(result['dice'], 4)} "
          f"Jaccard {fmt(result['jaccard'], 4)} accuracy {fmt(result['accuracy'], 4)} HD95 {fmt(result['hd95'], 2)}")
    print(f"wrote {out}/metrics.json and {out}/overlays/")
    return 0


def cmd_predict(args) -> int:
    from .predict import predict

    outcomes = predict(args.checkpoint, args.input, args.out, _device(args.device), overwrite=args.overwrite)
    failed = [o for o in outcomes if o.error]
    print(f"wrote {len(outcomes) - len(failed)} masks to {args.out}/ (list: {args.out}/predictions.csv)")
    if failed:
        for o in failed:
            print(f"pdcr-seg predict: failed: {o.input}: {o.error}", file=sys.stderr)
        print(f"pdcr-seg predict: {len(failed)} of {len(outcomes)} images failed (listed above and in "
              f"{args.out}/predictions.csv)", file=sys.stderr)
        return 1
    return 0


def cmd_models(args) -> int:
    from .models.complexity import paper_table

    try:
        table = paper_table(args.names or None, input_shape=(args.channels, *args.size), width=args.width)
    except ValueError as error:  # an unknown model name
        raise ConfigError(str(error)) from None
    print(table)
    print("GMACs: multiply-adds of one forward pass (Table IV's 'FLOPs'); PDCR adds nothing at inference.")
    return 0


def cmd_experiment(args) -> int:
    from .experiments import run_plan

    run_plan(args.plan, scale=args.scale, out=args.out, max_steps=args.max_steps, results=args.results)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pdcr-seg", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model (with --pdcr / --uafr)")
    _add_train_options(t)
    t.set_defaults(run=cmd_train)
    e = sub.add_parser("eval", help="evaluate a checkpoint on a split")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", default=None, help="default: the run's data")
    e.add_argument("--split", choices=["test", "val", "train"], default="test")
    e.add_argument("--device", default="auto")
    e.add_argument("--overlays", type=int, default=4)
    e.add_argument("--out", required=True, help="a new or empty folder")
    e.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    e.set_defaults(run=cmd_eval)
    r = sub.add_parser("predict", help="masks (and UAFR uncertainty) for images")
    r.add_argument("--checkpoint", required=True)
    r.add_argument("--input", required=True, help="an image file or a folder of images")
    r.add_argument("--device", default="auto")
    r.add_argument("--out", required=True, help="a new or empty folder")
    r.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    r.set_defaults(run=cmd_predict)
    m = sub.add_parser("models", help="parameters and multiply-adds of the models, as Table IV")
    m.add_argument("names", nargs="*", help="default: every built-in model")
    m.add_argument("--size", nargs=2, type=int, default=(384, 512), metavar=("H", "W"))
    m.add_argument("--channels", type=int, default=3)
    m.add_argument("--width", type=int, default=None)
    m.set_defaults(run=cmd_models)
    x = sub.add_parser("experiment", help="run a plan of training runs and write tables and figures")
    x.add_argument("--plan", default=None, help="a YAML plan (default: the built-in plan)")
    x.add_argument("--scale", choices=["cpu", "paper"], default="cpu")
    x.add_argument("--out", default="runs/experiments", help="where the runs go")
    x.add_argument("--results", default="benchmarks/results", help="where tables and figures go")
    x.add_argument("--max-steps", type=int, default=None, help="cap every run (smoke tests)")
    x.set_defaults(run=cmd_experiment)
    from .nnunet.command import add_parser as add_nnunet_parser

    add_nnunet_parser(sub)
    return p


def _bad_input(error: Exception) -> bool:
    """Whether `error` is one of pdcr-seg's one-line errors about its input. (The data and
    run modules import torch and MONAI: they are looked at only once an error happened.)"""
    if isinstance(error, ConfigError):
        return True
    from .data import DataError
    from .evaluate import RunError

    return isinstance(error, (DataError, RunError))


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt as interrupt:  # Ctrl-C: one line (train's says how to resume), no traceback
        print(f"pdcr-seg {args.command}: {interrupt or 'interrupted'}", file=sys.stderr)
        return 130
    except FloatingPointError as error:  # training diverged: not bad input, but not a crash either
        print(f"pdcr-seg {args.command}: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        if not _bad_input(error) or os.environ.get("PDCR_SEG_TRACEBACK"):
            raise
        print(f"pdcr-seg {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
