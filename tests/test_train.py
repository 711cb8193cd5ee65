"""Real training runs on a tiny synthetic dataset: run folder, resume, freezing."""

from __future__ import annotations

import json
import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from vispipe.configs import LRPolicyConfig, ModelConfig, TrainConfig
from vispipe.data import format as fmt
from vispipe.data.format import ImageInput
from vispipe.models import build_classifier
from vispipe.registry import Registry
from vispipe.train import RunFolder, load_run_model, lr_at, resume, train
from vispipe.train.device import seed_everything

SIZE, CLASSES = 16, 4


def _pattern_images(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class k: a bright quadrant k on a dark, noisy background."""
    labels = np.arange(count) % CLASSES
    images = rng.normal(40, 20, (count, SIZE, SIZE, 1))
    half = SIZE // 2
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 2)
        images[i, row * half:(row + 1) * half, col * half:(col + 1) * half] += 160
    return np.clip(images, 0, 255).astype(np.uint8), labels


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def write_pattern_dataset(path: str, counts: dict[str, int], seed: int = 0) -> str:
    """A vispipe dataset folder (raw encoding) of 4 distinguishable patterns."""
    os.makedirs(path)
    rng = np.random.default_rng(seed)
    shards, all_train = {}, None
    for split, count in counts.items():
        images, labels = _pattern_images(count, rng)
        if split == "train":
            all_train = images
        name = fmt.shard_name(split, 0, 1)
        with tf.io.TFRecordWriter(os.path.join(path, name)) as writer:
            for i, (image, label) in enumerate(zip(images, labels)):
                feature = {
                    fmt.FEATURE_IMAGE: _bytes(image.tobytes()),
                    fmt.FEATURE_LABEL: tf.train.Feature(
                        int64_list=tf.train.Int64List(value=[int(label)])),
                    fmt.FEATURE_FILENAME: _bytes(f"{split}/{i}.png".encode()),
                }
                example = tf.train.Example(features=tf.train.Features(feature=feature))
                writer.write(example.SerializeToString())
        shards[split] = [name]
    classes = [f"pattern{k}" for k in range(CLASSES)]
    np.save(os.path.join(path, fmt.MEAN_FILE), all_train.mean(axis=0).astype(np.float32))
    with open(os.path.join(path, fmt.LABELS_FILE), "w") as f:
        f.write("".join(c + "\n" for c in classes))
    info = fmt.DatasetInfo(
        path=path, classes=classes, height=SIZE, width=SIZE, channels=1, encoding="raw",
        split_counts=dict(counts),
        class_counts={s: {c: n // CLASSES for c in classes} for s, n in counts.items()},
        shards=shards, mean_pixel=[float(all_train.mean())], std_pixel=[float(all_train.std())],
        options={"image": {"height": SIZE, "width": SIZE, "channels": 1, "resize_mode": "crop",
                           "encoding": "raw"}},
    )
    with open(os.path.join(path, fmt.INFO_FILE), "w") as f:
        json.dump(info.to_json(), f)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    return write_pattern_dataset(str(tmp_path_factory.mktemp("data") / "patterns"),
                                 {"train": 96, "val": 32})


def _cfg(**overrides) -> TrainConfig:
    values = dict(epochs=3, batch_size=16, optimizer="sgd", momentum=0.9,
                  lr=LRPolicyConfig(policy="step", base_lr=0.02, gamma=0.5, step_size=34.0),
                  log_every_steps=2, mixed_precision="off", seed=3)
    values.update(overrides)
    return TrainConfig(**values)


STEPS = 96 // 16


@pytest.fixture(scope="module")
def finished_run(dataset, tmp_path_factory):
    """One 3-epoch run shared by the tests that only read it."""
    run_dir = str(tmp_path_factory.mktemp("runs") / "lenet")
    home = str(tmp_path_factory.mktemp("home"))
    # Module scope starts before the per-test VISPIPE_HOME: isolate it here.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VISPIPE_HOME", home)
        result = train(dataset, run_dir, ModelConfig(name="lenet"), _cfg(), name="tiny",
                       progress=False)
    return run_dir, result, home


def test_training_fills_the_run_folder(finished_run, dataset):
    run_dir, result, _ = finished_run
    info = RunFolder(run_dir).read_run_info()
    assert info.status == "completed" and info.epochs_completed == 3
    assert info.name == "tiny" and info.dataset_dir == os.path.abspath(dataset)
    assert info.classes == [f"pattern{k}" for k in range(CLASSES)]
    # The dataset's image input is copied into the run: consumers read only the run.
    assert info.image == ImageInput(SIZE, SIZE, 1, "crop")
    assert info.normalization.mode == "standardize" and len(info.normalization.std) == 1
    assert info.model.name == "lenet" and info.train.lr.policy == "step"
    assert info.result["best_val_accuracy"] == result.best_val_accuracy
    with open(os.path.join(run_dir, "config.yaml")) as f:
        assert yaml.safe_load(f)["train"]["batch_size"] == 16
    with open(os.path.join(run_dir, "labels.txt")) as f:
        assert f.read().split() == info.classes
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == [
        "epoch-0001.keras", "epoch-0002.keras", "epoch-0003.keras", "latest.json"]
    with open(os.path.join(run_dir, "checkpoints", "latest.json")) as f:
        assert json.load(f) == {"epoch": 3, "file": "epoch-0003.keras", "step": 3 * STEPS}
    for name in ("curves.png", "model.keras", "best.keras"):
        assert os.path.getsize(os.path.join(run_dir, name)) > 0, name
    assert os.listdir(os.path.join(run_dir, "tensorboard"))
    assert not [n for n in os.listdir(run_dir) if ".partial-" in n]


def test_metrics_jsonl_has_step_and_epoch_records(finished_run):
    run_dir, result, _ = finished_run
    records = RunFolder(run_dir).read_metrics()
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == list(range(2, 3 * STEPS + 1, 2))
    assert set(steps[0]) == {"kind", "epoch", "step", "loss", "accuracy", "lr",
                             "images_per_s", "time"}
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    for record in epochs:
        assert {"loss", "accuracy", "top5", "lr", "val_loss", "val_accuracy", "val_top5",
                "images_per_s", "time"} <= set(record)
    assert result.history == epochs and result.epochs_completed == 3


def test_training_learns_and_the_saved_model_predicts_the_same(finished_run, dataset):
    run_dir, result, _ = finished_run
    assert result.final_val_accuracy > 0.6  # chance is 0.25
    assert result.best_val_accuracy >= result.final_val_accuracy
    assert result.device == "CPU" and result.images_per_s > 0
    x = np.random.default_rng(1).uniform(0, 255, (5, SIZE, SIZE, 1)).astype("float32")
    final = load_run_model(run_dir).predict(x, verbose=0)
    last = load_run_model(run_dir, which="last").predict(x, verbose=0)
    np.testing.assert_allclose(final, last, rtol=1e-6)
    assert final.shape == (5, CLASSES)
    np.testing.assert_allclose(final.sum(axis=1), 1.0, rtol=1e-5)


def test_the_run_is_in_the_registry(finished_run):
    run_dir, _, home = finished_run
    registry = Registry.open(os.path.join(home, "registry.db"))
    entry = registry.get(RunFolder(run_dir).read_run_info().registry_id)
    assert entry.kind == "run" and entry.status == "completed" and entry.path == run_dir


def test_a_completed_run_is_not_overwritten_or_resumed(finished_run, dataset):
    run_dir, _, _ = finished_run
    with pytest.raises(FileExistsError, match="completed run.*--resume"):
        train(dataset, run_dir, ModelConfig(name="lenet"), _cfg(), progress=False)
    with pytest.raises(ValueError, match="already complete.*epochs > 3"):
        resume(run_dir, progress=False)


def test_load_run_model_without_run_json_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a vispipe run folder: run.json is missing"):
        load_run_model(str(tmp_path))


def test_invalid_settings_fail_before_creating_the_folder(dataset, tmp_path):
    run_dir = str(tmp_path / "bad")
    with pytest.raises(ValueError,
                       match="train.optimizer: expected one of sgd.*got 'lion'"):
        train(dataset, run_dir, ModelConfig(name="lenet"), _cfg(optimizer="lion"), progress=False)
    with pytest.raises(ValueError, match="train.lr.base_lr"):
        train(dataset, run_dir, ModelConfig(name="lenet"),
              _cfg(lr=LRPolicyConfig(base_lr=-1.0)), progress=False)
    assert not os.path.exists(run_dir)


class _SigtermAtEpoch(keras.callbacks.Callback):
    """Sends this process SIGTERM when `epoch` (0-based) begins, like `kill`."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_interrupts_and_resume_continues_the_schedule(dataset, tmp_path):
    run_dir = str(tmp_path / "killed")
    cfg = _cfg(epochs=4, snapshot_interval=1)
    with pytest.raises(KeyboardInterrupt):
        train(dataset, run_dir, ModelConfig(name="lenet"), cfg, progress=False,
              callbacks=[_SigtermAtEpoch(2)])
    run = RunFolder(run_dir)
    assert run.read_run_info().status == "interrupted"
    assert run.latest_checkpoint().epoch == 2
    assert [r["epoch"] for r in run.read_metrics("epoch")] == [1, 2]
    # A half-written epoch of a harder kill: resume must drop it.
    with open(run.metrics_path, "a") as f:
        f.write(json.dumps({"kind": "step", "epoch": 2.5, "step": 15}) + "\n")

    result = resume(run_dir, progress=False)

    assert result.epochs_completed == 4 and run.read_run_info().status == "completed"
    epochs = run.read_metrics("epoch")
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]
    steps = [r["step"] for r in run.read_metrics("step")]
    assert steps == list(range(2, 4 * STEPS + 1, 2))  # continued, not restarted at 0
    assert [r["step"] for r in epochs] == [STEPS, 2 * STEPS, 3 * STEPS, 4 * STEPS]
    # "lr" is the rate of the next update: the schedule at the epoch's last step.
    expected = lr_at(cfg.lr, 4 * STEPS, np.array([r["step"] for r in epochs]))
    np.testing.assert_allclose([r["lr"] for r in epochs], expected, rtol=1e-5)
    model = load_run_model(run_dir, which="last", compile=True)
    assert int(model.optimizer.iterations) == 4 * STEPS

    # Same batches, same schedule, same optimizer state: the weights of an
    # uninterrupted run.
    train(dataset, str(tmp_path / "whole"), ModelConfig(name="lenet"), cfg, progress=False)
    whole = load_run_model(str(tmp_path / "whole"))
    for a, b in zip(load_run_model(run_dir).get_weights(), whole.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_run_killed_before_its_first_checkpoint_restarts_on_resume(dataset, tmp_path):
    run_dir = str(tmp_path / "early-kill")
    with pytest.raises(KeyboardInterrupt):
        train(dataset, run_dir, ModelConfig(name="lenet"), _cfg(epochs=1, val_interval=0),
              progress=False, callbacks=[_SigtermAtEpoch(0)])
    run = RunFolder(run_dir)
    assert run.read_run_info().status == "interrupted" and run.latest_checkpoint() is None
    result = resume(run_dir, progress=False)
    assert result.epochs_completed == 1
    assert [r["epoch"] for r in run.read_metrics("epoch")] == [1]


def test_resume_can_extend_a_finished_run(dataset, tmp_path):
    run_dir = str(tmp_path / "extend")
    train(dataset, run_dir, ModelConfig(name="lenet"), _cfg(epochs=1, val_interval=0),
          progress=False)
    result = resume(run_dir, epochs=2, progress=False)
    assert result.epochs_completed == 2
    assert RunFolder(run_dir).read_run_info().train.epochs == 2
    last = load_run_model(run_dir, which="last", compile=True)
    assert int(last.optimizer.iterations) == 2 * STEPS


def test_frozen_phase_trains_only_the_head(dataset, tmp_path):
    run_dir = str(tmp_path / "frozen")
    cfg = _cfg(epochs=2, val_interval=0)
    model_cfg = ModelConfig(name="lenet", freeze_epochs=1, finetune_lr_factor=0.1)
    train(dataset, run_dir, model_cfg, cfg, progress=False)

    seed_everything(cfg.seed)  # The trainer's initial weights, rebuilt.
    initial = build_classifier(model_cfg, fmt.read_dataset_info(dataset), cfg.normalization)
    run = RunFolder(run_dir)
    after_phase1 = keras.models.load_model(run.checkpoint_path(1))
    after_phase2 = keras.models.load_model(run.checkpoint_path(2))
    for layer in ("conv1", "conv2", "fc1"):
        np.testing.assert_array_equal(after_phase1.get_layer(layer).get_weights()[0],
                                      initial.get_layer(layer).get_weights()[0])
        assert not np.array_equal(after_phase2.get_layer(layer).get_weights()[0],
                                  initial.get_layer(layer).get_weights()[0])
    assert not np.array_equal(after_phase1.get_layer("classifier").get_weights()[0],
                              initial.get_layer("classifier").get_weights()[0])
    epochs = run.read_metrics("epoch")
    full = lr_at(cfg.lr, 2 * STEPS, np.array([STEPS, 2 * STEPS]))
    np.testing.assert_allclose([r["lr"] for r in epochs], [full[0], 0.1 * full[1]], rtol=1e-5)


def test_a_diverging_run_fails_with_a_clear_message(dataset, tmp_path):
    run_dir = str(tmp_path / "diverged")
    cfg = _cfg(epochs=3, optimizer="sgd", lr=LRPolicyConfig(policy="fixed", base_lr=1e6))
    with pytest.raises(ArithmeticError, match="training diverged.*Lower train.lr.base_lr"):
        train(dataset, run_dir, ModelConfig(name="lenet"), cfg, progress=False)
    info = RunFolder(run_dir).read_run_info()
    assert info.status == "failed" and "diverged" in info.error
    # Nothing was saved from the NaN weights.
    assert not os.path.exists(os.path.join(run_dir, "model.keras"))
