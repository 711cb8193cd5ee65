"""The `vispipe export` verb, in the command line's one config grammar.

```
vispipe export --run runs/mnist --out exports/mnist
vispipe export --run runs/mnist --formats tflite,tfjs --out exports/mnist --overwrite \
    --set export.verify_limit=1000
vispipe export --run runs/mnist --out exports/mnist --config pipeline.yaml   # its export: section
vispipe export --run runs/mnist --formats onnx,openvino_int8 --out exports/mnist-interop
```

Every settings flag sets one key of the `export:` section (`ExportOptions`),
which `--config` and `--set export.KEY=VALUE` set too.

Example:

```python
verbs = parser.add_subparsers(dest="verb")
add_export_parser(verbs)
```
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from vispipe.cli_grammar import (
    Flag,
    add_output_flags,
    add_run_flag,
    add_settings,
    positional_operand,
    resolve,
)

__all__ = ["EXPORT_SETTINGS", "add_export_parser", "run_export_command"]

# flag -> key of the export: section (type, default and choices: ExportOptions).
EXPORT_SETTINGS = (
    Flag("--formats", "export.formats",
         "formats or single variants (onnx_int8) to export, comma-separated "
         "(default: every format whose tools are installed)"),
    Flag("--name", "export.name", "model name (default: the run's name)"),
    Flag("--version", "export.version", "TF Serving version number"),
    Flag("--which", "export.which", "which model of the run"),
    Flag("--top-k", "export.top_k", "top labels every artifact returns"),
    Flag("--calibration-size", "export.calibration_size", "training images for int8 calibration"),
    Flag("--sparsity", "export.sparsities", "pruning target sparsities, comma-separated"),
    Flag("--prune-epochs", "export.prune_epochs", "fine-tune epochs per sparsity"),
    Flag("--prune-min-steps", "export.prune_min_steps",
         "fine-tune steps per sparsity at least (a small dataset's epochs are few)"),
    Flag("--prune-limit", "export.prune_limit", "training images for the fine-tune (0: all)"),
    Flag("--prune-max-drop", "export.prune_max_drop",
         "largest top-1 accuracy drop a pruned model may have (0.01: 1 point)"),
    Flag("--coreml-weights", "export.coreml_weights", "CoreML weight types"),
    Flag("--tfjs-weights", "export.tfjs_quantizations", "TF.js weight types"),
    Flag("--verify-split", "export.verify_split", "split to verify on (default: test, else val)"),
    Flag("--verify-limit", "export.verify_limit",
         "verify on N images spread evenly over the split (0: all)"),
    Flag("--tfjs-verify-limit", "export.tfjs_verify_limit",
         "verify TF.js (pure JavaScript, slow) on N of those images (0: all)"),
    Flag("--author", "export.metadata.author", "CoreML author metadata"),
    Flag("--license", "export.metadata.license", "CoreML licence metadata"),
)


def _sections() -> dict[str, type]:
    from vispipe.export.options import ExportOptions

    return {"export": ExportOptions}


def run_export_command(args: argparse.Namespace) -> int:
    """Runs `vispipe export`; prints the Markdown table (or JSON with --json).

    Returns:
        0 when every format passed, 1 when any failed (the others are still
        written), and raises on bad input (the CLI prints it as an error).
    """
    from vispipe.config_io import from_dict
    from vispipe.export.api import export_model
    from vispipe.export.options import ExportOptions

    positional_operand(args, "legacy_run", "--run", "RUN", "export")
    if not args.run or not args.out:
        raise ValueError("export needs --run RUN_DIR and --out DIR.")
    config = resolve(args, verb="export")
    where = f"{args.config}: export" if args.config else "export"
    options = from_dict(ExportOptions, config.export, where)
    options = dataclasses.replace(options, progress=options.progress and not args.json
                                  and not args.quiet)
    report = export_model(args.run, args.out, overwrite=args.overwrite, options=options)
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
    parser = subparsers.add_parser(
        "export", help="export a trained run (SavedModel, TFLite, pruned, CoreML, TF.js, ONNX, "
                       "OpenVINO) and verify every artifact")
    add_settings(parser, EXPORT_SETTINGS, sections=_sections())
    add_run_flag(parser, "a completed run folder")
    parser.add_argument("--out", metavar="DIR", help="export folder to create")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing export folder (once the new one is complete)")
    add_output_flags(parser)
    parser.set_defaults(handler=run_export_command)
    return parser
