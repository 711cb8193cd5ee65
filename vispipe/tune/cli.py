"""`vispipe tune PIPELINE`: hyper-parameter search from a pipeline file.

```
vispipe tune pipelines/mnist-lenet.yaml --trials 20 --out tune/mnist
vispipe tune pipelines/mnist-lenet.yaml --trials 20 --storage postgresql://db/optuna
vispipe tune pipelines/mnist-lenet.yaml --set tune.space.lr.high=1.0 --json
```

The pipeline file is the verb's config tree: its `dataset`, `model` and
`train` sections are every trial's starting point, its `tune:` section the
search (`vispipe.tune.TuneSettings`, including a `space:`). Flags set keys of
`tune.` and `--set KEY=VALUE` any key, from the root. Running the same command
again resumes the search in `--out` (default `tune/NAME`); several processes
given the same `--out` (or `--storage`) share one study.

Registered on the `vispipe` verbs through the `vispipe.commands` entry point.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from vispipe.cli_grammar import Flag, add_output_flags, add_settings, resolve

__all__ = ["TUNE_SETTINGS", "add_tune_parser", "run_tune_command"]

# flag -> key of the tune: section (type and default: TuneSettings).
TUNE_SETTINGS = (
    Flag("--trials", "tune.trials", "trials to complete or prune, all processes together"),
    Flag("--metric", "tune.metric", "val_accuracy (maximized) or val_loss (minimized)"),
    Flag("--sampler", "tune.sampler", "tpe or random"),
    Flag("--pruner", "tune.pruner", "median, hyperband or none"),
    Flag("--storage", "tune.storage", "Optuna storage URL (default: sqlite in --out)",
         metavar="URL"),
    Flag("--study", "tune.study", "study name (default: the pipeline's name)"),
    Flag("--isolation", "tune.isolation", "process (a child per trial) or inline"),
    Flag("--seed", "tune.seed", "seed of the sampler"),
)


def _sections() -> dict[str, type]:
    from vispipe.tune.engine import TuneSettings

    return {"tune": TuneSettings}


def run_tune_command(args: argparse.Namespace) -> int:
    """Runs `vispipe tune`; prints the results table (or JSON with --json).

    Returns:
        0 when a trial completed, 1 when none did.
    """
    from vispipe.config_io import from_dict
    from vispipe.pipeline import pipeline_base_dir
    from vispipe.tune.engine import TuneSettings, tune

    if args.config:
        raise ValueError(f"tune reads its config tree from the pipeline file "
                         f"{args.pipeline!r}; --config {args.config!r} is not used with it.")
    args.config = args.pipeline
    config = resolve(args, verb="tune")
    settings = from_dict(TuneSettings, config.tune, f"{args.pipeline}: tune")
    out_dir = args.out or os.path.join("tune", config.name)
    # With --json, stdout keeps the one JSON object; per-trial lines go to stderr.
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        result = tune(config, out_dir, settings, dataset_dir=args.dataset or "",
                      base_dir=pipeline_base_dir(args.pipeline), progress=not args.quiet)
    if args.json:
        print(json.dumps(result.to_json(), indent=2, default=str))
    else:
        print(result.summary_table())
        print(f"\nResults in {result.out_dir}: " + ", ".join(
            os.path.basename(p) for p in result.files.values()))
    return 0 if result.best is not None else 1


def add_tune_parser(subparsers) -> argparse.ArgumentParser:
    """Registers `tune` on the `vispipe` verbs (`parser.add_subparsers()`).

    Returns:
        The `tune` sub-parser.
    """
    parser = subparsers.add_parser(
        "tune", help="search learning rate, batch size, optimizer, weight decay and "
                     "augmentation (Optuna; resumable, one study over many processes)")
    parser.add_argument("pipeline", help="YAML pipeline file (the config tree, with tune:)")
    add_settings(parser, TUNE_SETTINGS, sections=_sections())
    parser.add_argument("--dataset", metavar="DIR",
                        help="an existing dataset (default: the pipeline's dataset job)")
    parser.add_argument("--out", metavar="DIR",
                        help="the search's folder (default: tune/NAME); rerun to resume")
    add_output_flags(parser)
    parser.set_defaults(handler=run_tune_command)
    return parser
