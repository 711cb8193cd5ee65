"""Data-parallel training: Horovod across processes, tf.distribute strategies, LR scaling.

The Horovod tests launch `horovodrun -np 2 --gloo -H localhost:2 vispipe train`
on a real MNIST subset; they skip when horovod is not built
(`make horovod` builds it with scripts/build_horovod.sh). The multi-worker
test starts two `vispipe train` processes with a two-worker `TF_CONFIG` on
free local ports.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time
from typing import Callable

import keras
import numpy as np
import psutil
import pytest
import yaml

from conftest import extract_subset
from ports import free_ports
from test_train import write_pattern_dataset
from vispipe.cli import main
from vispipe.configs import LRPolicyConfig, ModelConfig, TrainConfig
from vispipe.registry import Registry
from vispipe.train import train
from vispipe.train.distributed import Replicas, setup
from vispipe.train.schedules import ReplicaScaledSchedule
from vispipe.train.run_folder import RunFolder

pytestmark = pytest.mark.slow  # Scheduled first (see conftest).

HOROVODRUN = os.path.join(os.path.dirname(sys.executable), "horovodrun")
# Ranks see different batches than one process (each reads its own shard), so
# the curves agree statistically, not bit for bit.
LOSS_TOLERANCE = 0.25
# Multi-worker replicas split the very batches one process trains on: the
# first step's loss agrees to rounding, later ones drift apart slowly (the
# summation order differs).
FIRST_STEP_TOLERANCE = 1e-4
MULTIWORKER_DRIFT = 0.01
# fp16 keeps 11 significant bits of each allreduced gradient.
FP16_LOSS_TOLERANCE = 0.01
TIMEOUT_S = 240


def _horovod_skip_reason() -> str | None:
    if importlib.util.find_spec("horovod") is None or not os.path.exists(HOROVODRUN):
        return "horovod is not installed (build it with `make horovod`)"
    import horovod.tensorflow as hvd

    if not hvd.gloo_built():
        return "horovod was built without Gloo"
    return None


needs_horovod = pytest.mark.skipif(_horovod_skip_reason() is not None,
                                   reason=_horovod_skip_reason() or "")


def _config(path, **train) -> str:
    data = {"model": {"name": "lenet"},
            "train": {"batch_size": 32, "mixed_precision": "off", "log_every_steps": 5,
                      "optimizer": "sgd", "momentum": 0.9,
                      "lr": {"policy": "fixed", "base_lr": 0.01}, **train}}
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _horovodrun(args: list[str], hosts: tuple[str, ...] = ("-H", "localhost:2"),
                **popen) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [HOROVODRUN, "-np", "2", "--gloo", *hosts,
         sys.executable, "-m", "vispipe", "train", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"{proc.args} ran past {TIMEOUT_S} s:\n{output[-3000:]}")
    return proc.returncode, output


def _multiworker(args: list[str], homes: list) -> list[subprocess.Popen]:
    """One `vispipe train` process per worker of a local `TF_CONFIG` cluster.

    Each worker gets its own `VISPIPE_HOME` (registry), as on separate hosts.
    """
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(len(homes), host="localhost")]}
    workers = []
    for index, home in enumerate(homes):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "VISPIPE_HOME": str(home),
               "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"}
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "vispipe", "train", *args, "--quiet"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return workers


@pytest.fixture(scope="module")
def mnist_dataset(mnist_archive, tmp_path_factory) -> str:
    """320 train / 80 val MNIST digits as a vispipe dataset."""
    root = tmp_path_factory.mktemp("mnist-hvd")
    extract_subset(mnist_archive, str(root), per_class=40, splits=("train",))
    out = root / "ds"
    assert main(["dataset", "create", "--source", str(root / "mnist-png" / "train"),
                 "--out", str(out), "--size", "28x28", "--channels", "1",
                 "--val-percent", "20", "--quiet"]) == 0
    return str(out)


@pytest.fixture(scope="module")
def horovod_runs(mnist_dataset, tmp_path_factory) -> Callable[[str], RunFolder]:
    """`run(compression)`: a 3-epoch two-rank run, trained once per module."""
    if _horovod_skip_reason():
        pytest.skip(_horovod_skip_reason())
    runs: dict[str, RunFolder] = {}

    def run(compression: str) -> RunFolder:
        if compression not in runs:
            work = tmp_path_factory.mktemp(f"hvd-{compression}")
            cfg = _config(work / "cfg.yaml", epochs=3, distributed="horovod",
                          gradient_compression=compression)
            code, output = _finish(_horovodrun(["--dataset", mnist_dataset, "--run",
                                                str(work / "run"), "--config", cfg]))
            assert code == 0, output[-3000:]
            runs[compression] = RunFolder(str(work / "run"))
        return runs[compression]

    return run


@needs_horovod
@pytest.mark.parametrize("compression", ["none", "fp16"])
def test_two_horovod_ranks_complete_with_identical_weights(horovod_runs, compression):
    run = horovod_runs(compression)
    info = run.read_run_info()
    assert info.status == "completed"
    assert info.epochs_completed == 3
    dist = info.distributed
    assert dist["mode"] == "horovod" and dist["size"] == 2
    assert dist["compression"] == compression
    # Each rank hashed its own weights after training.
    assert len(dist["weight_digests"]) == 2
    assert dist["weight_digests"][0] == dist["weight_digests"][1]
    # 320 records, 160 per rank, 16 per rank-batch (global 32): 10 steps.
    assert info.steps_per_epoch == 10
    assert os.path.isfile(run.model_path)


@needs_horovod
def test_horovod_loss_curve_matches_one_process_with_the_same_global_batch(
    horovod_runs, mnist_dataset, tmp_path
):
    run = horovod_runs("none")
    cfg = yaml.safe_load(open(run.file("config.yaml")))
    single_cfg = TrainConfig(**{**cfg["train"], "distributed": "none",
                                "lr": LRPolicyConfig(**cfg["train"]["lr"])})
    single_cfg = dataclasses.replace(single_cfg, augment=TrainConfig().augment)
    single = train(mnist_dataset, str(tmp_path / "single"), ModelConfig(name="lenet"),
                   single_cfg, progress=False)
    multi = run.read_metrics("epoch")
    assert [r["epoch"] for r in multi] == [r["epoch"] for r in single.history] == [1, 2, 3]
    for one, two in zip(single.history, multi):
        assert abs(one["loss"] - two["loss"]) <= LOSS_TOLERANCE, (single.history, multi)
    assert multi[-1]["loss"] < multi[0]["loss"]


@needs_horovod
def test_fp16_gradient_compression_trains_like_full_precision(horovod_runs):
    full = horovod_runs("none")
    half = horovod_runs("fp16")
    full_curve = [r["loss"] for r in full.read_metrics("epoch")]
    half_curve = [r["loss"] for r in half.read_metrics("epoch")]
    assert half_curve == pytest.approx(full_curve, abs=FP16_LOSS_TOLERANCE)
    # Same data, same ranks (uncompressed runs repeat bit for bit): only the
    # rounding of the allreduced gradients differs, so different weights
    # show that the compression took effect.
    assert (half.read_run_info().distributed["weight_digests"][0]
            != full.read_run_info().distributed["weight_digests"][0])


def _rank_process(launcher: subprocess.Popen, rank: int) -> psutil.Process | None:
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("HOROVOD_RANK") == str(rank) and "vispipe" in " ".join(
                    child.cmdline()):
                return child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def _kill_rank_when(launcher: subprocess.Popen, rank: int, ready, what: str) -> None:
    """SIGKILLs `rank` once `ready()`; fails if the job ends or TIMEOUT_S passes first."""
    deadline = time.monotonic() + TIMEOUT_S
    while not ready():
        assert launcher.poll() is None, launcher.communicate()[0][-3000:]
        assert time.monotonic() < deadline, f"no {what} in time"
        time.sleep(0.05)
    worker = _rank_process(launcher, rank)
    assert worker is not None
    worker.kill()


@needs_horovod
def test_a_killed_worker_fails_the_job_and_resume_continues(mnist_dataset, tmp_path):
    run = RunFolder(str(tmp_path / "run"))
    cfg = _config(tmp_path / "cfg.yaml", epochs=40, distributed="horovod", val_interval=0)
    launcher = _horovodrun(["--dataset", mnist_dataset, "--run", run.path, "--config", cfg])
    _kill_rank_when(launcher, 1, lambda: run.latest_checkpoint() is not None
                    and run.latest_checkpoint().epoch >= 2, "epoch-2 checkpoint")
    # The job ends on its own, well before the timeout: no hang.
    code, output = _finish(launcher)
    assert code != 0
    assert run.read_run_info().status in ("failed", "interrupted")
    killed_at = run.latest_checkpoint().epoch
    assert killed_at < 40

    code, output = _finish(_horovodrun(["--run", run.path, "--resume"]))
    assert code == 0, output[-3000:]
    assert f"at epoch {killed_at + 1}/40" in output
    info = run.read_run_info()
    assert info.status == "completed" and info.epochs_completed == 40
    assert info.distributed["weights_identical"]
    assert [r["epoch"] for r in run.read_metrics("epoch")] == list(range(1, 41))


def test_two_multiworker_processes_train_like_one_and_only_the_chief_writes(
    mnist_dataset, tmp_path
):
    run = RunFolder(str(tmp_path / "run"))
    cfg = _config(tmp_path / "cfg.yaml", epochs=2, distributed="multiworker", log_every_steps=1)
    homes = [tmp_path / "home0", tmp_path / "home1"]
    workers = _multiworker(["--dataset", mnist_dataset, "--run", run.path, "--config", cfg],
                           homes)
    try:
        for code, output in [_finish(worker) for worker in workers]:
            assert code == 0, output[-3000:]
    finally:
        for worker in workers:
            worker.kill()
    info = run.read_run_info()
    assert info.status == "completed" and info.epochs_completed == 2
    dist = info.distributed
    assert (dist["mode"], dist["size"], dist["replicas"]) == ("multiworker", 2, 2)
    # Each worker hashed its own weights after training.
    assert len(dist["weight_digests"]) == 2
    assert dist["weight_digests"][0] == dist["weight_digests"][1]
    # The workers split each global batch: 320 records, 32 a step.
    assert info.steps_per_epoch == 10
    # One writer: one record and one checkpoint per epoch, one registry entry.
    multi = run.read_metrics("epoch")
    assert [r["epoch"] for r in multi] == [1, 2]
    assert sorted(os.listdir(run.checkpoint_dir)) == [
        "epoch-0001.keras", "epoch-0002.keras", "latest.json"]
    registry = Registry.open(str(homes[0] / "registry.db"))
    assert [(e.path, e.status) for e in registry.list("run")] == [(run.path, "completed")]
    registry.close()
    assert not os.path.exists(homes[1] / "registry.db")

    # The same global batches as one process, in the same order.
    single_cfg = TrainConfig(epochs=2, batch_size=32, mixed_precision="off", optimizer="sgd",
                             momentum=0.9, lr=LRPolicyConfig(policy="fixed", base_lr=0.01),
                             log_every_steps=1)
    single = RunFolder(train(mnist_dataset, str(tmp_path / "single"), ModelConfig(name="lenet"),
                             single_cfg, progress=False).run_dir)
    first_steps = [r.read_metrics("step")[0]["loss"] for r in (single, run)]
    assert first_steps[1] == pytest.approx(first_steps[0], abs=FIRST_STEP_TOLERANCE)
    single_curve = [r["loss"] for r in single.read_metrics("epoch")]
    assert [r["loss"] for r in multi] == pytest.approx(single_curve, abs=MULTIWORKER_DRIFT)
    assert multi[-1]["loss"] < multi[0]["loss"]


@needs_horovod
@pytest.mark.parametrize("lost_rank", [1, 0], ids=["worker", "chief"])
def test_an_elastic_horovod_job_loses_a_worker_and_finishes_on_the_other(
    mnist_dataset, tmp_path, lost_rank
):
    # Horovod blames a failed worker's host and stops the workers on it, so
    # each worker gets a host name of its own (both name this machine).
    discovery = tmp_path / "hosts.sh"
    discovery.write_text("#!/bin/sh\necho localhost:1\necho 127.0.0.1:1\n")
    discovery.chmod(0o755)
    run = RunFolder(str(tmp_path / "run"))
    # 320 records, global batch 8: 40 steps an epoch, a step record every 2.
    cfg = _config(tmp_path / "cfg.yaml", epochs=8, batch_size=8,
                  lr={"policy": "fixed", "base_lr": 0.003}, distributed="horovod",
                  elastic=True, val_interval=0, log_every_steps=2)
    launcher = _horovodrun(
        ["--dataset", mnist_dataset, "--run", run.path, "--config", cfg, "--quiet"],
        hosts=("--min-np", "1", "--max-np", "2", "--host-discovery-script", str(discovery)))
    # A rank dies in the first half of epoch 3, which the chief has begun to
    # log. Without the chief, the other worker becomes rank 0 and carries on.
    _kill_rank_when(launcher, lost_rank,
                    lambda: any(2 < r["epoch"] < 2.5 for r in run.read_metrics("step")),
                    "start of epoch 3")

    code, output = _finish(launcher)
    assert code == 0, output[-3000:]
    # Back to the state committed after epoch 2, on one rank.
    assert "Horovod elastic: 1 rank(s) now, training on from epoch 3/8." in output
    info = run.read_run_info()
    assert info.status == "completed" and info.epochs_completed == 8
    assert (info.distributed["size"], info.distributed["elastic"]) == (1, True)
    # Epoch 3 was redone once: the records of its first attempt are gone.
    assert [r["epoch"] for r in run.read_metrics("epoch")] == list(range(1, 9))
    steps = [r["step"] for r in run.read_metrics("step")]
    assert steps == list(range(2, 8 * 40 + 1, 2))
    losses = [r["loss"] for r in run.read_metrics("epoch")]
    assert losses[-1] < losses[0] / 2


def test_elastic_mode_refuses_a_frozen_head_phase(mnist_dataset, tmp_path):
    with pytest.raises(ValueError, match="model.freeze_epochs: expected 0 with train.elastic"):
        train(mnist_dataset, str(tmp_path / "run"), ModelConfig(name="lenet", freeze_epochs=1),
              TrainConfig(distributed="horovod", elastic=True), progress=False)


def test_replica_scaled_lr_warms_up_linearly_and_survives_saving(tmp_path):
    replicas = Replicas("horovod", rank=0, size=4, replicas=4)
    schedule = replicas.scale_schedule(keras.optimizers.schedules.ExponentialDecay(0.1, 1, 1.0),
                                       scale_lr=True, warmup_steps=100)
    assert [round(float(schedule(s)), 6) for s in (0, 50, 100, 400)] == [0.1, 0.25, 0.4, 0.4]
    restored = ReplicaScaledSchedule.from_config(schedule.get_config())
    assert float(restored(50)) == pytest.approx(0.25)
    # Without scale_lr or with one replica the schedule is left alone.
    base = keras.optimizers.schedules.ExponentialDecay(0.1, 1, 1.0)
    assert replicas.scale_schedule(base, scale_lr=False, warmup_steps=0) is base
    assert Replicas().scale_schedule(base, scale_lr=True, warmup_steps=0) is base


def test_horovod_batch_must_split_evenly_and_modes_are_checked():
    assert Replicas("horovod", size=2, replicas=2).input_batch(64) == 32
    with pytest.raises(ValueError, match="multiple of the 3 Horovod ranks.*got 64"):
        Replicas("horovod", size=3, replicas=3).input_batch(64)
    with pytest.raises(ValueError, match="train.distributed: expected one of"):
        setup("nccl")
    with pytest.raises(ValueError, match="gradient_compression: expected one of"):
        setup("none", compression="int8")
    with pytest.raises(ValueError, match="train.elastic: needs train.distributed 'horovod'"):
        setup("mirrored", elastic=True)
    # Elastic mode needs the elastic driver of horovodrun, not a plain launch.
    with pytest.raises(RuntimeError, match="not started by an elastic horovodrun"):
        Replicas("horovod", elastic=True).run_elastic(None, print, print)


def test_mirrored_strategy_trains_and_records_its_replicas(tmp_path):
    data = write_pattern_dataset(str(tmp_path / "patterns"), {"train": 64, "val": 16})
    cfg = TrainConfig(epochs=1, batch_size=16, mixed_precision="off", distributed="mirrored",
                      scale_lr=True, warmup_epochs=0.5)
    result = train(data, str(tmp_path / "run"), ModelConfig(name="lenet"), cfg, progress=False)
    info = RunFolder(result.run_dir).read_run_info()
    assert info.status == "completed"
    assert info.distributed["mode"] == "mirrored"
    assert info.distributed["replicas"] >= 1
    assert np.isfinite(result.history[-1]["loss"])
