"""Data-parallel training: Horovod, MirroredStrategy, MultiWorkerMirroredStrategy.

`setup(mode)` returns a `Replicas` that the trainer consults for everything
that differs between one process and many:

- **horovod** (`horovodrun -np N` or an MPIJob): `hvd.init()`, one GPU per
  local rank, each rank reads a disjoint `1/N` shard of the records with a
  per-rank batch of `batch_size / N` (`batch_size` stays the global batch),
  gradients are averaged by `hvd.DistributedGradientTape` in a Keras 3
  `train_step`, metrics are averaged across ranks, and the initial weights
  and optimizer state are broadcast from rank 0. `horovod.tensorflow.keras`
  does not work with Keras 3 ("'Variable' object has no attribute 'ref'"),
  hence the tape is asked for gradients of the underlying `tf.Variable`s
  (`v.value`).
- **mirrored**: `tf.distribute.MirroredStrategy` over the local GPUs; Keras
  splits each global batch between them.
- **multiworker**: `tf.distribute.MultiWorkerMirroredStrategy`, cluster from
  `TF_CONFIG`; the strategy shards the input by data.

With `TrainConfig.scale_lr` the LR is multiplied by the number of replicas
(the linear scaling rule of Goyal et al. 2017, for an LR tuned for one
replica's batch), reached by a linear ramp over `warmup_epochs` ("gradual
warm-up").

Horovod elastic mode is not supported: Keras 3's `fit` cannot be re-entered
mid-epoch with a new world size, and `horovod.tensorflow.keras`' elastic
state is built on Keras 2. A failed job is restarted with `--resume` from
the last rank-0 checkpoint instead.

Example:

```python
replicas = setup("horovod")
ds = make_dataset(info, "train", replicas.input_batch(256), training=True,
                  num_shards=replicas.num_shards, shard_index=replicas.shard_index)
```
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

__all__ = [
    "COMPRESSIONS",
    "MODES",
    "Replicas",
    "ReplicaScaledSchedule",
    "setup",
    "weights_digest",
]

MODES = ("none", "horovod", "mirrored", "multiworker")
COMPRESSIONS = ("none", "fp16")


@functools.lru_cache(maxsize=1)
def _hvd():
    """`horovod.tensorflow`, initialised once per process."""
    try:
        import horovod.tensorflow as hvd
    except ImportError as error:
        raise RuntimeError(
            "train.distributed is 'horovod' but horovod is not installed (or was built "
            f"without TensorFlow support: {error}). Build it with "
            "`scripts/build_horovod.sh .venv/bin/python` (make horovod)."
        ) from error
    hvd.init()
    return hvd


@functools.lru_cache(maxsize=None)
def _strategy(mode: str) -> tf.distribute.Strategy:
    # One strategy per process: MultiWorkerMirroredStrategy may only be made once.
    if mode == "mirrored":
        return tf.distribute.MirroredStrategy()
    if "TF_CONFIG" not in os.environ:
        raise RuntimeError(
            "train.distributed is 'multiworker' but TF_CONFIG is not set; expected a JSON "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", '
            '"index": i}} (the k8s multi-worker Job sets it).'
        )
    return tf.distribute.MultiWorkerMirroredStrategy()


@dataclass(frozen=True)
class Replicas:
    """Where this process stands in a data-parallel job.

    Attributes:
        mode: One of `MODES`.
        rank: This process (Horovod rank, multi-worker task index); 0 alone.
        size: Processes in the job.
        local_rank: Rank among the processes of this host (GPU index).
        replicas: Model replicas in sync (processes x devices each).
        strategy: The `tf.distribute.Strategy` (mirrored, multiworker).
        compression: Horovod allreduce compression, one of `COMPRESSIONS`.
    """

    mode: str = "none"
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    replicas: int = 1
    strategy: tf.distribute.Strategy | None = None
    compression: str = "none"

    @property
    def is_chief(self) -> bool:
        """Whether this process writes checkpoints, logs and registry entries."""
        return self.rank == 0

    @property
    def num_shards(self) -> int:
        """Input shards to read (Horovod: one per rank; strategies shard themselves)."""
        return self.size if self.mode == "horovod" else 1

    @property
    def shard_index(self) -> int:
        return self.rank if self.mode == "horovod" else 0

    def input_batch(self, global_batch: int) -> int:
        """Batch size of this process's input pipeline.

        Raises:
            ValueError: Under Horovod, a global batch that the ranks cannot
                share equally.
        """
        if self.mode != "horovod":
            return global_batch
        if global_batch % self.size:
            raise ValueError(
                f"train.batch_size: expected a multiple of the {self.size} Horovod ranks "
                f"(it is the global batch), got {global_batch}."
            )
        return global_batch // self.size

    def scope(self) -> contextlib.AbstractContextManager:
        """The strategy scope to build and compile models in (a no-op otherwise)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def barrier(self) -> None:
        """Waits until every process got here (no-op for one process)."""
        if self.size == 1:
            return
        if self.mode == "horovod":
            _hvd().allreduce(tf.constant(0.0), op=_hvd().Sum, name="vispipe.barrier")
        else:
            one = self.strategy.run(lambda: tf.constant(1.0))
            self.strategy.reduce(tf.distribute.ReduceOp.SUM, one, axis=None)

    def weight_digests(self, model: keras.Model) -> list[str]:
        """`weights_digest` of every Horovod rank's model, in rank order.

        Strategies keep one copy per variable in sync, so other modes give
        this process's digest only.
        """
        digest = weights_digest(model)
        if self.mode == "horovod" and self.size > 1:
            return list(_hvd().allgather_object(digest, name="vispipe.digests"))
        return [digest]

    def distribute_model(self, model: keras.Model) -> None:
        """Makes a compiled model train data-parallel under Horovod.

        Replaces the model's `train_step` by one that averages gradients
        with `hvd.DistributedGradientTape` and its `get_metrics_result` by
        one that averages metrics across ranks, then broadcasts the weights
        and optimizer state from rank 0. Call it after every `compile` and
        after loading a checkpoint. A no-op except under Horovod.
        """
        if self.mode != "horovod":
            return
        hvd = _hvd()
        compression = hvd.Compression.fp16 if self.compression == "fp16" else hvd.Compression.none
        local_metrics = model.get_metrics_result
        model.train_step = _horovod_train_step.__get__(model)
        model._vispipe_compression = compression
        model.get_metrics_result = functools.partial(_averaged_metrics, local_metrics)
        model.make_train_function(force=True)
        model.make_test_function(force=True)
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        hvd.broadcast_variables(
            [v.value for v in model.variables + model.optimizer.variables], root_rank=0
        )

    def scale_schedule(
        self,
        schedule: keras.optimizers.schedules.LearningRateSchedule,
        *,
        scale_lr: bool,
        warmup_steps: int,
    ) -> keras.optimizers.schedules.LearningRateSchedule:
        """`schedule` times the replica count (linear scaling rule), with warm-up.

        Returns `schedule` itself with one replica or without `scale_lr`.
        """
        if not scale_lr or self.replicas == 1:
            return schedule
        return ReplicaScaledSchedule(schedule, float(self.replicas), warmup_steps)

    def describe(self) -> dict[str, Any]:
        """JSON for run.json: mode, size, replicas, compression."""
        return {"mode": self.mode, "size": self.size, "replicas": self.replicas,
                "compression": self.compression}


def _horovod_train_step(self: keras.Model, data):
    # Keras 3's TensorFlow train_step with the tape wrapped for Horovod.
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    with tf.GradientTape() as tape:
        y_pred = self(x, training=True)
        loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                  training=True)
        self._loss_tracker.update_state(loss, sample_weight=tf.shape(x)[0])
        loss = self.optimizer.scale_loss(loss)
    tape = _hvd().DistributedGradientTape(tape, compression=self._vispipe_compression)
    variables = self.trainable_weights
    gradients = tape.gradient(loss, [v.value for v in variables])
    self.optimizer.apply_gradients(zip(gradients, variables))
    return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _averaged_metrics(local_metrics) -> dict[str, Any]:
    # Keras reads epoch logs through get_metrics_result: averaging here
    # covers step logs, epoch logs and validation alike (equal batches per rank).
    result = local_metrics()
    keys = sorted(result)
    if not keys:
        return result
    stacked = tf.stack([tf.cast(result[k], tf.float32) for k in keys])
    averaged = _hvd().allreduce(stacked, op=_hvd().Average, name="vispipe.metrics")
    return {k: averaged[i] for i, k in enumerate(keys)}


@keras.saving.register_keras_serializable(package="vispipe")
class ReplicaScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A schedule multiplied by `factor`, reached by a linear ramp.

    `lr(s) = inner(s) * (1 + (factor - 1) * min(1, s / warmup_steps))`: the
    gradual warm-up of Goyal et al. (2017) from the single-replica LR to
    `factor` times it over `warmup_steps` (0: at once).

    Args:
        inner: The single-replica schedule.
        factor: The replica count.
        warmup_steps: Steps of the ramp.

    Example:

    ```python
    lr = ReplicaScaledSchedule(make_schedule(cfg.lr, 1000), 4.0, 100)
    ```
    """

    def __init__(self, inner, factor: float, warmup_steps: int):
        if isinstance(inner, dict):
            inner = keras.saving.deserialize_keras_object(inner)
        self.inner = inner
        self.factor = float(factor)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        ramp = tf.minimum(1.0, step / max(self.warmup_steps, 1)) if self.warmup_steps else 1.0
        return self.inner(step) * (1.0 + (self.factor - 1.0) * ramp)

    def get_config(self) -> dict[str, Any]:
        return {"inner": keras.saving.serialize_keras_object(self.inner),
                "factor": self.factor, "warmup_steps": self.warmup_steps}


def setup(mode: str = "none", *, compression: str = "none") -> Replicas:
    """Joins (or starts) the data-parallel job of `mode`.

    Call it before anything touches a GPU: under Horovod it makes only the
    GPU of this process's local rank visible.

    Args:
        mode: One of `MODES`.
        compression: Horovod gradient compression, one of `COMPRESSIONS`.

    Returns:
        A `Replicas`.

    Raises:
        ValueError: An unknown mode or compression.
        RuntimeError: Horovod not installed, or `multiworker` without
            `TF_CONFIG`.

    Example:

    ```python
    replicas = setup("horovod", compression="fp16")
    if replicas.is_chief:
        print(f"{replicas.size} ranks")
    ```
    """
    if mode not in MODES:
        raise ValueError(f"train.distributed: expected one of {MODES}, got {mode!r}.")
    if compression not in COMPRESSIONS:
        raise ValueError(
            f"train.gradient_compression: expected one of {COMPRESSIONS}, got {compression!r}."
        )
    if mode == "none":
        return Replicas(compression=compression)
    if mode == "horovod":
        hvd = _hvd()
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            tf.config.set_visible_devices(gpus[hvd.local_rank() % len(gpus)], "GPU")
        return Replicas("horovod", hvd.rank(), hvd.size(), hvd.local_rank(), hvd.size(),
                        compression=compression)
    strategy = _strategy(mode)
    if mode == "mirrored":
        return Replicas("mirrored", replicas=strategy.num_replicas_in_sync,
                        strategy=strategy, compression=compression)
    resolver = strategy.cluster_resolver
    jobs = resolver.cluster_spec().as_dict()
    workers = len(jobs.get("worker", [])) + len(jobs.get("chief", []))
    # The chief is task "chief" 0, else worker 0; ranks put it first.
    offset = 1 if "chief" in jobs and resolver.task_type == "worker" else 0
    rank = (resolver.task_id or 0) + offset
    return Replicas("multiworker", rank, workers, 0, strategy.num_replicas_in_sync,
                    strategy=strategy, compression=compression)


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of the model's weights, to compare replicas.

    Example:

    ```python
    assert len(set(replicas.weight_digests(model))) == 1
    ```
    """
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(keras.ops.convert_to_numpy(weight).tobytes())
    return digest.hexdigest()
