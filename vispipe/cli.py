"""The `vispipe` command: one verb per stage, flags plus `--set key=value`.

```
vispipe dataset create --source photos/ --output datasets/photos --size 64x64 --channels 3
vispipe models
vispipe train --dataset datasets/photos --out runs/photos --model resnet18 --epochs 20
vispipe train --resume runs/photos
vispipe lr-find --dataset datasets/photos --model resnet18 --out runs/lr
vispipe lr-plot --set lr.policy=step --epochs 30 --out lr.png
vispipe evaluate runs/photos --split test --json
vispipe classify runs/photos some/image.png
vispipe visualize runs/photos some/image.png --out viz/
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

from vispipe.config_io import ConfigError, apply_overrides, from_dict
from vispipe.configs import DatasetConfig, ModelConfig, PipelineConfig, TrainConfig
from vispipe.tables import format_table

__all__ = ["COMMAND_GROUP", "main", "build_parser"]

COMMAND_GROUP = "vispipe.commands"


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


def _parse_size(text: str) -> tuple[int, int]:
    height, sep, width = text.lower().partition("x")
    try:
        return int(height), int(width if sep else height)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected HEIGHTxWIDTH such as 28x28 or one number, got {text!r}"
        ) from None


def _load_yaml_mapping(path: str) -> dict[str, Any]:
    import yaml

    from vispipe.config_io import expand_env

    if not os.path.isfile(path):
        raise CommandError(f"Config file {path!r} does not exist.")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(expand_env(f.read())) or {}
    if not isinstance(data, dict):
        raise CommandError(f"{path}: expected a mapping at the top.")
    return data


# --- dataset -----------------------------------------------------------------

def _dataset_create(args: argparse.Namespace) -> int:
    from vispipe.data import create_dataset
    from vispipe.registry import Registry

    data: dict[str, Any] = {"image": {}}
    for name in ("output", "archive", "source", "train_dir", "val_dir", "test_dir",
                 "train_list", "val_list", "test_list", "labels_file", "tfds_name",
                 "tfds_data_dir", "builtin", "val_percent", "test_percent",
                 "min_per_class", "max_per_class", "shard_size", "workers", "seed"):
        value = getattr(args, name)
        if value is not None:
            data[name] = value
    data["overwrite"] = args.overwrite
    if args.size:
        data["image"]["height"], data["image"]["width"] = args.size
    for name in ("channels", "resize_mode", "encoding", "jpeg_quality"):
        if getattr(args, name) is not None:
            data["image"][name] = getattr(args, name)
    apply_overrides(data, args.set)
    config = from_dict(DatasetConfig, data, "dataset")
    registry = Registry.open()
    entry = registry.add("dataset", os.path.basename(os.path.abspath(config.output)),
                         config.output, dataclasses.asdict(config))
    try:
        with _stdout_to_stderr(args.json):
            info = create_dataset(config, progress=not args.quiet)
    except BaseException as error:
        registry.finish(entry, "failed", {"error": str(error)})
        raise
    summary = {
        "dataset_dir": info.path, "classes": info.num_classes,
        "split_counts": info.split_counts, "rejected": len(info.rejected),
        "converted": len(info.converted), "duration_s": round(info.duration_s, 2),
    }
    registry.finish(entry, "completed", summary)
    if args.json:
        _print_json(summary)
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

    info = read_dataset_info(args.dataset)
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

def _model_and_train(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    data: dict[str, Any] = {"model": {}, "train": {"lr": {}}}
    if args.config:
        loaded = _load_yaml_mapping(args.config)
        unknown = set(loaded) - {"model", "train", "name", "dataset", "evaluate"}
        if unknown:
            raise ConfigError(f"{args.config}: unknown keys {sorted(unknown)}")
        data["model"].update(loaded.get("model") or {})
        data["train"].update(loaded.get("train") or {})
        data["train"].setdefault("lr", {})
    flags = {
        ("model", "name"): args.model, ("model", "weights"): args.weights,
        ("model", "weights_dir"): args.weights_dir,
        ("model", "freeze_epochs"): args.freeze_epochs,
        ("model", "unfreeze_blocks"): args.unfreeze_blocks,
        ("train", "epochs"): args.epochs, ("train", "batch_size"): args.batch_size,
        ("train", "optimizer"): args.optimizer, ("train", "seed"): args.seed,
        ("train", "distributed"): args.distributed,
    }
    for (section, key), value in flags.items():
        if value is not None:
            data[section][key] = value
    if args.lr is not None:
        data["train"]["lr"]["base_lr"] = args.lr
    if args.lr_policy is not None:
        data["train"]["lr"]["policy"] = args.lr_policy
    apply_overrides(data, args.set)
    where = f"{args.config}: " if args.config else "--set "
    unknown = set(data) - {"model", "train"}
    if unknown:
        raise ConfigError(f"{where}unknown sections {sorted(unknown)}; expected model, train")
    return (from_dict(ModelConfig, data["model"], f"{where}model"),
            from_dict(TrainConfig, data["train"], f"{where}train"))


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


def _is_chief_process() -> bool:
    """False on every Horovod/MPI rank but 0 and every multi-worker task but the
    chief, so one summary is printed per job."""
    for variable in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if os.environ.get(variable, "0") != "0":
            return False
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = tf_config.get("task", {})
    if "chief" in tf_config.get("cluster", {}):
        return task.get("type") == "chief"
    return int(task.get("index", 0)) == 0


def _train(args: argparse.Namespace) -> int:
    from vispipe.train import resume, train

    with _stdout_to_stderr(args.json):
        if args.resume:
            result = resume(args.resume, progress=not args.quiet, epochs=args.epochs)
        else:
            if not args.dataset or not args.out:
                raise CommandError("train needs --dataset DIR and --out RUN_DIR (or --resume RUN_DIR).")
            model_cfg, train_cfg = _model_and_train(args)
            result = train(args.dataset, args.out, model_cfg, train_cfg,
                           name=args.name or os.path.basename(os.path.abspath(args.out)),
                           progress=not args.quiet)
    if not _is_chief_process():
        return 0
    if args.json:
        _print_json(_train_result_json(result))
    else:
        _print_train_result(result)
    return 0


def _lr_find(args: argparse.Namespace) -> int:
    from vispipe.train import find_lr

    model_cfg, train_cfg = _model_and_train(args)
    with _stdout_to_stderr(args.json):
        result = find_lr(args.dataset, model_cfg, train_cfg, start_lr=args.start_lr,
                         end_lr=args.end_lr, num_steps=args.steps, rule=args.rule,
                         phase=args.phase, out_dir=args.out, progress=not args.quiet)
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

    model_cfg, train_cfg = _model_and_train(args)
    del model_cfg
    total = train_cfg.epochs * args.steps_per_epoch
    path = plot_schedule(train_cfg.lr, total, args.out, steps_per_epoch=args.steps_per_epoch)
    print(f"Learning-rate schedule ({train_cfg.lr.policy}, {total} steps) written to {path}")
    return 0


# --- evaluate / classify / visualize -------------------------------------------

def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _evaluate(args: argparse.Namespace) -> int:
    from vispipe.evaluate import evaluate_run

    with _stdout_to_stderr(args.json):
        result = evaluate_run(args.run, dataset_dir=args.dataset, split=args.split,
                              out_dir=args.out, top_losses=args.top_losses,
                              batch_size=args.batch_size, which=args.which)
    if args.json:
        _print_json(result.to_json())
    else:
        print(result.summary_table())
    return 0


def _classify(args: argparse.Namespace) -> int:
    from vispipe.evaluate import classify, format_table as predictions_table
    from vispipe.evaluate import write_predictions_csv

    predictions = classify(args.run, args.input, top_k=args.top_k)
    if args.csv:
        write_predictions_csv(predictions, args.csv)
        print(f"{len(predictions)} predictions written to {args.csv}")
    else:
        print(predictions_table(predictions))
    return 0


def _visualize(args: argparse.Namespace) -> int:
    from vispipe.evaluate import visualize

    stats = visualize(args.run, args.image, args.out)
    rows = [[s.name, "x".join(str(d) for d in s.shape), s.mean, s.std, s.params]
            for s in stats]
    print(format_table(rows, ["layer", "activation shape", "mean", "std", "params"]))
    print(f"\nPer-layer PNGs and layers.json written to {args.out}")
    return 0


# --- pipeline / registry -------------------------------------------------------

def _run(args: argparse.Namespace) -> int:
    from vispipe.config_io import load_pipeline
    from vispipe.pipeline import default_out_dir, pipeline_base_dir, run_pipeline

    config: PipelineConfig = load_pipeline(args.pipeline, args.set)
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


# --- parser ------------------------------------------------------------------

def _add_common(parser: argparse.ArgumentParser, json_flag: bool = True) -> None:
    if json_flag:
        parser.add_argument("--json", action="store_true",
                            help="print one JSON object on stdout (progress goes to stderr)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. train.epochs=5 (repeatable)")


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file with model: and train: sections")
    parser.add_argument("--model", help="network name (see `vispipe models`)")
    parser.add_argument("--weights", help="initialise from 'imagenet', a weights file or a run folder")
    parser.add_argument("--weights-dir", help="folder with keras.applications weight files "
                        "(offline machines; default $VISPIPE_WEIGHTS_DIR, then the Keras cache)")
    parser.add_argument("--freeze-epochs", type=int,
                        help="epochs training only the head first (-1: 1 with --weights)")
    parser.add_argument("--unfreeze-blocks", type=int,
                        help="then unfreeze only the last N backbone blocks (0: all)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--optimizer")
    parser.add_argument("--lr", type=float, help="base learning rate")
    parser.add_argument("--lr-policy")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--distributed", choices=["none", "horovod", "mirrored", "multiworker"],
                        help="data parallelism (horovod: launch under horovodrun)")
    _add_set(parser)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `vispipe` command."""
    parser = argparse.ArgumentParser(
        prog="vispipe",
        description="Image classification from a folder of labelled images to trained, "
                    "evaluated models (the DIGITS workflow on TensorFlow 2 / Keras 3).",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    dataset = verbs.add_parser("dataset", help="create or inspect a dataset")
    dataset_verbs = dataset.add_subparsers(dest="dataset_verb", required=True, metavar="ACTION")
    create = dataset_verbs.add_parser("create", help="folders or lists of images -> TFRecord shards")
    create.add_argument("--output", required=True, help="dataset folder to write")
    source = create.add_argument_group("source (one kind)")
    source.add_argument("--source", help="folder with one sub-folder per class")
    source.add_argument("--archive", help=".tar.gz/.zip holding the folders (paths then relative to it)")
    for name in ("train-dir", "val-dir", "test-dir", "train-list", "val-list", "test-list",
                 "labels-file", "tfds-name", "tfds-data-dir"):
        source.add_argument(f"--{name}")
    source.add_argument("--builtin", choices=["digits"], help="scikit-learn's handwritten digits")
    create.add_argument("--size", type=_parse_size, help="HEIGHTxWIDTH, e.g. 28x28")
    create.add_argument("--channels", type=int, choices=[1, 3])
    create.add_argument("--resize-mode", choices=["squash", "crop", "fill", "half_crop"])
    create.add_argument("--encoding", choices=["png", "jpeg", "raw"])
    create.add_argument("--jpeg-quality", type=int)
    create.add_argument("--val-percent", type=float)
    create.add_argument("--test-percent", type=float)
    create.add_argument("--min-per-class", type=int)
    create.add_argument("--max-per-class", type=int)
    create.add_argument("--shard-size", type=int)
    create.add_argument("--workers", type=int)
    create.add_argument("--seed", type=int)
    create.add_argument("--overwrite", action="store_true")
    _add_set(create)
    _add_common(create)
    create.set_defaults(handler=_dataset_create)
    info = dataset_verbs.add_parser("info", help="show a dataset's splits and classes")
    info.add_argument("dataset")
    info.add_argument("--json", action="store_true")
    info.set_defaults(handler=_dataset_info)

    models = verbs.add_parser("models", help="list the standard networks")
    models.add_argument("--json", action="store_true")
    models.set_defaults(handler=_models)

    train = verbs.add_parser("train", help="train a network on a dataset, or resume a run")
    train.add_argument("--dataset", help="dataset folder")
    train.add_argument("--out", help="run folder to create")
    train.add_argument("--name", help="run name (default: the folder name)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last snapshot")
    _add_train_flags(train)
    _add_common(train)
    train.set_defaults(handler=_train)

    lr_find = verbs.add_parser("lr-find", help="learning-rate range test (fastai lr_find)")
    lr_find.add_argument("--dataset", required=True)
    lr_find.add_argument("--out", required=True, help="folder for lr_find.png")
    lr_find.add_argument("--start-lr", type=float, default=1e-7)
    lr_find.add_argument("--end-lr", type=float, default=10.0)
    lr_find.add_argument("--steps", type=int, default=100)
    lr_find.add_argument("--rule", choices=["valley", "minimum", "steep"], default="valley",
                         help="suggestion returned (all are marked on the plot)")
    lr_find.add_argument("--phase", choices=["auto", "frozen", "unfrozen"], default="auto",
                         help="head only (frozen backbone) or fine-tuning (after the head "
                              "phase); auto: the phase the run starts in")
    _add_train_flags(lr_find)
    _add_common(lr_find)
    lr_find.set_defaults(handler=_lr_find)

    lr_plot = verbs.add_parser("lr-plot", help="plot a learning-rate policy as a PNG")
    lr_plot.add_argument("--out", required=True, help="PNG file")
    lr_plot.add_argument("--steps-per-epoch", type=int, default=100)
    _add_train_flags(lr_plot)
    lr_plot.set_defaults(handler=_lr_plot)

    evaluate = verbs.add_parser("evaluate", help="accuracy, confusion matrix, top losses")
    evaluate.add_argument("run", help="run folder")
    evaluate.add_argument("--dataset", help="dataset folder (default: the run's)")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--which", default="final", choices=["final", "best", "last"])
    evaluate.add_argument("--out", help="output folder (default: RUN/eval-SPLIT)")
    evaluate.add_argument("--top-losses", type=int, default=16)
    evaluate.add_argument("--batch-size", type=int, default=256)
    _add_common(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    classify = verbs.add_parser("classify", help="top-N labels for an image, folder or list")
    classify.add_argument("run", help="run folder")
    classify.add_argument("input", help="image file, folder, or list file")
    classify.add_argument("--top-k", type=int, default=5)
    classify.add_argument("--csv", help="write predictions to this CSV instead of a table")
    classify.set_defaults(handler=_classify)

    visualize = verbs.add_parser("visualize", help="per-layer activations and weights for one image")
    visualize.add_argument("run", help="run folder")
    visualize.add_argument("image")
    visualize.add_argument("--out", required=True)
    visualize.set_defaults(handler=_visualize)

    run = verbs.add_parser("run", help="run a pipeline file: dataset -> train -> evaluate")
    run.add_argument("pipeline", help="YAML pipeline file")
    run.add_argument("--out", help="output folder (default: runs/NAME-TIMESTAMP)")
    _add_set(run)
    _add_common(run)
    run.set_defaults(handler=_run)

    registry = verbs.add_parser("registry", help="list datasets, runs and jobs")
    registry.add_argument("--kind", choices=["dataset", "run", "job"])
    registry.add_argument("--json", action="store_true")
    registry.set_defaults(handler=_registry)

    # Later stages (export, serve) add their verbs through this entry-point
    # group, so the core never imports the stages that depend on it.
    for command in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        command.load()(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vispipe` command; returns the exit status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (CommandError, ConfigError, FileNotFoundError, FileExistsError, ValueError,
            ArithmeticError) as error:
        print(f"vispipe {args.verb}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vispipe {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
