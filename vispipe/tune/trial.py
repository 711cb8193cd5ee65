"""One trial of `vispipe tune` in a process of its own.

`python -m vispipe.tune.trial --config TRIAL.yaml --dataset DIR --run RUN`
trains the trial's pipeline settings into `RUN` (or resumes `RUN` when an
earlier attempt left it unfinished). It knows nothing of Optuna: the search
process reads the run's `metrics.jsonl` to report and prune, and stops a
pruned trial with SIGTERM, which the trainer handles like Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Trains or resumes one trial; returns the exit status (130 when stopped)."""
    parser = argparse.ArgumentParser(prog="python -m vispipe.tune.trial",
                                     description="Train one vispipe tune trial.")
    parser.add_argument("--config", required=True, help="the trial's pipeline YAML")
    parser.add_argument("--dataset", required=True, help="dataset folder")
    parser.add_argument("--run", required=True, help="run folder")
    parser.add_argument("--name", default="", help="run name")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    from vispipe.config_io import load_pipeline
    from vispipe.train import resume, train
    from vispipe.train.run_folder import RunFolder

    config = load_pipeline(args.config)
    run = RunFolder(args.run)
    try:
        if run.exists():
            if run.read_run_info().status != "completed":
                resume(args.run, progress=not args.quiet)
        else:
            train(args.dataset, args.run, config.model, config.train, name=args.name,
                  progress=not args.quiet)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
