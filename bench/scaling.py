"""Horovod scaling with one core per rank: N ranks against one rank on one core, one JSON object.

Each rank is pinned to its own core (`sched_setaffinity` on the rank's local
index) and runs TensorFlow with one intra-op and one inter-op thread, so a
rank is one core's worth of compute, as a rank is one GPU's worth on a cluster.
The baseline is one rank pinned the same way. Batches are per rank (weak
scaling, as Horovod's own benchmarks): the global batch is `--batch-per-rank`
times the ranks. Training runs through `horovodrun --gloo ... vispipe train
--distributed horovod`; each rate is the median epoch throughput (global
images/s, the first epoch, with tracing, left out) from the run's metrics.

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
    python bench/scaling.py --model lenet --per-class 200
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


def _median_rate(process: subprocess.Popen, run: str) -> float:
    """Waits for a training launched by `_launch`; its median epoch rate after the first."""
    if process.wait(timeout=1800) != 0:
        raise RuntimeError(f"training into {run} failed with exit code {process.returncode}")
    with open(os.path.join(run, "metrics.jsonl"), encoding="utf-8") as f:
        epochs = [json.loads(line) for line in f if '"kind": "epoch"' in line]
    rates = sorted(r["images_per_s"] for r in epochs[1:] or epochs)
    return rates[len(rates) // 2]


def _throughput(ranks: int, dataset: str, config: str, work: str, tag: str) -> float:
    run = os.path.join(work, f"run-{tag}-np{ranks}")
    return _median_rate(_launch(ranks, dataset, config, run), run)


def _independent_throughput(copies: int, dataset: str, config: str, work: str) -> float:
    """The summed rate of `copies` one-rank runs at once, each on its own core."""
    runs = [os.path.join(work, f"run-independent-{core}") for core in range(copies)]
    processes = [_launch(1, dataset, config, run, core) for core, run in enumerate(runs)]
    try:
        return sum(_median_rate(process, run) for process, run in zip(processes, runs))
    finally:  # one failed: the others are not left training
        for process in processes:
            if process.poll() is None:
                process.kill()


def _config(work: str, model: str, ranks: int, args: argparse.Namespace, compression: str) -> str:
    path = os.path.join(work, f"cfg-{compression}-np{ranks}.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump({"model": {"name": model}, "train": {
            "epochs": args.epochs, "batch_size": args.batch_per_rank * ranks, "val_interval": 0,
            "mixed_precision": "off", "distributed": "horovod", "gradient_compression": compression,
            "lr": {"policy": "fixed", "base_lr": 0.01}}}, f)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(WORKLOADS), default="resnet20")
    parser.add_argument("--ranks", type=int, default=2, help="ranks compared with one (at most the cores)")
    parser.add_argument("--per-class", type=int, default=150, help="training images per class")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-per-rank", type=int, default=64)
    parser.add_argument("--no-fp16", action="store_true", help="skip the fp16-compression runs")
    args = parser.parse_args(argv)
    archive_name, folder, size, channels = WORKLOADS[args.model]
    archive = os.path.join(shared_datasets_dir(), archive_name)
    if not os.path.isfile(archive):
        parser.error(f"archive not found at {archive} (set VISPIPE_SHARED_DATASETS)")
    if not 2 <= args.ranks <= (os.cpu_count() or 1):
        parser.error(f"--ranks: expected 2..{os.cpu_count()} (one core per rank), got {args.ranks}")
    from vispipe.cli import main as vispipe

    load_before = os.getloadavg()
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as work:
        extract_subset(archive, work, per_class=args.per_class, splits=("train",))
        dataset = os.path.join(work, "ds")
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON.
            vispipe(["dataset", "create", "--source", os.path.join(work, folder, "train"),
                     "--out", dataset, "--size", size, "--channels", channels,
                     "--val-percent", "0", "--quiet"])
        for compression in ("none",) if args.no_fp16 else ("none", "fp16"):
            for ranks in (1, args.ranks):
                config = _config(work, args.model, ranks, args, compression)
                rates[f"{compression}-{ranks}"] = _throughput(ranks, dataset, config, work, compression)
                print(f"{compression} np{ranks}: {rates[f'{compression}-{ranks}']:.1f} img/s", file=sys.stderr)
        rates["independent"] = _independent_throughput(
            args.ranks, dataset, _config(work, args.model, 1, args, "none"), work)
        print(f"{args.ranks} independent one-rank runs: {rates['independent']:.1f} img/s", file=sys.stderr)
    efficiency = rates[f"none-{args.ranks}"] / (args.ranks * rates["none-1"])
    ceiling = rates["independent"] / (args.ranks * rates["none-1"])
    report = {
        "scaling_efficiency": round(efficiency, 3),
        "images_per_s_1": round(rates["none-1"], 1),
        f"images_per_s_{args.ranks}": round(rates[f"none-{args.ranks}"], 1),
        "parallel_ceiling": round(ceiling, 3),
        "efficiency_vs_ceiling": round(efficiency / ceiling, 3),
        f"independent_images_per_s_{args.ranks}": round(rates["independent"], 1),
    }
    if not args.no_fp16:
        report.update({
            "scaling_efficiency_fp16": round(rates[f"fp16-{args.ranks}"] / (args.ranks * rates["fp16-1"]), 3),
            "images_per_s_1_fp16": round(rates["fp16-1"], 1),
            f"images_per_s_{args.ranks}_fp16": round(rates[f"fp16-{args.ranks}"], 1),
        })
    report.update({
        "model": args.model,
        "ranks": args.ranks,
        "one_core_per_rank": True,
        "tf_threads_per_rank": {"intra_op": 1, "inter_op": 1},
        "batch_per_rank": args.batch_per_rank,
        "images": args.per_class * 10,
        "epochs": args.epochs,
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
