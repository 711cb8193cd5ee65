"""Training runs: `train` starts one in a new run folder, `resume` continues one.

How a run proceeds:

- The LR schedule spans the whole run: `epochs * steps_per_epoch` steps,
  indexed by `optimizer.iterations`, which checkpoints save and restore, so
  a resumed run continues at the same point of the schedule.
- `model.fit` is called once per epoch with a training pipeline seeded by
  `(seed, epoch)`: the data order and augmentation of epoch `e` do not depend
  on how many epochs this process ran before, so a resumed run sees the same
  batches as an uninterrupted one. Every epoch's pipeline is built on one
  decoded-records dataset, so the in-memory image cache fills only once.
- Validation runs every `val_interval` epochs and after the last one.
- Transfer learning (`ModelConfig.freeze_epochs > 0`; -1 means 1 when
  starting from `weights`): the first `freeze_epochs` epochs train only the
  classifier head, the backbone frozen with its BatchNorm in inference mode.
  A zoo network's head then trains on backbone features computed once per
  image (`feature_cache_copies`, see `vispipe.train.feature_cache`), not by
  running the frozen backbone every step. Then the backbone (or its last
  `unfreeze_blocks` blocks) is unfrozen and a new optimizer (fresh
  momentum/moments) takes over whose schedule is the same policy over the
  same total steps times `finetune_lr_factor`, starting at the step already
  reached, so the LR curve continues (scaled) rather than restarting; with
  `finetune_lr_mult` the rates also fall with depth
  (`vispipe.train.layer_rates`).
- `weights: imagenet` is resolved before anything else: without the file
  and without network the run fails at once, in one line.
- BatchNorm: trainable BatchNorm layers get a momentum suited to the run
  length (`TrainConfig.bn_momentum`), and their statistics are recomputed
  over training batches before every validation and save
  (`precise_bn_batches`), so a short run from scratch does not validate with
  statistics of its first steps. Validation at chance while training
  accuracy rises is reported on the console and in run.json's "warnings".
- Data-parallel (`TrainConfig.distributed`, see `vispipe.train.distributed`):
  `batch_size` stays the global batch; under Horovod each rank reads its own
  shard with `batch_size / ranks` images per step, every rank validates on
  the whole val split (metrics averaged, so early stopping agrees), and only
  rank 0 writes the run folder, the registry and the console. All ranks
  must see the run folder on a shared file system: `resume` reloads the
  last rank-0 checkpoint on every rank.
- Horovod elastic mode (`TrainConfig.elastic`): the epoch loop survives
  workers leaving and joining. An epoch that loses a worker is redone from
  the state committed at the previous epoch end (its metrics records are
  dropped) by the ranks left, with their new shards and, under `scale_lr`,
  the LR of the new replica count; a worker that joins gets rank 0's state
  at the next epoch end. `batch_size` stays the global batch: fewer ranks
  take larger shares of it. The registry entry is kept by the process that
  opened the run (its host's registry): if that rank 0 is lost, the run
  folder still completes and the entry stays "running".
- Ctrl-C or SIGTERM marks the run "interrupted", an exception "failed"; both
  re-raise. Checkpoints and `metrics.jsonl` written before survive; `resume`
  reloads the latest checkpoint (model and optimizer state) and drops the
  metrics records after it.

Example:

```python
result = train("datasets/mnist", "runs/mnist", ModelConfig(name="lenet"),
               TrainConfig(epochs=5, batch_size=64))
result = resume("runs/mnist", epochs=10)  # train 5 more epochs
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import logging
import os
import sqlite3
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ContextManager

import keras
import numpy as np
import tensorflow as tf
import yaml

from vispipe.config_io import validate_config
from vispipe.configs import ModelConfig, TrainConfig
from vispipe.data.format import LABELS_FILE, MEAN_FILE, DatasetInfo, read_dataset_info
from vispipe.data.inputs import decoded_records, make_dataset, steps_per_epoch
from vispipe.interrupts import sigterm_as_interrupt
from vispipe.models import build_classifier, set_backbone_trainable
from vispipe.models.batchnorm import batchnorm_layers, set_momentum, suited_momentum
from vispipe.models.classifier import IMAGENET, imagenet_weights_file
from vispipe.models.transfer import frozen_epochs, resolve_weights_path
from vispipe.registry import Recording
from vispipe.train.callbacks import (
    BestModelSaver,
    ChanceAccuracyGuard,
    Checkpointer,
    CurvePlotter,
    DivergenceGuard,
    MetricsLogger,
    PreciseBatchNorm,
    ThroughputMeter,
    TqdmProgress,
    ValAccuracyEarlyStopping,
    save_model_atomic,
)
from vispipe.train.device import DeviceInfo, configure_device, seed_everything
from vispipe.train.distributed import Replicas, setup
from vispipe.train.feature_cache import CachedFeatures, HeadSplit, compute_features, split_head
from vispipe.train.layer_rates import depth_multipliers, with_rate_multipliers
from vispipe.train.optimizers import make_optimizer
from vispipe.train.plots import plot_curves
from vispipe.train.run_folder import CheckpointRef, RunFolder, write_text_atomic
from vispipe.train.run_info import Normalization, PretrainedWeights, RunInfo, RunWarning
from vispipe.train.schedules import make_schedule, validate_policy

if TYPE_CHECKING:
    from horovod.common.elastic import State

__all__ = ["TrainResult", "train", "resume"]

_log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished `train` or `resume` call reports.

    Attributes:
        run_dir: The run folder (absolute).
        model_path: The final model (`model.keras`).
        epochs_completed: Epochs trained in total (fewer than asked after
            early stopping).
        history: The epoch records of `metrics.jsonl` (see `MetricsLogger`).
        final_val_accuracy: Validation accuracy of the last validation, or
            None without validation.
        best_val_accuracy: Best validation accuracy, or None.
        images_per_s: Median training throughput over the epochs.
        duration_s: Wall time of this call.
        device: Where it trained, e.g. "GPU:0 (NVIDIA H100)" or "CPU".
        is_chief: Whether this process wrote the run folder (rank 0, the
            multi-worker chief, or the only process): the one that reports.
    """

    run_dir: str
    model_path: str
    epochs_completed: int
    history: list[dict[str, Any]]
    final_val_accuracy: float | None
    best_val_accuracy: float | None
    images_per_s: float
    duration_s: float
    device: str
    is_chief: bool = True


@dataclass
class _Session:
    """Everything one training call needs."""

    run: RunFolder
    name: str
    info: DatasetInfo
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    device: DeviceInfo
    steps: int
    progress: bool
    replicas: Replicas = field(default_factory=Replicas)
    weights_file: str | None = None  # The file `model.weights` resolved to, for run.json.
    entry: Recording = field(default_factory=lambda: Recording(None))  # The registry's.
    train_records: tf.data.Dataset | None = None

    @property
    def total_steps(self) -> int:
        return self.train_cfg.epochs * self.steps


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _check_settings(model_cfg: ModelConfig, cfg: TrainConfig) -> None:
    validate_config(model_cfg, "model")
    validate_config(cfg, "train")
    checks = (
        ("train.epochs", cfg.epochs, cfg.epochs >= 1, "an integer >= 1"),
        ("train.batch_size", cfg.batch_size, cfg.batch_size >= 1, "an integer >= 1"),
        ("train.val_interval", cfg.val_interval, cfg.val_interval >= 0, "an integer >= 0"),
        ("train.snapshot_interval", cfg.snapshot_interval, cfg.snapshot_interval >= 0,
         "an integer >= 0"),
        ("train.early_stopping", cfg.early_stopping, cfg.early_stopping >= 0,
         "an integer >= 0"),
        ("train.steps_per_epoch", cfg.steps_per_epoch, cfg.steps_per_epoch >= 0,
         "an integer >= 0 (0: a full pass)"),
        ("train.log_every_steps", cfg.log_every_steps, cfg.log_every_steps >= 1,
         "an integer >= 1"),
        ("train.label_smoothing", cfg.label_smoothing, 0 <= cfg.label_smoothing < 1,
         "a value in [0, 1)"),
        ("train.warmup_epochs", cfg.warmup_epochs, cfg.warmup_epochs >= 0, "a number >= 0"),
        ("model.freeze_epochs", model_cfg.freeze_epochs, model_cfg.freeze_epochs >= -1,
         "an integer >= 0, or -1 (1 with weights, else 0)"),
        # The head-only phase has its own optimizer, which an elastic
        # state would have to swap back on restore.
        ("model.freeze_epochs", model_cfg.freeze_epochs,
         not (cfg.elastic and model_cfg.freeze_epochs),
         "0 with train.elastic"),
        ("model.finetune_lr_factor", model_cfg.finetune_lr_factor,
         model_cfg.finetune_lr_factor > 0, "a number > 0"),
        ("model.finetune_lr_mult", model_cfg.finetune_lr_mult, model_cfg.finetune_lr_mult >= 1,
         "a number >= 1"),
        ("model.unfreeze_blocks", model_cfg.unfreeze_blocks, model_cfg.unfreeze_blocks >= 0,
         "an integer >= 0 (0: all)"),
        ("model.feature_cache_copies", model_cfg.feature_cache_copies,
         model_cfg.feature_cache_copies >= 0, "an integer >= 0"),
        ("model.feature_cache_copies", model_cfg.feature_cache_copies,
         model_cfg.feature_cache_copies <= 1 or cfg.augment.enabled,
         "0 or 1 without train.augment (augmented views need augmentation)"),
        ("train.bn_momentum", cfg.bn_momentum,
         cfg.bn_momentum is None or 0 <= cfg.bn_momentum < 1, "null or a value in [0, 1)"),
        ("train.precise_bn_batches", cfg.precise_bn_batches, cfg.precise_bn_batches >= 0,
         "an integer >= 0"),
    )
    for name, value, ok, expected in checks:
        if not ok:
            raise ValueError(f"{name}: expected {expected}, got {value!r}.")


def _steps_per_epoch(info: DatasetInfo, cfg: TrainConfig, replicas: Replicas) -> int:
    steps = steps_per_epoch(info, "train", replicas.input_batch(cfg.batch_size),
                            drop_remainder=False, num_shards=replicas.num_shards)
    return min(steps, cfg.steps_per_epoch) if cfg.steps_per_epoch else steps


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % 2**31


def _with_targets(ds: tf.data.Dataset, session: _Session) -> tf.data.Dataset:
    """One-hot labels when label smoothing needs them."""
    if not session.train_cfg.label_smoothing:
        return ds
    depth = session.info.num_classes
    return ds.map(lambda x, y: (x, tf.one_hot(y, depth)), num_parallel_calls=tf.data.AUTOTUNE)


def _train_dataset(session: _Session, epoch: int) -> tf.data.Dataset:
    cfg, replicas = session.train_cfg, session.replicas
    shards = {"num_shards": replicas.num_shards, "shard_index": replicas.shard_index}
    if session.train_records is None:
        # Built once: its in-memory cache then fills in the first epoch only.
        session.train_records = decoded_records(
            session.info, "train", training=True, cache=cfg.cache, **shards
        )
    ds = make_dataset(
        session.info, "train", replicas.input_batch(cfg.batch_size), training=True,
        augment=cfg.augment, seed=_epoch_seed(cfg.seed, epoch), cache=cfg.cache,
        records=session.train_records, **shards,
    )
    if cfg.steps_per_epoch:
        ds = ds.take(session.steps)
    return _distributable(_with_targets(ds, session), replicas)


def _distributable(ds: tf.data.Dataset, replicas: Replicas) -> tf.data.Dataset:
    """Lets a strategy shard the batches by data (the records are not files)."""
    if replicas.strategy is None:
        return ds
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _val_dataset(session: _Session) -> tf.data.Dataset | None:
    cfg = session.train_cfg
    if not cfg.val_interval:
        return None
    if "val" not in session.info.splits:
        _log.warning("Dataset %s has no val split: training without validation.",
                     session.info.path)
        return None
    # Every rank validates on the whole split: same weights, same result.
    batch = session.replicas.input_batch(cfg.batch_size)
    ds = make_dataset(session.info, "val", batch, cache=cfg.cache)
    return _distributable(_with_targets(ds, session), session.replicas)


def _schedule(session: _Session, scale: float):
    """The run's LR schedule, scaled for the replicas when asked."""
    cfg = session.train_cfg
    return session.replicas.scale_schedule(
        make_schedule(cfg.lr, session.total_steps, scale=scale), scale_lr=cfg.scale_lr,
        warmup_steps=round(cfg.warmup_epochs * session.steps),
    )


def _loss_and_metrics(session: _Session) -> tuple[keras.losses.Loss, list]:
    cfg = session.train_cfg
    k = min(5, session.info.num_classes)
    if cfg.label_smoothing:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
        return loss, [keras.metrics.CategoricalAccuracy(name="accuracy"),
                      keras.metrics.TopKCategoricalAccuracy(k, name="top5")]
    return keras.losses.SparseCategoricalCrossentropy(), [
        keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
        keras.metrics.SparseTopKCategoricalAccuracy(k, name="top5")]


def _compile(model: keras.Model, session: _Session, *, scale: float, step: int) -> None:
    """Compiles with a new optimizer whose schedule starts at `step`.

    With `finetune_lr_mult`, unfrozen backbone layers get rates falling with depth.
    """
    cfg, ratio = session.train_cfg, session.model_cfg.finetune_lr_mult
    with session.replicas.scope():  # Keras optimizers bind the current strategy.
        optimizer = make_optimizer(cfg, _schedule(session, scale))
        multipliers = depth_multipliers(model, ratio) if ratio != 1 else []
        if any(m != 1 for m in multipliers):
            optimizer = with_rate_multipliers(optimizer, multipliers)
    loss, metrics = _loss_and_metrics(session)
    with session.replicas.scope():
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
        if step:
            model.optimizer.build(model.trainable_variables)
            model.optimizer.iterations.assign(step)
    session.replicas.distribute_model(model)


def _iterations(model: keras.Model) -> int:
    # int() of a strategy's MirroredVariable fails; reading it as NumPy works.
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def _lr_scale(model_cfg: ModelConfig, epoch: int) -> float:
    """LR factor of the phase that `epoch` (0-based) belongs to."""
    if model_cfg.freeze_epochs and epoch >= model_cfg.freeze_epochs:
        return model_cfg.finetune_lr_factor
    return 1.0


def _fit(model: keras.Model, session: _Session, start_epoch: int, extra_callbacks) -> None:
    """Trains epochs `start_epoch .. epochs-1`; under Horovod elastic, across world changes."""
    if not session.replicas.elastic:
        _fit_epochs(model, session, start_epoch, extra_callbacks)
        return
    state = session.replicas.elastic_state(model, epoch=start_epoch, stopped=False)

    def attempt(state: State) -> None:
        # After the sync: an epoch that a lost worker cut short leaves no records.
        if session.replicas.is_chief:
            session.run.truncate_metrics(state.epoch)
        if not state.stopped:
            _fit_epochs(model, session, state.epoch, extra_callbacks, state)

    session.replicas.run_elastic(state, attempt,
                                 on_reset=lambda: _rejoin(model, session, state.epoch))


def _rejoin(model: keras.Model, session: _Session, epoch: int) -> None:
    """Adapts to the Horovod world after an elastic reset: rank, shard, LR."""
    session.replicas = session.replicas.rejoined()
    session.steps = _steps_per_epoch(session.info, session.train_cfg, session.replicas)
    session.train_records = None  # Decoded for the previous shard.
    model.optimizer.learning_rate = _schedule(session, 1.0)  # No head-only phase here.
    session.replicas.distribute_model(model)  # Retraces with the new schedule.
    if session.replicas.is_chief:
        print(f"Horovod elastic: {session.replicas.size} rank(s) now, training on from epoch "
              f"{epoch + 1}/{session.train_cfg.epochs}.", flush=True)


def _fit_epochs(model: keras.Model, session: _Session, start_epoch: int, extra_callbacks,
                state: State | None = None) -> None:
    """Trains epochs `start_epoch .. epochs-1`, switching phase when due.

    With an elastic `state`, commits the epoch count after every epoch.
    """
    run, cfg, model_cfg = session.run, session.train_cfg, session.model_cfg
    chief = session.replicas.is_chief
    # Filtered: under elastic mode rank 0 may not have dropped them yet.
    history = [r for r in run.read_metrics("epoch") if r["epoch"] <= start_epoch]
    val_history = [r["val_accuracy"] for r in history if r.get("val_accuracy") is not None]
    images_per_epoch = min(session.steps * cfg.batch_size, session.info.split_counts["train"])
    meter = ThroughputMeter(cfg.batch_size, images_per_epoch)
    callbacks: list[keras.callbacks.Callback] = [DivergenceGuard(), meter]
    if session.progress and chief:
        callbacks.append(TqdmProgress(cfg.epochs, session.steps))
    if _single_process(session):
        # Before validation and the savers; under data parallelism ranks
        # would average different batches (momentum alone applies there).
        callbacks.append(PreciseBatchNorm(lambda epoch: _train_dataset(session, epoch),
                                          cfg.precise_bn_batches))
    early = None
    if cfg.early_stopping:
        # Before the Checkpointer, which saves when training stops early.
        # On every rank: the averaged val metrics make all ranks stop together.
        early = ValAccuracyEarlyStopping(cfg.early_stopping, val_history)
        callbacks.append(early)
    if chief:
        callbacks += [
            _chance_guard(model, session),
            MetricsLogger(run, steps_per_epoch=session.steps,
                          log_every_steps=cfg.log_every_steps, meter=meter,
                          time_offset=history[-1]["time"] if history else 0.0),
            Checkpointer(run, cfg.snapshot_interval, cfg.epochs),
            BestModelSaver(run.best_path, max(val_history) if val_history else None),
            CurvePlotter(run, session.name),
            keras.callbacks.TensorBoard(run.tensorboard_dir, write_graph=False),
        ]
    callbacks += extra_callbacks or []
    val_ds = _val_dataset(session)
    head = (_CachedHead.create(model, session, validate=val_ds is not None)
            if start_epoch < model_cfg.freeze_epochs else None)
    for epoch in range(start_epoch, cfg.epochs):
        if model_cfg.freeze_epochs and epoch == model_cfg.freeze_epochs:
            set_backbone_trainable(model, True, last_blocks=model_cfg.unfreeze_blocks)
            _compile(model, session, scale=model_cfg.finetune_lr_factor,
                     step=_iterations(model))
        validate = val_ds is not None and (
            (epoch + 1) % cfg.val_interval == 0 or epoch + 1 == cfg.epochs
        )
        if epoch < model_cfg.freeze_epochs and head is not None:
            head.fit_epoch(model, session, epoch, callbacks, validate)
        else:
            # Outside the strategy scope (Keras uses the model's strategy anyway):
            # in it, a checkpoint saved by the chief alone creates variables,
            # which a multi-worker strategy initialises with a collective that
            # the other workers never join.
            model.fit(
                _train_dataset(session, epoch), epochs=epoch + 1, initial_epoch=epoch,
                validation_data=val_ds if validate else None, callbacks=callbacks,
                verbose=0, shuffle=False,  # The pipeline shuffles, seeded per epoch.
            )
        if chief:
            run.update_info(epochs_completed=epoch + 1)
        stopped = early is not None and early.stopped
        if state is not None:
            state.epoch, state.stopped = epoch + 1, stopped
            state.commit()
        if stopped:
            if chief:
                print(f"Early stopping after epoch {epoch + 1}: no better val accuracy "
                      f"in {cfg.early_stopping} validations.")
            break


def _single_process(session: _Session) -> bool:
    return session.replicas.size == 1 and session.replicas.strategy is None


@dataclass
class _CachedHead:
    """The frozen phase on cached backbone features (see `vispipe.train.feature_cache`)."""

    split: HeadSplit
    train: CachedFeatures
    val: CachedFeatures | None

    @classmethod
    def create(cls, model: keras.Model, session: _Session,
               validate: bool) -> _CachedHead | None:
        """Computes the features, or None where the phase runs uncached."""
        cfg, copies = session.train_cfg, session.model_cfg.feature_cache_copies
        split = split_head(model) if copies and _single_process(session) else None
        if split is None:
            return None
        start = time.perf_counter()
        batch, info, progress = cfg.batch_size, session.info, session.progress
        views = [make_dataset(info, "train", batch, cache=cfg.cache)]
        views += [make_dataset(info, "train", batch, training=True, augment=cfg.augment,
                               seed=_epoch_seed(cfg.seed, -copy), cache=cfg.cache)
                  for copy in range(1, copies)]
        parts = [compute_features(split.backbone, ds, progress=progress,
                                  desc=f"Features {i + 1}/{copies}") for i, ds in enumerate(views)]
        train = CachedFeatures(np.concatenate([p.features for p in parts]),
                               np.concatenate([p.labels for p in parts]))
        val = None
        if validate:
            val = compute_features(split.backbone, make_dataset(info, "val", batch, cache=cfg.cache),
                                   progress=progress, desc="Features val")
        loss, metrics = _loss_and_metrics(session)
        split.head.compile(optimizer=model.optimizer, loss=loss, metrics=metrics)
        if session.replicas.is_chief:
            print(f"Frozen phase: backbone features of {len(train.labels)} training "
                  f"({copies} per image) and {0 if val is None else len(val.labels)} val "
                  f"images computed in {time.perf_counter() - start:.1f} s; the head trains "
                  "on them.", flush=True)
        return cls(split, train, val)

    def fit_epoch(self, model: keras.Model, session: _Session, epoch: int, callbacks,
                  validate: bool) -> None:
        """One epoch of the head on the cached features; savers save the full model."""
        cfg, depth = session.train_cfg, session.info.num_classes
        depth = depth if cfg.label_smoothing else 0
        steps = -(-len(self.train.labels) // cfg.batch_size)
        for callback in callbacks:
            if isinstance(callback, (Checkpointer, BestModelSaver)):
                callback.saved_model = model
            if isinstance(callback, TqdmProgress):
                callback.steps_per_epoch = steps
            if isinstance(callback, ThroughputMeter):
                callback.images_per_epoch = len(self.train.labels)
        try:
            self.split.head.fit(
                self.train.dataset(cfg.batch_size, seed=_epoch_seed(cfg.seed, epoch),
                                   shuffle=True, num_classes=depth),
                epochs=epoch + 1, initial_epoch=epoch, verbose=0, shuffle=False,
                validation_data=(self.val.dataset(cfg.batch_size, num_classes=depth)
                                 if validate and self.val is not None else None),
                callbacks=callbacks)
        finally:
            for callback in callbacks:
                if isinstance(callback, (Checkpointer, BestModelSaver)):
                    callback.saved_model = None
                if isinstance(callback, TqdmProgress):
                    callback.steps_per_epoch = session.steps
                if isinstance(callback, ThroughputMeter):
                    callback.images_per_epoch = min(session.steps * cfg.batch_size,
                                                    session.info.split_counts["train"])


def _chance_guard(model: keras.Model, session: _Session) -> ChanceAccuracyGuard:
    """Warns (console, run.json) when val accuracy sits at chance while training learns."""
    info, cfg = session.info, session.train_cfg
    counts = list(info.class_counts.get("val", {}).values())
    chance = max(counts) / sum(counts) if counts and sum(counts) else 1 / info.num_classes
    if not batchnorm_layers(model, trainable_only=False):
        cause = ("the validation images differ from the training ones (labels, preprocessing "
                 "or source), or there are too few training images per class to generalise.")
    elif not (cfg.precise_bn_batches and _single_process(session)):
        cause = ("BatchNorm moving statistics that do not match the weights (inference mode "
                 "uses them, training mode does not): set train.precise_bn_batches (e.g. 16) "
                 "or a lower train.bn_momentum.")
    else:
        cause = ("the validation images differ from the training ones (labels, preprocessing "
                 "or source); BatchNorm statistics were recomputed each epoch.")
    run = session.run

    def record(warning: RunWarning) -> None:
        run.update_info(warnings=run.read_run_info().warnings + [warning])

    return ChanceAccuracyGuard(chance, cause, record)


def _result(session: _Session, duration: float) -> TrainResult:
    history = session.run.read_metrics("epoch")
    vals = [r["val_accuracy"] for r in history if r.get("val_accuracy") is not None]
    rates = [r["images_per_s"] for r in history if r.get("images_per_s")]
    return TrainResult(
        run_dir=session.run.path,
        model_path=session.run.model_path,
        epochs_completed=history[-1]["epoch"] if history else 0,
        history=history,
        final_val_accuracy=vals[-1] if vals else None,
        best_val_accuracy=max(vals) if vals else None,
        images_per_s=float(statistics.median(rates)) if rates else 0.0,
        duration_s=duration,
        device=session.device.device,
        is_chief=session.replicas.is_chief,
    )


def _finish(model: keras.Model, session: _Session, duration: float) -> TrainResult:
    """Saves the final model and curves and marks the run completed."""
    run, replicas = session.run, session.replicas
    digests = replicas.weight_digests(model)
    if not replicas.is_chief:
        replicas.barrier()  # Until rank 0 has written the results read below.
        return _result(session, duration)
    save_model_atomic(model, run.model_path)
    result = _result(session, duration)
    plot_curves(result.history, run.curves_path, session.name)
    best_epoch = next((r["epoch"] for r in result.history
                       if result.best_val_accuracy is not None
                       and r.get("val_accuracy") == result.best_val_accuracy), None)
    summary = {
        "final_val_accuracy": result.final_val_accuracy,
        "best_val_accuracy": result.best_val_accuracy,
        "best_epoch": best_epoch,
        "final_loss": result.history[-1]["loss"] if result.history else None,
        "images_per_s": result.images_per_s,
        "train_time_s": result.history[-1]["time"] if result.history else 0.0,
    }
    distributed = {**replicas.describe(), "weight_digests": digests,
                   "weights_identical": len(set(digests)) == 1}
    run.update_info(status="completed", finished=_now(),
                    epochs_completed=result.epochs_completed, result=summary,
                    distributed=distributed)
    session.entry.summary = summary
    replicas.barrier()
    return result


def _run(model: keras.Model, session: _Session, start_epoch: int, callbacks) -> TrainResult:
    """Trains and finishes the run folder; records interruptions and failures."""
    run = session.run
    start = time.perf_counter()
    try:
        with sigterm_as_interrupt():
            _fit(model, session, start_epoch, callbacks)
            return _finish(model, session, time.perf_counter() - start)
    except KeyboardInterrupt:
        if session.replicas.is_chief:
            info = run.update_info(status="interrupted", finished=_now())
            session.entry.summary = {"epochs_completed": info.epochs_completed}
        raise
    except BaseException as error:
        if session.replicas.is_chief:
            run.update_info(status="failed", finished=_now(),
                            error=f"{type(error).__name__}: {error}")
        raise


def _normalization(info: DatasetInfo, model: keras.Model) -> Normalization:
    """What the model's `Preprocess` layer does (the weights' own with `weights: imagenet`)."""
    config = model.get_layer("preprocess").get_config()
    mode = config["mode"]
    return Normalization(
        mode=mode,
        mean=config.get("mean") if mode != "image" else None,
        std=config.get("std"),
        mean_image_file=(os.path.abspath(os.path.join(info.path, MEAN_FILE))
                         if mode == "image" else None),
        to_rgb=bool(config.get("to_rgb")),
    )


def _check_new_run_folder(run: RunFolder) -> None:
    if run.exists():
        try:
            status = run.read_run_info().status
        except ValueError:  # An older or damaged run.json: a run all the same.
            status = "unknown"
        if status == "completed":
            raise FileExistsError(
                f"Run folder {run.path!r} already holds a completed run. Choose a new "
                "run folder, or continue it with `vispipe train --resume` "
                "(resume(..., epochs=N)) to train longer."
            )
        raise FileExistsError(
            f"Run folder {run.path!r} already holds a run with status {status!r}. "
            "Continue it with `vispipe train --resume` (resume()) or choose a new run folder."
        )
    if os.path.isdir(run.path) and os.listdir(run.path):
        raise FileExistsError(
            f"{run.path!r} exists, is not empty and is not a run folder; choose a new "
            "or empty folder."
        )


@dataclass
class _Start:
    """How a training call starts: a new run, or a resumed one.

    Attributes:
        run: The run folder.
        dataset_dir: The dataset to train on.
        model_cfg: The network.
        train_cfg: The solver (for a resumed run, with the new epoch count).
        name: Run name.
        resumed: For `resume`, the run's `RunInfo` as it was; None for a new run.
    """

    run: RunFolder
    dataset_dir: str
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    name: str
    resumed: RunInfo | None = None


def _prepare(start: _Start, progress: bool) -> tuple[keras.Model, _Session, int]:
    """The set-up `train` and `resume` share: checks, replicas, data and model.

    Returns:
        `(model, session, start_epoch)`, the model compiled and distributed.
    """
    run, model_cfg, train_cfg = start.run, start.model_cfg, start.train_cfg
    _check_settings(model_cfg, train_cfg)
    replicas = setup(train_cfg.distributed, compression=train_cfg.gradient_compression,
                     elastic=train_cfg.elastic)
    if start.resumed is None and (replicas.is_chief or not replicas.elastic):
        # A worker that joins an elastic job later finds rank 0's folder.
        _check_new_run_folder(run)
    info = read_dataset_info(start.dataset_dir)
    weights_file = None
    if model_cfg.weights and start.resumed is None:  # Offline: fail now, in one line.
        weights_file = (imagenet_weights_file(model_cfg, info.image_shape)
                        if model_cfg.weights == IMAGENET else resolve_weights_path(model_cfg.weights))
    steps = _steps_per_epoch(info, train_cfg, replicas)
    validate_policy(train_cfg.lr, train_cfg.epochs * steps, "train.lr")
    make_optimizer(train_cfg, 0.01)  # Validates the optimizer settings up front.
    seed_everything(train_cfg.seed)
    device = configure_device(train_cfg.mixed_precision)
    session = _Session(run, start.name, info, model_cfg, train_cfg, device, steps, progress,
                       replicas, weights_file)
    checkpoint = run.latest_checkpoint() if start.resumed else None
    # Every rank has checked the folder, or read run.json and the checkpoint
    # pointer, before rank 0 writes them.
    replicas.barrier()
    model, start_epoch = _model(session, checkpoint)
    return model, session, start_epoch


def _registry_entry(session: _Session, start: _Start) -> ContextManager[Recording]:
    """The run's registry entry (new, or the resumed run's), kept by the process
    that writes the run folder; bookkeeping never fails a run."""
    if not session.replicas.is_chief:
        return contextlib.nullcontext(Recording(None))
    from vispipe.registry import Registry

    params = {"dataset_dir": os.path.abspath(session.info.path),
              "model": dataclasses.asdict(session.model_cfg),
              "train": dataclasses.asdict(session.train_cfg)}
    try:
        registry = Registry.open()
    except sqlite3.Error as error:
        _log.warning("Run %s is not recorded in the registry: %s", session.run.path, error)
        return contextlib.nullcontext(Recording(None))
    return registry.recording("run", session.name, session.run.path, params, best_effort=True,
                              entry_id=start.resumed.registry_id if start.resumed else None)


def _open_run_folder(session: _Session, start: _Start, model: keras.Model,
                     start_epoch: int) -> None:
    """Rank 0 creates the run folder, or reopens the resumed one; every rank waits."""
    if session.replicas.is_chief:
        if start.resumed is None:
            _new_run_folder(session, model)
        else:
            _reopen_run_folder(session, start.resumed, start_epoch)
            print(f"Resuming {session.run.path} at epoch {start_epoch + 1}/"
                  f"{session.train_cfg.epochs} (step {_iterations(model)}).")
    session.replicas.barrier()  # The run folder is ready (metrics truncated) for every rank.


def _train(start: _Start, progress: bool, callbacks) -> TrainResult:
    """`train` and `resume`: set up, record, open the run folder, train."""
    model, session, start_epoch = _prepare(start, progress)
    with _registry_entry(session, start) as entry:
        session.entry = entry
        _open_run_folder(session, start, model, start_epoch)
        return _run(model, session, start_epoch, callbacks)


def _model(session: _Session, checkpoint: CheckpointRef | None) -> tuple[keras.Model, int]:
    """A new compiled model (epoch 0), or the checkpoint's, with its epoch."""
    model_cfg, replicas = session.model_cfg, session.replicas
    if checkpoint is None:
        with replicas.scope():
            model = build_classifier(model_cfg, session.info, session.train_cfg.normalization)
        momentum = session.train_cfg.bn_momentum
        set_momentum(model, suited_momentum(session.steps) if momentum is None else momentum)
        if model_cfg.freeze_epochs:
            set_backbone_trainable(model, False)
        _compile(model, session, scale=1.0, step=0)
        return model, 0
    with replicas.scope():
        model = keras.models.load_model(checkpoint.path, compile=True)
    # Rebuilt rather than trusted: `epochs` may have changed the total.
    model.optimizer.learning_rate = _schedule(session,
                                              _lr_scale(model_cfg, checkpoint.epoch - 1))
    replicas.distribute_model(model)
    return model, checkpoint.epoch


def _write_config(session: _Session) -> None:
    write_text_atomic(session.run.file("config.yaml"), yaml.safe_dump(
        {"model": dataclasses.asdict(session.model_cfg),
         "train": dataclasses.asdict(session.train_cfg)}, sort_keys=False))


def _new_run_folder(session: _Session, model: keras.Model) -> None:
    """Creates the run folder's files."""
    run, info = session.run, session.info
    model_cfg, train_cfg = session.model_cfg, session.train_cfg
    os.makedirs(run.checkpoint_dir, exist_ok=True)
    run.write_info(RunInfo(
        name=session.name,
        dataset_dir=os.path.abspath(info.path),
        classes=list(info.classes),
        image=info.image,
        normalization=_normalization(info, model),
        model=model_cfg,
        train=train_cfg,
        pretrained=(PretrainedWeights(model_cfg.weights, os.path.abspath(session.weights_file))
                    if session.weights_file else None),
        created=_now(),
        steps_per_epoch=session.steps,
        registry_id=session.entry.id,
        device=session.device.to_json(),
    ))
    _write_config(session)
    write_text_atomic(run.file(LABELS_FILE), "".join(f"{c}\n" for c in info.classes))
    write_text_atomic(run.metrics_path, "")


def _reopen_run_folder(session: _Session, previous: RunInfo, start_epoch: int) -> None:
    """Marks a resumed run running again and drops the records after its checkpoint."""
    session.run.truncate_metrics(start_epoch)
    session.run.write_info(dataclasses.replace(
        previous, status="running", error=None, finished=None, epochs_completed=start_epoch,
        train=session.train_cfg, steps_per_epoch=session.steps,
        device=session.device.to_json(), registry_id=session.entry.id))
    _write_config(session)


def train(
    dataset_dir: str,
    run_dir: str,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    name: str = "",
    progress: bool = True,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> TrainResult:
    """Trains a network on a dataset into a new run folder.

    Args:
        dataset_dir: A vispipe dataset folder (needs a train split; a val
            split enables validation).
        run_dir: The run folder to create (absent or empty).
        model_cfg: The network.
        train_cfg: The solver.
        name: Run name (default: the folder name).
        progress: Show a progress bar per epoch.
        callbacks: Extra Keras callbacks, run after vispipe's own.

    Returns:
        A `TrainResult`.

    Raises:
        FileExistsError: `run_dir` already holds a run (use `resume`) or
            other files.
        ValueError: An invalid setting (the message names the field).
        KeyboardInterrupt: Ctrl-C or SIGTERM; the run is left "interrupted"
            and can be resumed.

    Example:

    ```python
    result = train("datasets/mnist", "runs/lenet", ModelConfig(name="lenet"),
                   TrainConfig(epochs=3, lr=LRPolicyConfig(policy="step")))
    print(result.best_val_accuracy)
    ```
    """
    run = RunFolder(run_dir)
    # Recorded resolved, so a resumed run agrees.
    model_cfg = dataclasses.replace(
        model_cfg, freeze_epochs=frozen_epochs(model_cfg.freeze_epochs, model_cfg.weights))
    start = _Start(run, dataset_dir, model_cfg, train_cfg,
                   name=name or os.path.basename(run.path))
    return _train(start, progress, callbacks)


def resume(
    run_dir: str,
    *,
    progress: bool = True,
    epochs: int | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> TrainResult:
    """Continues a run from its latest checkpoint.

    The model and optimizer state (including `optimizer.iterations`, hence
    the LR schedule position) come from the checkpoint; records of
    `metrics.jsonl` after it are dropped and redone. A run interrupted before
    its first checkpoint starts again from scratch in the same folder.

    Args:
        run_dir: The run folder.
        progress: Show a progress bar per epoch.
        epochs: New total epoch count (to train a run longer); the LR
            schedule is then spread over the new total from the checkpoint
            on.
        callbacks: Extra Keras callbacks.

    Returns:
        A `TrainResult` covering the whole run.

    Raises:
        NotARunFolderError: No `run.json`.
        ValueError: The run is already complete for `epochs`.

    Example:

    ```python
    resume("runs/lenet")            # after Ctrl-C
    resume("runs/lenet", epochs=20)  # train a finished run longer
    ```
    """
    run = RunFolder(run_dir)
    info = run.read_run_info()
    train_cfg = info.train
    if epochs is not None:
        train_cfg = dataclasses.replace(train_cfg, epochs=epochs)
    if info.status == "completed" and (epochs is None or epochs <= info.epochs_completed):
        raise ValueError(
            f"Run {run.path!r} is already complete ({info.epochs_completed} epochs); pass "
            f"epochs > {info.epochs_completed} to train it longer."
        )
    start = _Start(run, info.dataset_dir, info.model, train_cfg, name=info.name, resumed=info)
    return _train(start, progress, callbacks)
