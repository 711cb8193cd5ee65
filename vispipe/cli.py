"""The `vispipe` command: one verb per stage, one config grammar (`vispipe.cli_grammar`).

```
vispipe dataset create --source photos/ --out datasets/photos --size 64x64 --channels 3
vispipe models
vispipe train --dataset datasets/photos --run runs/photos --model resnet18 --epochs 20
vispipe train --run runs/photos --resume --epochs 30
vispipe lr-find --dataset datasets/photos --model resnet18 --out runs/lr
vispipe lr-plot --lr-policy step --epochs 30 --out lr.png
vispipe evaluate --run runs/photos --split test --json
vispipe classify --run runs/photos some/image.png
vispipe visualize --run runs/photos some/image.png --out viz/
vispipe run pipelines/digits-demo.yaml --set train.epochs=1 --json
vispipe registry --kind run
```
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from importlib.metadata import entry_points
from typing import Any, Callable, Iterator

from vispipe.cli_grammar import (
    Flag,
    add_deprecated_flag,
    add_output_flags,
    add_run_flag,
    add_settings,
    parse_size,
    positional_operand,
    raw_settings,
    resolve,
)
from vispipe.config_io import ConfigError
from vispipe.configs import RESIZE_MODES
from vispipe.tables import format_table
from vispipe.tensorflow_startup import quiet_tensorflow_startup

__all__ = ["COMMAND_GROUP", "SETTINGS", "main", "build_parser"]

COMMAND_GROUP = "vispipe.commands"
LR_PLOT_STEPS_PER_EPOCH = 100  # lr-plot's x axis when train.steps_per_epoch is 0 (a full pass)

_PATH_FLAGS = ("train_dir", "val_dir", "test_dir", "train_list", "val_list", "test_list",
               "labels_file", "tfds_name", "tfds_data_dir")
_DATASET = (
    Flag("--out", "dataset.output", "dataset folder to write", metavar="DIR"),
    Flag("--source", "dataset.source", "folder with one sub-folder per class", metavar="DIR"),
    Flag("--archive", "dataset.archive", ".tar.gz/.zip holding the folders (paths are then "
                                         "inside it)", metavar="FILE"),
    *(Flag(f"--{name.replace('_', '-')}", f"dataset.{name}", "source", metavar="PATH")
      for name in _PATH_FLAGS),
    Flag("--builtin", "dataset.builtin", "a dataset shipped inside an installed package"),
    Flag("--size", ("dataset.image.height", "dataset.image.width"), "stored image size",
         parse=parse_size, metavar="HxW"),
    Flag("--channels", "dataset.image.channels", "1: grayscale, 3: color"),
    Flag("--resize-mode", "dataset.image.resize_mode", "how an image is fit to the size"),
    Flag("--encoding", "dataset.image.encoding", "pixel encoding in the shards"),
    Flag("--jpeg-quality", "dataset.image.jpeg_quality", "quality of jpeg encoding"),
    Flag("--val-percent", "dataset.val_percent", "share of each class held out for validation"),
    Flag("--test-percent", "dataset.test_percent", "share of each class held out for test"),
    Flag("--min-per-class", "dataset.min_per_class", "fewer usable images is an error"),
    Flag("--max-per-class", "dataset.max_per_class", "keep at most this many (0: all)"),
    Flag("--shard-size", "dataset.shard_size", "images per TFRecord shard"),
    Flag("--workers", "dataset.workers", "decode processes (0: one per core)"),
    Flag("--seed", "dataset.seed", "seed of the split"),
    Flag("--overwrite", "dataset.overwrite", "replace an existing dataset folder"),
    Flag("--data-root", "dataset.data_roots", "refuse files that resolve outside these folders "
                                             "(repeatable)", metavar="DIR"),
)
_TRAIN = (
    Flag("--model", "model.name", "network (see `vispipe models`)", metavar="NAME"),
    Flag("--weights", "model.weights", "initialise from 'imagenet', a weights file or a run "
                                       "folder", metavar="SOURCE"),
    Flag("--weights-dir", "model.weights_dir", "folder of keras.applications weight files "
                                               "(offline; else $VISPIPE_WEIGHTS_DIR, then the "
                                               "Keras cache)", metavar="DIR"),
    Flag("--freeze-epochs", "model.freeze_epochs", "epochs training only the head first "
                                                   "(-1: 1 with --weights)"),
    Flag("--unfreeze-blocks", "model.unfreeze_blocks", "then unfreeze only the last N backbone "
                                                       "blocks (0: all)"),
    Flag("--epochs", "train.epochs", "training epochs (with --resume: the new total)"),
    Flag("--batch-size", "train.batch_size", "global batch size"),
    Flag("--optimizer", "train.optimizer", "solver"),
    Flag("--lr", "train.lr.base_lr", "base learning rate"),
    Flag("--lr-policy", "train.lr.policy", "learning-rate policy"),
    Flag("--seed", "train.seed", "seed of weights, shuffling and augmentation"),
    Flag("--distributed", "train.distributed", "data parallelism (horovod: under horovodrun)"),
)
_WHICH = Flag("--which", "evaluate.which", "which model of the run")
_INFERENCE_BATCH = Flag("--batch-size", "evaluate.batch_size", "inference batch size")

# The table: verb -> its settings flags, each setting one key of the config tree.
SETTINGS: dict[str, tuple[Flag, ...]] = {
    "dataset create": _DATASET,
    "train": _TRAIN,
    "lr-find": _TRAIN + (
        Flag("--start-lr", "lr_find.start_lr", "first learning rate"),
        Flag("--end-lr", "lr_find.end_lr", "last learning rate"),
        Flag("--steps", "lr_find.num_steps", "steps at most"),
        Flag("--rule", "lr_find.rule", "suggestion returned (all are marked on the plot)"),
        Flag("--phase", "lr_find.phase", "head only (frozen) or fine-tuning (unfrozen, after "
                                         "the head phase); auto: the phase the run starts in"),
    ),
    "lr-plot": _TRAIN + (
        Flag("--steps-per-epoch", "train.steps_per_epoch",
             f"steps per epoch on the x axis (0: {LR_PLOT_STEPS_PER_EPOCH})"),
    ),
    "evaluate": (
        Flag("--split", "evaluate.splits", "splits to evaluate, comma-separated"),
        _WHICH,
        Flag("--top-losses", "evaluate.top_losses", "images in the top-losses grid"),
        _INFERENCE_BATCH,
    ),
    "classify": (Flag("--top-k", "evaluate.top_k", "classes per image"), _WHICH,
                 _INFERENCE_BATCH),
    "visualize": (_WHICH, Flag("--max-filters", "evaluate.max_filters",
                               "most tiles per activation or weight grid")),
}


class CommandError(Exception):
    """A user error the CLI reports in one line, without a traceback."""


@contextlib.contextmanager
def _stdout_to_stderr(enabled: bool) -> Iterator[None]:
    """With --json, keeps stdout for the one JSON object (progress goes to stderr)."""
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _print_json(data: dict[str, Any]) -> None:
    print(json.dumps(data, indent=2, default=str))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _need(value: Any, message: str) -> Any:
    if not value:
        raise CommandError(message)
    return value


# --- dataset -----------------------------------------------------------------

def _dataset_create(args: argparse.Namespace) -> int:
    from vispipe.data import create_dataset
    from vispipe.registry import Registry

    config = resolve(args, verb="dataset create", relative_to="dataset").dataset
    _need(config.output, "dataset create needs --out DIR (dataset.output).")
    with Registry.open().recording("dataset", os.path.basename(os.path.abspath(config.output)),
                                   config.output, dataclasses.asdict(config)) as entry:
        with _stdout_to_stderr(args.json):
            info = create_dataset(config, progress=not args.quiet)
        entry.summary = info.summary()
    if args.json:
        _print_json(info.summary())
    else:
        _print_dataset_summary(info)
    return 0


def _print_dataset_summary(info: Any) -> None:
    rows = [[split, info.split_counts.get(split, 0)] + [
        info.class_counts.get(split, {}).get(name, 0) for name in info.classes[:8]
    ] for split in info.splits]
    headers = ["split", "images"] + list(info.classes[:8])
    print(format_table(rows, headers))
    if info.num_classes > 8:
        print(f"(+{info.num_classes - 8} more classes)")
    print(f"\nImages {info.height}x{info.width}x{info.channels} ({info.encoding}), "
          f"{info.num_classes} classes, {len(info.rejected)} rejected, "
          f"{len(info.converted)} converted, {info.duration_s:.1f} s")
    for item in info.rejected[:10]:
        print(f"  rejected {item['path']}: {item['reason']}")
    if len(info.rejected) > 10:
        print(f"  ... {len(info.rejected) - 10} more in {info.path}/rejected.csv")
    print(f"Dataset written to {info.path}")


def _dataset_info(args: argparse.Namespace) -> int:
    from vispipe.data.format import read_dataset_info

    positional_operand(args, "legacy_dataset", "--dataset", "DATASET", "dataset info")
    info = read_dataset_info(_need(args.dataset, "dataset info needs --dataset DIR."))
    if args.json:
        _print_json(dict(info.to_json(), path=info.path))
    else:
        _print_dataset_summary(info)
    return 0


# --- models ------------------------------------------------------------------

def _models(args: argparse.Namespace) -> int:
    from vispipe.models import IMAGENET_NETWORKS, list_models

    specs = list_models()
    if args.json:
        _print_json({"models": [{**dataclasses.asdict(s),
                                 "imagenet_weights": s.name in IMAGENET_NETWORKS}
                                for s in specs]})
        return 0
    rows = [[s.name, "x".join(map(str, s.input_shape)), s.min_size,
             "yes" if s.name in IMAGENET_NETWORKS else "-", s.description] for s in specs]
    print(format_table(rows, ["name", "input", "min size", "ImageNet weights", "description"]))
    print("\nStart from ImageNet with --weights imagenet (files from keras.applications; "
          "offline: --weights-dir DIR).")
    return 0


# --- train -------------------------------------------------------------------

def _print_train_result(result: Any) -> None:
    rows = [[h.get("epoch"), h.get("loss"), h.get("accuracy"), h.get("val_loss"),
             h.get("val_accuracy"), h.get("lr")] for h in result.history]
    print(format_table(rows, ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr"]))
    print(f"\nTrained {result.epochs_completed} epochs in {result.duration_s:.1f} s "
          f"({result.images_per_s:,.0f} images/s on {result.device}); "
          f"best val accuracy {_pct(result.best_val_accuracy)}")
    print(f"Run folder: {result.run_dir}")


def _train_result_json(result: Any) -> dict[str, Any]:
    return {
        "run_dir": result.run_dir, "model_path": result.model_path,
        "epochs_completed": result.epochs_completed,
        "final_val_accuracy": result.final_val_accuracy,
        "best_val_accuracy": result.best_val_accuracy,
        "images_per_s": result.images_per_s, "duration_s": result.duration_s,
        "device": result.device,
    }


def _resume_epochs(args: argparse.Namespace) -> int | None:
    """The new total epochs of a resumed run: the only setting a resume takes."""
    data = raw_settings(args)
    epochs = (data.get("train") or {}).get("epochs")
    others = {k for k, v in data.items() if k != "train"} | (set(data.get("train") or {}) - {"epochs"})
    if others:
        raise CommandError(f"train --resume continues the run's own settings; only --epochs "
                           f"(train.epochs) may change, got {sorted(others)}.")
    return epochs


def _train(args: argparse.Namespace) -> int:
    from vispipe.train import resume, train

    if args.legacy_run is not None:  # `--resume RUN`, the old spelling.
        if not args.resume:
            raise CommandError(f"train takes no positional argument, got {args.legacy_run!r}; "
                               "the run folder is --run RUN_DIR.")
        positional_operand(args, "legacy_run", "--run", "RUN", "train --resume")
    run = _need(args.run, "train needs --run RUN_DIR (the run folder to create, or with "
                          "--resume to continue).")
    with _stdout_to_stderr(args.json):
        if args.resume:
            result = resume(run, progress=not args.quiet, epochs=_resume_epochs(args))
        else:
            config = resolve(args, verb="train")
            dataset = _need(args.dataset, "train needs --dataset DIR.")
            result = train(dataset, run, config.model, config.train,
                           name=args.name or os.path.basename(os.path.abspath(run)),
                           progress=not args.quiet)
    if not result.is_chief:  # One summary per job, from the process that wrote the run.
        return 0
    if args.json:
        _print_json(_train_result_json(result))
    else:
        _print_train_result(result)
    return 0


def _lr_find(args: argparse.Namespace) -> int:
    from vispipe.train import find_lr

    config = resolve(args, verb="lr-find")
    dataset = _need(args.dataset, "lr-find needs --dataset DIR.")
    out = _need(args.out, "lr-find needs --out DIR (for lr_find.png).")
    finder = config.lr_find
    with _stdout_to_stderr(args.json):
        result = find_lr(dataset, config.model, config.train, start_lr=finder.start_lr,
                         end_lr=finder.end_lr, num_steps=finder.num_steps, out_dir=out,
                         progress=not args.quiet)
    if args.json:
        _print_json({"suggested_lr": result.suggested_lr, "rule": result.rule,
                     "suggestions": result.suggestions, "phase": result.phase,
                     "plot_path": result.plot_path})
        return 0
    others = ", ".join(f"{rule} {lr:.3g}" for rule, lr in result.suggestions.items()
                       if rule != result.rule)
    print(f"Suggested learning rate ({result.phase} phase, {result.rule} rule): "
          f"{result.suggested_lr:.3g}  (other rules: {others})")
    if result.phase == "unfrozen" and model_cfg.weights and model_cfg.freeze_epochs:
        factor = result.suggested_lr / train_cfg.lr.base_lr
        print(f"For fine-tuning after the head phase at base_lr {train_cfg.lr.base_lr:g}: "
              f"--set model.finetune_lr_factor={factor:.3g}")
    print(f"Plot: {result.plot_path}")
    return 0


def _lr_plot(args: argparse.Namespace) -> int:
    from vispipe.train import plot_schedule

    train_cfg = resolve(args, verb="lr-plot").train
    out = _need(args.out, "lr-plot needs --out FILE.png.")
    steps_per_epoch = train_cfg.steps_per_epoch or LR_PLOT_STEPS_PER_EPOCH
    total = train_cfg.epochs * steps_per_epoch
    path = plot_schedule(train_cfg.lr, total, out, steps_per_epoch=steps_per_epoch)
    if args.json:
        _print_json({"plot_path": path, "policy": train_cfg.lr.policy, "total_steps": total,
                     "steps_per_epoch": steps_per_epoch})
    else:
        print(f"Learning-rate schedule ({train_cfg.lr.policy}, {total} steps) written to {path}")
    return 0


# --- evaluate / classify / visualize -------------------------------------------

def _evaluate(args: argparse.Namespace) -> int:
    from vispipe.evaluate import evaluate_splits

    positional_operand(args, "legacy_run", "--run", "RUN", "evaluate")
    config = resolve(args, verb="evaluate").evaluate
    run = _need(args.run, "evaluate needs --run RUN_DIR.")
    with _stdout_to_stderr(args.json):
        results = evaluate_splits(run, config, dataset_dir=args.dataset, out_dir=args.out,
                                  progress=not args.quiet)
    if args.json:
        _print_json({"run_dir": run,
                     "evaluations": {split: r.to_json() for split, r in results.items()}})
    else:
        print("\n\n".join(r.summary_table() for r in results.values()))
    return 0


def _run_and_input(args: argparse.Namespace, verb: str, what: str) -> tuple[str, str]:
    """`--run RUN INPUT`, or the old `RUN INPUT` (two positionals)."""
    operands = list(args.operands)
    if len(operands) == 2:
        args.legacy_run = operands.pop(0)
        positional_operand(args, "legacy_run", "--run", "RUN", verb)
    if len(operands) != 1:
        raise CommandError(f"{verb} needs --run RUN_DIR and one {what}, got {operands}.")
    return _need(args.run, f"{verb} needs --run RUN_DIR."), operands[0]


def _classify(args: argparse.Namespace) -> int:
    from vispipe.evaluate import accuracy, classify, predictions_table, write_predictions_csv

    run, inputs = _run_and_input(args, "classify", "image, folder or list file")
    config = resolve(args, verb="classify").evaluate
    with _stdout_to_stderr(args.json):
        predictions = classify(run, inputs, top_k=config.top_k, batch_size=config.batch_size,
                               which=config.which, progress=not args.quiet)
    if args.out:
        write_predictions_csv(predictions, args.out)
    if args.json:
        _print_json({"predictions": [p.to_json() for p in predictions],
                     "accuracy": accuracy(predictions), "csv": args.out})
    elif args.out:
        print(f"{len(predictions)} predictions written to {args.out}")
    else:
        print(predictions_table(predictions))
    return 0


def _visualize(args: argparse.Namespace) -> int:
    from vispipe.evaluate import visualize

    run, image = _run_and_input(args, "visualize", "image")
    config = resolve(args, verb="visualize").evaluate
    out = _need(args.out, "visualize needs --out DIR.")
    stats = visualize(run, image, out, max_filters=config.max_filters, which=config.which)
    if args.json:
        _print_json({"out_dir": out, "layers": [s.to_json() for s in stats]})
        return 0
    rows = [[s.name, "x".join(str(d) for d in s.shape), s.mean, s.std, s.params]
            for s in stats]
    print(format_table(rows, ["layer", "activation shape", "mean", "std", "params"]))
    print(f"\nPer-layer PNGs and layers.json written to {out}")
    return 0


# --- pipeline / registry / upgrade ------------------------------------------------

def _run(args: argparse.Namespace) -> int:
    from vispipe.config_io import load_pipeline
    from vispipe.pipeline import default_out_dir, pipeline_base_dir, run_pipeline

    config = load_pipeline(args.pipeline, args.set)
    out_dir = args.out or default_out_dir(config.name)
    with _stdout_to_stderr(args.json):
        result = run_pipeline(config, out_dir, base_dir=pipeline_base_dir(args.pipeline),
                              progress=not args.quiet)
    if args.json:
        _print_json(result.to_json())
        return 0
    rows = [[split, e["num_images"], _pct(e["top1_accuracy"]), _pct(e["top5_accuracy"])]
            for split, e in result.evaluations.items()]
    print(f"\nPipeline {config.name} finished in {result.duration_s:.1f} s "
          f"(dataset {result.stages['dataset_s']:.1f} s, train {result.stages['train_s']:.1f} s, "
          f"evaluate {result.stages['evaluate_s']:.1f} s)\n")
    print(format_table(rows, ["split", "images", "top-1", "top-5"]))
    print(f"\nTest accuracy: {_pct(result.test_top1_accuracy)}")
    print(f"Dataset:  {result.dataset_dir}")
    print(f"Run:      {result.run_dir}  (model.keras, curves.png, metrics.jsonl, eval-*/)")
    return 0


def _registry(args: argparse.Namespace) -> int:
    from vispipe.registry import Registry

    entries = Registry.open().list(args.kind)
    if args.json:
        _print_json({"entries": [dataclasses.asdict(e) for e in entries]})
        return 0
    rows = [[e.id, e.kind, e.name, e.status, e.created, e.finished or "", e.path]
            for e in entries]
    print(format_table(rows, ["id", "kind", "name", "status", "created", "finished", "path"]))
    return 0


def _upgrade_run(args: argparse.Namespace) -> int:
    from vispipe.train.run_folder import upgrade_run_folder

    info = upgrade_run_folder(args.run, resize_mode=args.resize_mode)
    if args.json:
        _print_json({"run_dir": info.path, "version": info.version,
                     "image": dataclasses.asdict(info.image)})
        return 0
    image = info.image
    print(f"Upgraded {info.path}/run.json to format {info.version}: images "
          f"{image.height}x{image.width}x{image.channels}, resize mode {image.resize_mode}.")
    return 0


# --- parser ------------------------------------------------------------------

def _verb(verbs, name: str, handler: Callable, help: str, settings: str | None = None,
          **kwargs: Any) -> argparse.ArgumentParser:
    parser = verbs.add_parser(name.split()[-1], help=help, **kwargs)
    parser.set_defaults(handler=handler)
    if settings is not None:
        add_settings(parser, SETTINGS[settings])
    return parser


def _add_dataset_verbs(verbs) -> None:
    dataset = verbs.add_parser("dataset", help="create or inspect a dataset")
    actions = dataset.add_subparsers(dest="dataset_verb", required=True, metavar="ACTION")
    create = _verb(actions, "dataset create", _dataset_create,
                   "folders or lists of images -> TFRecord shards", "dataset create")
    add_deprecated_flag(create, "--output", "--out", dest=SETTINGS["dataset create"][0].dest,
                        verb="dataset create")
    add_output_flags(create)
    info = _verb(actions, "dataset info", _dataset_info, "show a dataset's splits and classes")
    info.add_argument("--dataset", metavar="DIR", help="dataset folder")
    info.add_argument("legacy_dataset", nargs="?", help=argparse.SUPPRESS)
    add_output_flags(info, quiet=False)


def _add_train_verbs(verbs) -> None:
    train = _verb(verbs, "train", _train, "train a network on a dataset, or resume a run",
                  "train")
    train.add_argument("--dataset", metavar="DIR", help="dataset folder")
    train.add_argument("--run", metavar="RUN_DIR", help="run folder to create (or to resume)")
    train.add_argument("--resume", action="store_true",
                       help="continue --run from its latest checkpoint")
    train.add_argument("legacy_run", nargs="?", help=argparse.SUPPRESS)
    train.add_argument("--name", help="run name (default: the folder name)")
    add_deprecated_flag(train, "--out", "--run", dest="run", verb="train")
    add_output_flags(train)
    lr_find = _verb(verbs, "lr-find", _lr_find, "learning-rate range test (fastai lr_find)",
                    "lr-find")
    lr_find.add_argument("--dataset", metavar="DIR", help="dataset folder")
    lr_find.add_argument("--out", metavar="DIR", help="folder for lr_find.png and .json")
    add_output_flags(lr_find)
    lr_plot = _verb(verbs, "lr-plot", _lr_plot, "plot a learning-rate policy as a PNG",
                    "lr-plot")
    lr_plot.add_argument("--out", metavar="FILE", help="PNG file")
    add_output_flags(lr_plot, quiet=False)


def _add_evaluate_verbs(verbs) -> None:
    evaluate = _verb(verbs, "evaluate", _evaluate, "accuracy, confusion matrix, top losses",
                     "evaluate")
    add_run_flag(evaluate)
    evaluate.add_argument("--dataset", metavar="DIR", help="dataset folder (default: the run's)")
    evaluate.add_argument("--out", metavar="DIR",
                          help="folder for one eval-SPLIT report per split (default: the run)")
    add_output_flags(evaluate)
    classify = _verb(verbs, "classify", _classify, "top-N labels for an image, folder or list",
                     "classify")
    classify.add_argument("--run", metavar="RUN_DIR", help="run folder")
    classify.add_argument("operands", nargs="*", metavar="INPUT",
                          help="image file, folder, or list file")
    classify.add_argument("--out", metavar="FILE", help="also write the predictions to this CSV")
    add_deprecated_flag(classify, "--csv", "--out", dest="out", verb="classify")
    add_output_flags(classify)
    visualize = _verb(verbs, "visualize", _visualize,
                      "per-layer activations and weights for one image", "visualize")
    visualize.add_argument("--run", metavar="RUN_DIR", help="run folder")
    visualize.add_argument("operands", nargs="*", metavar="IMAGE", help="the image")
    visualize.add_argument("--out", metavar="DIR", help="folder for layers.json and the PNGs")
    add_output_flags(visualize, quiet=False)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `vispipe` command."""
    parser = argparse.ArgumentParser(
        prog="vispipe",
        description="Image classification from a folder of labelled images to trained, "
                    "evaluated models (the DIGITS workflow on TensorFlow 2 / Keras 3).",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    _add_dataset_verbs(verbs)
    models = _verb(verbs, "models", _models, "list the standard networks")
    add_output_flags(models, quiet=False)
    _add_train_verbs(verbs)
    _add_evaluate_verbs(verbs)

    run = _verb(verbs, "run", _run, "run a pipeline file: dataset -> train -> evaluate")
    run.add_argument("pipeline", help="YAML pipeline file (the config tree)")
    run.add_argument("--out", metavar="DIR", help="output folder (default: runs/NAME-TIMESTAMP)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="set any config key, from the root: train.epochs=5 (repeatable)")
    add_output_flags(run)

    upgrade = _verb(verbs, "upgrade-run", _upgrade_run,
                    "rewrite an older run folder's run.json in the current format")
    upgrade.add_argument("--run", required=True, metavar="RUN_DIR", help="run folder")
    upgrade.add_argument("--resize-mode", choices=RESIZE_MODES,
                         help="how its images were resized (only when its dataset is gone)")
    add_output_flags(upgrade, quiet=False)

    registry = _verb(verbs, "registry", _registry, "list datasets, runs and jobs")
    registry.add_argument("--kind", choices=["dataset", "run", "job"])
    add_output_flags(registry, quiet=False)

    # Later stages (export, serve) add their verbs through this entry-point
    # group, so the core never imports the stages that depend on it. A stage
    # whose extra is not installed (the serving image has no UI) stays a verb
    # that says so, and the others work.
    for command in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        try:
            add_parser = command.load()
        except ImportError as error:
            _add_missing_verb(verbs, command.name, error)
        else:
            add_parser(verbs)
    return parser


def _add_missing_verb(verbs: Any, name: str, error: ImportError) -> None:
    """Registers `name` as a verb that reports the missing dependency."""
    hint = f"pip install 'vispipe[{name}]'"
    # No option prefix: whatever follows the verb is taken, not rejected.
    parser = verbs.add_parser(name, help=f"(not installed: {hint})", add_help=False,
                              prefix_chars="\0")
    parser.add_argument("args", nargs="*")

    def missing(args: argparse.Namespace) -> int:
        raise CommandError(f"`vispipe {name}` needs what this installation lacks ({error}); "
                           f"install it with {hint}")

    parser.set_defaults(handler=missing)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vispipe` command; returns the exit status."""
    quiet_tensorflow_startup()
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    verb = " ".join(filter(None, (args.verb, getattr(args, "dataset_verb", None))))
    try:
        return handler(args)
    except (CommandError, ConfigError, FileNotFoundError, FileExistsError, ValueError,
            ArithmeticError) as error:
        print(f"vispipe {verb}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vispipe {verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
