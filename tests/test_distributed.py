"""Data-parallel training: Horovod across processes, tf.distribute strategies, LR scaling.

The Horovod tests launch `horovodrun -np 2 --gloo -H localhost:2 vispipe train`
on a real MNIST subset; they skip when horovod is not built
(`make horovod` builds it with scripts/build_horovod.sh).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
import time

import keras
import numpy as np
import psutil
import pytest
import yaml

from conftest import extract_subset
from test_train import write_pattern_dataset
from vispipe.cli import main
from vispipe.configs import LRPolicyConfig, ModelConfig, TrainConfig
from vispipe.train import train
from vispipe.train.distributed import Replicas, ReplicaScaledSchedule, setup
from vispipe.train.run_folder import RunFolder

HOROVODRUN = os.path.join(os.path.dirname(sys.executable), "horovodrun")
# Ranks see different batches than one process (each reads its own shard), so
# the curves agree statistically, not bit for bit.
LOSS_TOLERANCE = 0.25
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


def _horovodrun(args: list[str], **popen) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [HOROVODRUN, "-np", "2", "--gloo", "-H", "localhost:2",
         sys.executable, "-m", "vispipe", "train", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    output, _ = proc.communicate(timeout=TIMEOUT_S)
    return proc.returncode, output


@pytest.fixture(scope="module")
def mnist_dataset(mnist_archive, tmp_path_factory) -> str:
    """320 train / 80 val MNIST digits as a vispipe dataset."""
    root = tmp_path_factory.mktemp("mnist-hvd")
    extract_subset(mnist_archive, str(root), per_class=40, splits=("train",))
    out = root / "ds"
    assert main(["dataset", "create", "--source", str(root / "mnist-png" / "train"),
                 "--output", str(out), "--size", "28x28", "--channels", "1",
                 "--val-percent", "20", "--quiet"]) == 0
    return str(out)


@pytest.fixture(scope="module")
def horovod_run(mnist_dataset, tmp_path_factory):
    if _horovod_skip_reason():
        pytest.skip(_horovod_skip_reason())
    work = tmp_path_factory.mktemp("hvd-run")
    cfg = _config(work / "cfg.yaml", epochs=3, distributed="horovod")
    code, output = _finish(_horovodrun(["--dataset", mnist_dataset, "--out",
                                        str(work / "run"), "--config", cfg]))
    assert code == 0, output[-3000:]
    return RunFolder(str(work / "run"))


@needs_horovod
def test_two_horovod_ranks_complete_with_identical_weights(horovod_run):
    info = horovod_run.read_info()
    assert info["status"] == "completed"
    assert info["epochs_completed"] == 3
    dist = info["distributed"]
    assert dist["mode"] == "horovod" and dist["size"] == 2
    # Each rank hashed its own weights after training.
    assert len(dist["weight_digests"]) == 2
    assert dist["weight_digests"][0] == dist["weight_digests"][1]
    # 320 records, 160 per rank, 16 per rank-batch (global 32): 10 steps.
    assert info["steps_per_epoch"] == 10
    assert os.path.isfile(horovod_run.model_path)


@needs_horovod
def test_horovod_loss_curve_matches_one_process_with_the_same_global_batch(
    horovod_run, mnist_dataset, tmp_path
):
    cfg = yaml.safe_load(open(horovod_run.file("config.yaml")))
    single_cfg = TrainConfig(**{**cfg["train"], "distributed": "none",
                                "lr": LRPolicyConfig(**cfg["train"]["lr"])})
    single_cfg = dataclasses.replace(single_cfg, augment=TrainConfig().augment)
    single = train(mnist_dataset, str(tmp_path / "single"), ModelConfig(name="lenet"),
                   single_cfg, progress=False)
    multi = horovod_run.read_metrics("epoch")
    assert [r["epoch"] for r in multi] == [r["epoch"] for r in single.history] == [1, 2, 3]
    for one, two in zip(single.history, multi):
        assert abs(one["loss"] - two["loss"]) <= LOSS_TOLERANCE, (single.history, multi)
    assert multi[-1]["loss"] < multi[0]["loss"]


def _rank_process(launcher: subprocess.Popen, rank: int) -> psutil.Process | None:
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("HOROVOD_RANK") == str(rank) and "vispipe" in " ".join(
                    child.cmdline()):
                return child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


@needs_horovod
def test_a_killed_worker_fails_the_job_and_resume_continues(mnist_dataset, tmp_path):
    run = RunFolder(str(tmp_path / "run"))
    cfg = _config(tmp_path / "cfg.yaml", epochs=40, distributed="horovod", val_interval=0)
    launcher = _horovodrun(["--dataset", mnist_dataset, "--out", run.path, "--config", cfg])
    deadline = time.monotonic() + TIMEOUT_S
    while run.latest_checkpoint() is None or run.latest_checkpoint().epoch < 2:
        assert launcher.poll() is None, launcher.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.2)
    worker = _rank_process(launcher, 1)
    assert worker is not None
    worker.kill()
    # The job ends on its own, well before the timeout: no hang.
    code, output = _finish(launcher)
    assert code != 0
    info = run.read_info()
    assert info["status"] in ("failed", "interrupted")
    killed_at = run.latest_checkpoint().epoch
    assert killed_at < 40

    code, output = _finish(_horovodrun(["--resume", run.path]))
    assert code == 0, output[-3000:]
    assert f"at epoch {killed_at + 1}/40" in output
    info = run.read_info()
    assert info["status"] == "completed" and info["epochs_completed"] == 40
    assert info["distributed"]["weights_identical"]
    assert [r["epoch"] for r in run.read_metrics("epoch")] == list(range(1, 41))


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


def test_mirrored_strategy_trains_and_records_its_replicas(tmp_path):
    data = write_pattern_dataset(str(tmp_path / "patterns"), {"train": 64, "val": 16})
    cfg = TrainConfig(epochs=1, batch_size=16, mixed_precision="off", distributed="mirrored",
                      scale_lr=True, warmup_epochs=0.5)
    result = train(data, str(tmp_path / "run"), ModelConfig(name="lenet"), cfg, progress=False)
    info = RunFolder(result.run_dir).read_info()
    assert info["status"] == "completed"
    assert info["distributed"]["mode"] == "mirrored"
    assert info["distributed"]["replicas"] >= 1
    assert np.isfinite(result.history[-1]["loss"])
