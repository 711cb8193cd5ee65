"""The `vispipe export` verb.

```
vispipe export runs/mnist --out exports/mnist
vispipe export runs/mnist --formats tflite,tfjs --out exports/mnist --overwrite --verify-limit 1000
vispipe export runs/mnist --formats onnx,openvino_int8 --out exports/mnist-interop
```

Example:

```python
verbs = parser.add_subparsers(dest="verb")
add_export_parser(verbs)
```
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_export_parser", "run_export_command"]


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def run_export_command(args: argparse.Namespace) -> int:
    """Runs `vispipe export`; prints the Markdown table (or JSON with --json).

    Returns:
        0 when every format passed, 1 when any failed (the others are still
        written), and raises on bad input (the CLI prints it as an error).
    """
    from vispipe.export.api import ExportOptions, export_model

    options = ExportOptions(
        name=args.name, version=args.version, which=args.which, top_k=args.top_k,
        calibration_size=args.calibration_size, sparsities=args.sparsity,
        prune_epochs=args.prune_epochs, prune_limit=args.prune_limit,
        prune_max_drop=args.prune_max_drop,
        coreml_weights=args.coreml_weights, tfjs_quantizations=args.tfjs_weights,
        verify_split=args.verify_split, verify_limit=args.verify_limit,
        metadata={k: v for k, v in (("author", args.author), ("license", args.license))
                  if v},
        progress=not args.json,
    )
    report = export_model(args.run, args.out, args.formats, overwrite=args.overwrite,
                          options=options)
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "markdown"}, indent=2,
                         default=str))
    else:
        print(report["markdown"], end="")
        print(f"Exported to {report['out_dir']} (report: export_report.json).", file=sys.stderr)
    return 0 if all(r["status"] == "passed" for r in report["formats"]) else 1


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """Registers `export` on the `vispipe` verbs (`parser.add_subparsers()`).

    The parser's `handler` default is `run_export_command`.

    Returns:
        The `export` sub-parser.
    """
    from vispipe.export import FORMATS

    parser = subparsers.add_parser(
        "export", help="export a trained run (SavedModel, TFLite, pruned, CoreML, TF.js, ONNX, "
                       "OpenVINO) and verify every artifact")
    parser.add_argument("run", help="a completed run folder")
    parser.add_argument("--out", required=True, help="export folder to create")
    parser.add_argument("--formats", type=_names, default=None,
                        help=f"comma-separated, from {','.join(FORMATS)} (default: all)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing export folder")
    parser.add_argument("--name", default="", help="model name (default: the run's name)")
    parser.add_argument("--version", type=int, default=1, help="TF Serving version number")
    parser.add_argument("--which", choices=("final", "best", "last"), default="final",
                        help="which model of the run")
    parser.add_argument("--top-k", type=int, default=5, help="top labels returned")
    parser.add_argument("--calibration-size", type=int, default=200,
                        help="training images for int8 calibration")
    parser.add_argument("--sparsity", type=_floats, default=[0.5, 0.8],
                        help="pruning target sparsities, comma-separated")
    parser.add_argument("--prune-epochs", type=int, default=2, help="fine-tune epochs per sparsity")
    parser.add_argument("--prune-limit", type=int, default=0,
                        help="training images for the fine-tune (0: all)")
    parser.add_argument("--prune-max-drop", type=float, default=0.01,
                        help="largest top-1 accuracy drop a pruned model may have (0.01: 1 point)")
    parser.add_argument("--coreml-weights", type=_names, default=["float16"],
                        help="float16 and/or int8")
    parser.add_argument("--tfjs-weights", type=_names, default=["float32", "float16", "uint8"],
                        help="TF.js weight types")
    parser.add_argument("--verify-split", default="", help="split to verify on (default: test)")
    parser.add_argument("--verify-limit", type=int, default=0,
                        help="verify on N images spread evenly over the split (0: all)")
    parser.add_argument("--author", default="", help="CoreML author metadata")
    parser.add_argument("--license", default="", help="CoreML licence metadata")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=run_export_command)
    return parser
