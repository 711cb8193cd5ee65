"""The `vispipe benchmark` verb, in the command line's one config grammar.

```
vispipe benchmark --run runs/mnist                 # export everything to runs/mnist-benchmark, then the table
vispipe benchmark --run runs/mnist --formats tflite,onnx,openvino --verify-limit 1000 \
    --out exports/mnist
vispipe benchmark --export exports/mnist           # an existing export: table, picks and plot only
```

The export settings are `vispipe export`'s (`EXPORT_SETTINGS`, the `export:`
section), so `--config` and `--set export.KEY=VALUE` work the same here.

Example:

```python
verbs = parser.add_subparsers(dest="verb")
add_benchmark_parser(verbs)
```
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys

from vispipe.cli_grammar import add_output_flags, add_settings, resolve
from vispipe.export.cli import EXPORT_SETTINGS

__all__ = ["add_benchmark_parser", "run_benchmark_command"]


def _export_options(args: argparse.Namespace):
    """`ExportOptions` from --config < flags < --set, progress off with --json/--quiet."""
    from vispipe.config_io import from_dict
    from vispipe.export.options import ExportOptions

    config = resolve(args, verb="benchmark")
    options = from_dict(ExportOptions, config.export,
                        f"{args.config}: export" if args.config else "export")
    return dataclasses.replace(options, progress=options.progress and not args.json
                               and not args.quiet)


def run_benchmark_command(args: argparse.Namespace) -> int:
    """Runs `vispipe benchmark`; prints the table (or JSON with --json).

    Returns:
        0 when every format passed, 1 when any failed.

    Raises:
        ValueError: Neither or both of --run and --export, or bad settings.
    """
    from vispipe.export.benchmark import benchmark, summarize

    if bool(args.run) == bool(args.export):
        raise ValueError("benchmark needs --run RUN_DIR (export, then benchmark) or "
                         "--export DIR (an existing export), not both.")
    if args.export:
        report = summarize(args.export, max_drop=args.max_drop, plot=not args.no_plot)
    else:
        options = _export_options(args)
        out = args.out or f"{os.path.abspath(args.run).rstrip(os.sep)}-benchmark"
        # Converters and fine-tunes print progress on stdout; the table owns it.
        with contextlib.redirect_stdout(sys.stderr):
            report = benchmark(args.run, out, overwrite=args.overwrite, options=options,
                               max_drop=args.max_drop, plot=not args.no_plot)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.text(), end="")
        print(f"Benchmark written to {report.export_dir} (benchmark.json, benchmark.md"
              f"{', benchmark.png' if report.plot_path else ''}).", file=sys.stderr)
    return 0 if all(r.status == "passed" for r in report.rows) else 1


def add_benchmark_parser(subparsers) -> argparse.ArgumentParser:
    """Registers `benchmark` on the `vispipe` verbs (`parser.add_subparsers()`).

    Returns:
        The `benchmark` sub-parser (its `handler` is `run_benchmark_command`).
    """
    from vispipe.export.options import ExportOptions

    parser = subparsers.add_parser(
        "benchmark", help="export every format, run each in its runtime, and compare size, "
                          "accuracy and latency (table and PNG)")
    add_settings(parser, EXPORT_SETTINGS, sections={"export": ExportOptions})
    parser.add_argument("--run", metavar="RUN_DIR", help="a completed run folder to export")
    parser.add_argument("--export", metavar="DIR",
                        help="an existing export folder (table, picks and plot only)")
    parser.add_argument("--out", metavar="DIR",
                        help="export folder to create (default: RUN_DIR-benchmark)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing export folder (once the new one is complete)")
    parser.add_argument("--max-drop", type=float, default=0.5,
                        help="accuracy budget of the picks, in top-1 points below Keras")
    parser.add_argument("--no-plot", action="store_true", help="do not draw benchmark.png")
    add_output_flags(parser)
    parser.set_defaults(handler=run_benchmark_command)
    return parser
