"""The `vispipe benchmark` verb.

```
vispipe benchmark runs/mnist                       # export everything to runs/mnist-benchmark, then the table
vispipe benchmark runs/mnist --formats tflite,onnx,openvino --verify-limit 1000 --out exports/mnist
vispipe benchmark exports/mnist                    # an existing export: table, picks and plot only
```

Example:

```python
verbs = parser.add_subparsers(dest="verb")
add_benchmark_parser(verbs)
```
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

__all__ = ["add_benchmark_parser", "run_benchmark_command"]


def run_benchmark_command(args: argparse.Namespace) -> int:
    """Runs `vispipe benchmark`; prints the table (or JSON with --json).

    Returns:
        0 when every format passed, 1 when any failed.
    """
    from vispipe.export.benchmark import REPORT_FILE, benchmark, summarize

    source = os.path.abspath(args.run)
    if os.path.isfile(os.path.join(source, REPORT_FILE)):
        report = summarize(source, max_drop=args.max_drop, plot=not args.no_plot)
    else:
        from vispipe.export.api import ExportOptions

        out = args.out or f"{source.rstrip(os.sep)}-benchmark"
        options = ExportOptions(verify_limit=args.verify_limit, verify_split=args.verify_split,
                                tfjs_verify_limit=args.tfjs_verify_limit,
                                calibration_size=args.calibration_size, progress=not args.json)
        # Converters and fine-tunes print progress on stdout; the table owns it.
        with contextlib.redirect_stdout(sys.stderr):
            report = benchmark(source, out, args.formats, overwrite=args.overwrite,
                               options=options, max_drop=args.max_drop, plot=not args.no_plot)
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
    from vispipe.export import FORMATS

    parser = subparsers.add_parser(
        "benchmark", help="export every format, run each in its runtime, and compare size, "
                          "accuracy and latency (table and PNG)")
    parser.add_argument("run", help="a completed run folder (or an export folder: table only)")
    parser.add_argument("--out", default="", help="export folder to create (default: RUN-benchmark)")
    parser.add_argument("--formats", type=lambda text: [v.strip() for v in text.split(",")
                                                        if v.strip()], default=None,
                        help=f"comma-separated, from {','.join(FORMATS)} or one variant such as "
                             "onnx_int8 (default: every installed format)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    parser.add_argument("--max-drop", type=float, default=0.5,
                        help="accuracy budget of the picks, in top-1 points below Keras")
    parser.add_argument("--verify-split", default="", help="split to run on (default: test)")
    parser.add_argument("--verify-limit", type=int, default=0,
                        help="run on N images spread evenly over the split (0: all)")
    parser.add_argument("--tfjs-verify-limit", type=int, default=0,
                        help="run TF.js (pure JavaScript, slow) on N of those images (0: all)")
    parser.add_argument("--calibration-size", type=int, default=200,
                        help="training images for int8 calibration")
    parser.add_argument("--no-plot", action="store_true", help="do not draw benchmark.png")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=run_benchmark_command)
    return parser
