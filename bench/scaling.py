"""Horovod scaling with one core per rank: N ranks against one rank on one core, one JSON object.

Each rank is pinned to its own core (`sched_setaffinity` on the rank's local
index) and runs TensorFlow with one intra-op and one inter-op thread, so a
rank is one core's worth of compute, as a rank is one GPU's worth on a cluster.
The baseline is one rank pinned the same way. Batches are per rank (weak
scaling, as Horovod's own benchmarks): the global batch is `--batch-per-rank`
times the ranks. Training runs through `horovodrun --gloo ... vispipe train
--distributed horovod` (this Horovod has no MPI controller), with a step
record per step in the run's metrics. Two rates per run, global images/s,
the first epoch (tracing) left out:

- step rate: the global batch over the mean time of the full training steps
  (each epoch's first step, which waits for the input pipeline's restart,
  and its last, partial one left out): what Horovod's own benchmark reports
  (img/s over training iterations), and what an epoch of hundreds of steps
  runs at. `scaling_efficiency` is measured on it;
- epoch rate: the median epoch throughput. With 1,500 images an epoch is
  ~12 steps a rank at 2 ranks against ~23 with one, so each epoch's fixed
  cost weighs twice as much in the N-rank figure (`epoch_scaling_efficiency`).

Legs alternate (1 rank, N ranks, 1 rank, ... `--repeats` N-rank legs, each
between two one-rank legs) so that a change in the machine's load shows as
a spread (`*_legs`) instead of a bias; the efficiencies use the medians.

`--model resnet20` trains ResNet-20 on CIFAR-10 JPEGs (32x32), `--model lenet`
LeNet on MNIST PNGs (28x28); both with and without fp16 allreduce compression.
`scaling_efficiency` = rate(N ranks) / (N x rate(1 rank)), without compression
(`scaling_efficiency_fp16` with it).

What the machine allows: N independent one-rank runs at once, each on its own
core (no allreduce, nothing shared but the hardware), give
`parallel_ceiling` = their summed rate / (N x rate(1 rank)). Cores that share
a physical core (SMT siblings, as a VM's vCPUs may be), caches or memory
bandwidth put it below 1, and no allreduce can beat it:
`efficiency_vs_ceiling` = `scaling_efficiency` / `parallel_ceiling` is what
Horovod itself costs.

Usage:

    python bench/scaling.py --model resnet20 --ranks 2
    python bench/scaling.py --model resnet20 --per-class 500 --repeats 2 --no-fp16
    python bench/scaling.py --model lenet --per-class 200
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))

from conftest import extract_subset, shared_datasets_dir  # noqa: E402

WORKLOADS = {  # model -> (archive, folder inside it, image size, channels)
    "lenet": ("mnist-png.tar.gz", "mnist-png", "28x28", "1"),
    "resnet20": ("cifar10-jpg.tar.gz", "cifar10-jpg", "32x32", "3"),
}
_RANK_ENV = ("HOROVOD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_RANK")
_CORE_ENV = "SCALING_BENCH_CORE"  # pins a one-rank run to a given core (the ceiling's runs)


def pin_and_exec(command: list[str]) -> None:
    """Pins this process to the core of its local rank, one TF thread each, then runs `command`."""
    rank = next((int(os.environ[name]) for name in (_CORE_ENV, *_RANK_ENV) if name in os.environ), 0)
    os.sched_setaffinity(0, {rank % os.cpu_count()})
    os.environ.update(TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1", OMP_NUM_THREADS="1")
    os.execvp(command[0], command)


def _launch(ranks: int, dataset: str, config: str, run: str, core: int | None = None) -> subprocess.Popen:
    """Starts `vispipe train` under horovodrun, each rank pinned (to `core` when given)."""
    horovodrun = os.path.join(os.path.dirname(sys.executable), "horovodrun")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if core is not None:
        env[_CORE_ENV] = str(core)
    return subprocess.Popen(
        [horovodrun, "-np", str(ranks), "--gloo", "-H", f"localhost:{ranks}",
         sys.executable, os.path.abspath(__file__), "--pinned", "--",
         sys.executable, "-m", "vispipe", "train", "--dataset", dataset, "--out", run,
         "--config", config, "--quiet"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@dataclass(frozen=True)
class Rates:
    """One run's global throughput (images/s), the first epoch left out.

    Attributes:
        step: The global batch over the mean time of the full training steps.
        epoch: The median epoch rate.
    """

    step: float
    epoch: float


def _rates(process: subprocess.Popen, run: str, global_batch: int) -> Rates:
    """Waits for a training launched by `_launch`; its rates from the chief's metrics."""
    if process.wait(timeout=1800) != 0:
        raise RuntimeError(f"training into {run} failed with exit code {process.returncode}")
    with open(os.path.join(run, "metrics.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    epochs = [r for r in records if r["kind"] == "epoch"]
    step_seconds = []
    for epoch in range(1, len(epochs)):
        times = [r["time"] for r in records if r["kind"] == "step" and epoch < r["epoch"] <= epoch + 1]
        # The first step has no start mark in the epoch; the last is partial.
        step_seconds += [b - a for a, b in zip(times[:-2], times[1:-1])]
    if not step_seconds:
        raise RuntimeError(f"{run}: no full training steps after the first epoch (more --epochs)")
    rates = sorted(r["images_per_s"] for r in epochs[1:] or epochs)
    return Rates(global_batch / statistics.mean(step_seconds), rates[len(rates) // 2])


def _throughput(ranks: int, dataset: str, config: str, work: str, tag: str,
                batch_per_rank: int) -> Rates:
    run = os.path.join(work, f"run-{tag}-np{ranks}")
    return _rates(_launch(ranks, dataset, config, run), run, batch_per_rank * ranks)


def _independent_throughput(copies: int, dataset: str, config: str, work: str,
                            batch_per_rank: int) -> Rates:
    """The summed rates of `copies` one-rank runs at once, each on its own core."""
    runs = [os.path.join(work, f"run-independent-{core}") for core in range(copies)]
    processes = [_launch(1, dataset, config, run, core) for core, run in enumerate(runs)]
    try:
        each = [_rates(process, run, batch_per_rank) for process, run in zip(processes, runs)]
    finally:  # one failed: the others are not left training
        for process in processes:
            if process.poll() is None:
                process.kill()
    return Rates(sum(r.step for r in each), sum(r.epoch for r in each))


def _config(work: str, model: str, ranks: int, args: argparse.Namespace, compression: str) -> str:
    path = os.path.join(work, f"cfg-{compression}-np{ranks}.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump({"model": {"name": model}, "train": {
            "epochs": args.epochs, "batch_size": args.batch_per_rank * ranks, "val_interval": 0,
            "log_every_steps": 1,
            "mixed_precision": "off", "distributed": "horovod", "gradient_compression": compression,
            "lr": {"policy": "fixed", "base_lr": 0.01}}}, f)
    return path


def _alternating_legs(dataset: str, work: str, args: argparse.Namespace,
                      compression: str) -> dict[int, list[Rates]]:
    """Runs 1, N, 1, N, ..., 1 ranks (`args.repeats` N-rank legs); rates by ranks."""
    legs: dict[int, list[Rates]] = {1: [], args.ranks: []}
    for leg, ranks in enumerate([1, args.ranks] * args.repeats + [1]):
        config = _config(work, args.model, ranks, args, compression)
        legs[ranks].append(_throughput(ranks, dataset, config, work, f"{compression}-{leg}",
                                       args.batch_per_rank))
        print(f"{compression} np{ranks} leg {leg}: {legs[ranks][-1]}", file=sys.stderr)
    return legs


def _summary(legs: dict[int, list[Rates]], ranks: int, suffix: str) -> dict:
    """Efficiencies from the legs' median rates, and every leg's rates (the spread)."""
    report = {}
    for kind, prefix in (("step", ""), ("epoch", "epoch_")):
        median = {n: statistics.median(getattr(r, kind) for r in legs[n]) for n in legs}
        report[f"{prefix}scaling_efficiency{suffix}"] = round(median[ranks] / (ranks * median[1]), 3)
        for n in (1, ranks):
            report[f"{prefix}images_per_s_{n}{suffix}"] = round(median[n], 1)
            report[f"{prefix}images_per_s_{n}_legs{suffix}"] = [round(getattr(r, kind), 1) for r in legs[n]]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(WORKLOADS), default="resnet20")
    parser.add_argument("--ranks", type=int, default=2, help="ranks compared with one (at most the cores)")
    parser.add_argument("--per-class", type=int, default=150, help="training images per class")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-per-rank", type=int, default=64)
    parser.add_argument("--no-fp16", action="store_true", help="skip the fp16-compression runs")
    parser.add_argument("--repeats", type=int, default=1,
                        help="N-rank legs per compression, each between two one-rank legs")
    args = parser.parse_args(argv)
    archive_name, folder, size, channels = WORKLOADS[args.model]
    archive = os.path.join(shared_datasets_dir(), archive_name)
    if not os.path.isfile(archive):
        parser.error(f"archive not found at {archive} (set VISPIPE_SHARED_DATASETS)")
    if not 2 <= args.ranks <= (os.cpu_count() or 1):
        parser.error(f"--ranks: expected 2..{os.cpu_count()} (one core per rank), got {args.ranks}")
    if args.repeats < 1:
        parser.error(f"--repeats: expected at least 1, got {args.repeats}")
    from vispipe.cli import main as vispipe

    load_before = os.getloadavg()
    report: dict = {}
    with tempfile.TemporaryDirectory() as work:
        extract_subset(archive, work, per_class=args.per_class, splits=("train",))
        dataset = os.path.join(work, "ds")
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON.
            vispipe(["dataset", "create", "--source", os.path.join(work, folder, "train"),
                     "--out", dataset, "--size", size, "--channels", channels,
                     "--val-percent", "0", "--quiet"])
        legs = {compression: _alternating_legs(dataset, work, args, compression)
                for compression in (("none",) if args.no_fp16 else ("none", "fp16"))}
        for compression, rates in legs.items():
            report.update(_summary(rates, args.ranks, "" if compression == "none" else "_fp16"))
        one_rank = Rates(*(statistics.median(getattr(r, kind) for r in legs["none"][1])
                           for kind in ("step", "epoch")))
        independent = _independent_throughput(
            args.ranks, dataset, _config(work, args.model, 1, args, "none"), work, args.batch_per_rank)
        print(f"{args.ranks} independent one-rank runs: {independent}", file=sys.stderr)
    ceiling = independent.step / (args.ranks * one_rank.step)
    report.update({
        "parallel_ceiling": round(ceiling, 3),
        "efficiency_vs_ceiling": round(report["scaling_efficiency"] / ceiling, 3),
        f"independent_images_per_s_{args.ranks}": round(independent.step, 1),
        "epoch_parallel_ceiling": round(independent.epoch / (args.ranks * one_rank.epoch), 3),
        f"independent_epoch_images_per_s_{args.ranks}": round(independent.epoch, 1),
    })
    report.update({
        "model": args.model,
        "ranks": args.ranks,
        "one_core_per_rank": True,
        "tf_threads_per_rank": {"intra_op": 1, "inter_op": 1},
        "batch_per_rank": args.batch_per_rank,
        "images": args.per_class * 10,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "estimator": "step: global batch / mean full-step time; epoch: median epoch rate; "
                     "first epoch left out; medians over the legs",
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
    })
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--pinned"]:
        pin_and_exec(sys.argv[3:])  # --pinned -- COMMAND...
    sys.exit(main())
