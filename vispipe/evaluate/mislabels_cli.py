"""`vispipe mislabels --run RUN`: the training images whose labels look wrong.

```
vispipe mislabels --run runs/mnist --folds 3 --epochs 4
vispipe mislabels --run runs/mnist --set mislabels.split=val --json
```

Trains the run's network k times on k-1 folds of the split and flags, by
confident learning, the images the held-out models are confidently of another
class (`vispipe.evaluate.mislabels`). Writes `RUN/mislabels/` (or `--out`):
`label_issues.csv` to fix labels from, `label_issues.json`, a grid PNG and
the images. Settings are the `mislabels:` keys (`MislabelsSettings`).

Registered on the `vispipe` verbs through the `vispipe.commands` entry point.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from vispipe.cli_grammar import Flag, add_output_flags, add_run_flag, add_settings, resolve

__all__ = ["MISLABELS_SETTINGS", "add_mislabels_parser", "run_mislabels_command"]

SHOWN = 20  # Rows of the printed table.

MISLABELS_SETTINGS = (
    Flag("--folds", "mislabels.folds", "k of the k-fold split (k trainings)"),
    Flag("--epochs", "mislabels.epochs", "epochs per fold (0: the run's)"),
    Flag("--split", "mislabels.split", "the split whose labels are judged"),
)


def _sections() -> dict[str, type]:
    from vispipe.evaluate.mislabels import MislabelsSettings

    return {"mislabels": MislabelsSettings}


def run_mislabels_command(args: argparse.Namespace) -> int:
    """Runs `vispipe mislabels`; prints the most doubtful images (or JSON with --json)."""
    from vispipe.cli_grammar import positional_operand
    from vispipe.config_io import from_dict
    from vispipe.evaluate.mislabels import MislabelsSettings, run_label_issues
    from vispipe.tables import format_table

    positional_operand(args, "legacy_run", "--run", "RUN", "mislabels")
    if not args.run:
        raise ValueError("mislabels needs --run RUN_DIR.")
    config = resolve(args, verb="mislabels")
    settings = from_dict(MislabelsSettings, config.mislabels,
                         f"{args.config}: mislabels" if args.config else "mislabels")
    # With --json, stdout keeps the one JSON object; per-fold lines go to stderr.
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        issues = run_label_issues(args.run, folds=settings.folds, epochs=settings.epochs,
                                  split=settings.split, out_dir=args.out or "",
                                  progress=not args.quiet)
    if args.json:
        print(json.dumps(issues.to_json(), indent=2))
        return 0
    rows = [[rank, i.filename, i.given, i.suggested, f"{i.suggested_probability:.2f}"]
            for rank, i in enumerate(issues.issues[:SHOWN], 1)]
    print(format_table(rows, ["rank", "file", "given", "suggested", "p(suggested)"]))
    print(f"\n{len(issues.issues)} of {issues.num_images} {settings.split} images flagged "
          f"(about {issues.estimated_errors} label errors estimated); fix labels from "
          f"{issues.files['csv']}")
    return 0


def add_mislabels_parser(subparsers) -> argparse.ArgumentParser:
    """Registers `mislabels` on the `vispipe` verbs (`parser.add_subparsers()`).

    Returns:
        The `mislabels` sub-parser.
    """
    parser = subparsers.add_parser(
        "mislabels", help="likely mislabelled images of a run's dataset (k-fold out-of-fold "
                          "predictions, confident learning)")
    add_settings(parser, MISLABELS_SETTINGS, sections=_sections())
    add_run_flag(parser, "a run folder: its dataset, network and solver are used")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: RUN/mislabels)")
    add_output_flags(parser)
    parser.set_defaults(handler=run_mislabels_command)
    return parser
