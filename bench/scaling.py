"""Horovod scaling: training throughput with 1 and 2 processes, one JSON object.

Trains LeNet on an MNIST subset with `horovodrun -np 1` and `-np 2 --gloo`
(same global batch) through `vispipe train --distributed horovod`, and reads
the median epoch throughput (global images/s) from each run.json.

On a 2-core CPU machine the two ranks share the cores that one process
already uses (TensorFlow runs its ops multi-threaded), so the figure mostly
measures allreduce and process overhead: efficiency well below 1 is expected
and says nothing about GPU clusters, where each rank owns a GPU.

Usage: python bench/scaling.py [--per-class 100] [--epochs 3] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile

import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))

from conftest import extract_subset, shared_datasets_dir  # noqa: E402


def _throughput(np_: int, dataset: str, config: str, work: str) -> float:
    run = os.path.join(work, f"run-np{np_}")
    horovodrun = os.path.join(os.path.dirname(sys.executable), "horovodrun")
    subprocess.run(
        [horovodrun, "-np", str(np_), "--gloo", "-H", f"localhost:{np_}", sys.executable,
         "-m", "vispipe", "train", "--dataset", dataset, "--out", run, "--config", config,
         "--quiet"],
        check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800,
    )
    with open(os.path.join(run, "metrics.jsonl"), encoding="utf-8") as f:
        epochs = [json.loads(line) for line in f if '"kind": "epoch"' in line]
    # The first epoch traces the graph; the later ones measure steady state.
    rates = sorted(r["images_per_s"] for r in epochs[1:] or epochs)
    return rates[len(rates) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch")
    args = parser.parse_args(argv)
    archive = os.path.join(shared_datasets_dir(), "mnist-png.tar.gz")
    if not os.path.isfile(archive):
        parser.error(f"MNIST archive not found at {archive} (set VISPIPE_SHARED_DATASETS)")
    from vispipe.cli import main as vispipe

    with tempfile.TemporaryDirectory() as work:
        extract_subset(archive, work, per_class=args.per_class, splits=("train",))
        dataset = os.path.join(work, "ds")
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON.
            vispipe(["dataset", "create", "--source", os.path.join(work, "mnist-png", "train"),
                     "--output", dataset, "--size", "28x28", "--channels", "1",
                     "--val-percent", "0", "--quiet"])
        config = os.path.join(work, "cfg.yaml")
        with open(config, "w", encoding="utf-8") as f:
            yaml.safe_dump({"model": {"name": "lenet"}, "train": {
                "epochs": args.epochs, "batch_size": args.batch_size, "val_interval": 0,
                "mixed_precision": "off", "distributed": "horovod",
                "lr": {"policy": "fixed", "base_lr": 0.01}}}, f)
        one = _throughput(1, dataset, config, work)
        two = _throughput(2, dataset, config, work)
    print(json.dumps({
        "images_per_s_1": round(one, 1),
        "images_per_s_2": round(two, 1),
        "scaling_efficiency": round(two / (2 * one), 3),
        "cpu_cores": os.cpu_count(),
        "images": args.per_class * 10,
        "global_batch": args.batch_size,
        "model": "lenet",
        "note": ("2 ranks share the same CPU cores as 1 rank: this measures Horovod "
                 "overhead, not the speed-up of one GPU per rank"),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
