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
  `TF_CONFIG`; the strategy splits every global batch between the workers
  (auto-shard policy DATA: the records are not files). Keras 3's `fit`
  fails across workers in two places (keras-team/keras#20585), which
  `distribute_model` works around on the model instance; `fit` itself must
  run outside the strategy scope, or a checkpoint that only the chief writes
  creates variables, hence collectives, that the other workers never join.

With `TrainConfig.scale_lr` the LR is multiplied by the number of replicas
(the linear scaling rule of Goyal et al. 2017, for an LR tuned for one
replica's batch), reached by a linear ramp over `warmup_epochs` ("gradual
warm-up").

Horovod elastic mode (`setup("horovod", elastic=True)` under `horovodrun
--min-np/--max-np --host-discovery-script`) is epoch-granular: Keras 3's
`fit` cannot change its number of ranks mid-epoch, but it can be re-entered
at an epoch. `run_elastic` runs the epoch loop under Horovod's elastic
driver with an `elastic_state` (weights, optimizer state, epoch) committed
at every epoch end; when a worker fails or hosts come and go, every rank
returns to the last commit, takes rank 0's state and trains on from that
epoch with the new world. Horovod counts a failed worker against its host:
one host's workers stand or fall together. Without elastic mode a failed
job is restarted with `--resume` from the last rank-0 checkpoint.

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
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable

import keras
import numpy as np
import tensorflow as tf

from vispipe.configs import DISTRIBUTED_MODES, GRADIENT_COMPRESSIONS
from vispipe.train.schedules import ReplicaScaledSchedule

if TYPE_CHECKING:
    from horovod.common.elastic import State

__all__ = [
    "Replicas",
    "setup",
    "weights_digest",
]


# How a collective fails once a peer is gone: Horovod shuts down and every
# pending or later op reports it. `horovod.tensorflow.elastic.run` looks for
# the op type only, but TensorFlow 2.19 may name the node instead ("Detected
# at node vispipe.metrics"), and then it swallows the error and returns None
# as though training had finished. The op in flight when the peer died may
# report Gloo's own socket error instead ("pair.cc: Read error ...
# Connection reset by peer"), as the survivor of a lost rank 0 sees.
_PEER_LOST = re.compile(
    r"Horovod has been shut down|HorovodAllreduce|HorovodAllgather|HorovodBroadcast"
    r"|gloo/transport/tcp/pair\.cc")


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
        mode: One of `DISTRIBUTED_MODES`.
        rank: This process (Horovod rank, multi-worker task index); 0 alone.
        size: Processes in the job.
        local_rank: Rank among the processes of this host (GPU index).
        replicas: Model replicas in sync (processes x devices each).
        strategy: The `tf.distribute.Strategy` (mirrored, multiworker).
        compression: Horovod allreduce compression, one of `GRADIENT_COMPRESSIONS`.
        elastic: Horovod elastic mode: ranks may leave and join between
            epochs (see `run_elastic`).
    """

    mode: str = "none"
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    replicas: int = 1
    strategy: tf.distribute.Strategy | None = None
    compression: str = "none"
    elastic: bool = False

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
        """Waits until every process got here (no-op for one process).

        A no-op in elastic mode, where collectives belong inside
        `run_elastic`: a worker that joins later would wait in one alone.
        There the state sync that starts every attempt orders the ranks.
        """
        if self.size == 1 or self.elastic:
            return
        if self.mode == "horovod":
            _hvd().allreduce(tf.constant(0.0), op=_hvd().Sum, name="vispipe.barrier")
        else:
            one = self.strategy.run(lambda: tf.constant(1.0))
            self.strategy.reduce(tf.distribute.ReduceOp.SUM, one, axis=None)

    def weight_digests(self, model: keras.Model) -> list[str]:
        """`weights_digest` of every process's model, in rank order.

        Every process must call it (it is a collective). Under
        `multiworker` there is one digest per replica: one per worker, or
        several alike for a worker with several GPUs.

        Returns:
            The hex digests; one for a single process or `mirrored` (whose
            replicas share one process and one set of variables).
        """
        digest = weights_digest(model)
        if self.size == 1:
            return [digest]
        if self.mode == "horovod":
            return list(_hvd().allgather_object(digest, name="vispipe.digests"))
        # Collectives carry numbers: each replica contributes its 32 digest bytes.
        row = tf.constant(np.frombuffer(bytes.fromhex(digest), np.uint8)[None].astype(np.int32))
        rows = self.strategy.gather(
            self.strategy.experimental_distribute_values_from_function(lambda _: row), axis=0)
        return [bytes(r.astype(np.uint8)).hex() for r in keras.ops.convert_to_numpy(rows)]

    def distribute_model(self, model: keras.Model) -> None:
        """Makes a compiled model train data-parallel across processes.

        Under Horovod, replaces the model's `train_step` by one that
        averages gradients with `hvd.DistributedGradientTape` and its
        `get_metrics_result` by one that averages metrics across ranks,
        then broadcasts the weights and optimizer state from rank 0. Under
        `multiworker`, works around Keras 3's `fit` across workers (see
        `_work_around_keras_multiworker`). Call it after every `compile` and
        after loading a checkpoint. A no-op in the other modes.

        In elastic mode nothing is broadcast here (see `barrier`): the
        state sync of `run_elastic` does it.
        """
        if self.mode == "multiworker":
            _work_around_keras_multiworker(model)
            return
        if self.mode != "horovod":
            return
        hvd = _hvd()
        compression = hvd.Compression.fp16 if self.compression == "fp16" else hvd.Compression.none
        # The class's method, not the instance's: a second call (after a
        # re-compile) must not average the averages again.
        local_metrics = type(model).get_metrics_result.__get__(model)
        model.train_step = _horovod_train_step.__get__(model)
        model._vispipe_compression = compression
        model.get_metrics_result = functools.partial(_averaged_metrics, local_metrics)
        model.make_train_function(force=True)
        model.make_test_function(force=True)
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        if not self.elastic:
            hvd.broadcast_variables(_state_variables(model), root_rank=0)

    def elastic_state(self, model: keras.Model, **attributes: Any) -> State:
        """The state that elastic mode commits, restores and syncs.

        Args:
            model: A compiled model after `distribute_model`.
            **attributes: Picklable values kept along (e.g. `epoch=0`),
                read and set as attributes of the state.

        Returns:
            A `horovod.common.elastic.State` for `run_elastic`.
        """
        return _keras_state_type()(model, **attributes)

    def run_elastic(self, state: State, train: Callable[[State], None],
                    on_reset: Callable[[], None]) -> None:
        """Calls `train(state)` until it returns, across changes of the world.

        Every attempt starts with `state.sync()` (rank 0's weights,
        optimizer state and attributes to every rank). When a peer fails,
        each rank restores the last `state.commit()`; when hosts were added
        or removed (noticed at a commit), they keep the state. Either way
        Horovod is re-initialised with the new world, `on_reset` runs, and
        `train` is called again.

        Args:
            state: From `elastic_state`.
            train: Trains from `state`, calling `state.commit()` at epoch
                ends. Collectives must all happen inside it.
            on_reset: Adapts to the new rank and size (see `rejoined`).

        Raises:
            RuntimeError: Not started by an elastic `horovodrun`.
        """
        if os.environ.get("HOROVOD_ELASTIC") != "1":
            raise RuntimeError(
                "train.elastic is true but this process was not started by an elastic "
                "horovodrun (--min-np/--max-np with --host-discovery-script).")
        from horovod.common.elastic import run_fn
        from horovod.common.exceptions import HorovodInternalError

        def attempt(state: State) -> None:
            try:
                train(state)
            except tf.errors.UnknownError as error:
                if not _PEER_LOST.search(str(error)):
                    raise
                raise HorovodInternalError(error) from error

        def reinit() -> None:
            _hvd().shutdown()
            _hvd().init()

        state.register_reset_callbacks([on_reset])
        run_fn(attempt, reinit)(state)

    def rejoined(self) -> Replicas:
        """This process's place in the Horovod world after an elastic reset."""
        hvd = _hvd()
        return replace(self, rank=hvd.rank(), size=hvd.size(), local_rank=hvd.local_rank(),
                       replicas=hvd.size())

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
        """JSON for run.json: mode, size, replicas, compression, elastic."""
        return {"mode": self.mode, "size": self.size, "replicas": self.replicas,
                "compression": self.compression, "elastic": self.elastic}


def _state_variables(model: keras.Model) -> list[tf.Variable]:
    # Horovod takes tf.Variables, not Keras 3 variables (see the module doc).
    return [v.value for v in model.variables + model.optimizer.variables]


@functools.lru_cache(maxsize=1)
def _keras_state_type() -> type:
    """The elastic state class, made once Horovod is imported (it is optional)."""
    from horovod.common.elastic import ObjectState

    hvd = _hvd()

    class KerasState(ObjectState):
        """A Keras 3 model's weights and optimizer state, plus attributes.

        Horovod's `TensorFlowKerasState` is written for Keras 2 (it calls
        `optimizer.variables()` and broadcasts Keras variables), and its
        `TensorFlowState` broadcasts once when made, not at each sync.
        Commits are NumPy copies in host memory.
        """

        def __init__(self, model: keras.Model, **attributes: Any):
            self.model = model
            self._values = self._read()
            super().__init__(bcast_object=hvd.broadcast_object, get_rank=hvd.rank,
                             **attributes)

        def _read(self) -> list[np.ndarray]:
            return [v.numpy() for v in _state_variables(self.model)]

        def save(self) -> None:
            self._values = self._read()
            super().save()

        def restore(self) -> None:
            for variable, value in zip(_state_variables(self.model), self._values):
                variable.assign(value)
            super().restore()

        def sync(self) -> None:
            hvd.broadcast_variables(_state_variables(self.model), root_rank=0)
            self._values = self._read()
            super().sync()

    return KerasState


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


def _work_around_keras_multiworker(model: keras.Model) -> None:
    """Lets Keras 3's TensorFlow `fit` run under a multi-worker strategy.

    Keras 3.15 (keras-team/keras#20585) fails there twice, both times in
    `strategy.reduce` calls that work within one process only:

    - `_maybe_symbolic_build` reduces the first batch, an `(x, y)` tuple of
      `PerReplica` values, and `reduce` takes no nested structure across
      workers ("Attempt to convert a value (PerReplica...) to a Tensor").
      Building needs shapes and dtypes only, which the dataset's element
      spec has. Reading no batch also keeps the epoch's shuffle order that
      of one process (Keras' read starts a first pass of the reshuffling
      dataset), so the workers split the same global batches.
    - Every step's logs are reduced with `reduce(MEAN, axis=0)`, which
      fails on the scalar logs ("Invalid reduction dimension 0 for input
      with 0 dimensions"). Given a leading axis of length 1, the same
      reduction is the mean over the replicas.

    Epoch logs are unaffected: Keras reads them from the metrics in
    cross-replica context, where their variables sum over all replicas.
    Instance attributes, as for Horovod; wrapping the class's `train_step`
    keeps a second call (after a re-compile) from adding a second axis.
    """
    model._maybe_symbolic_build = _symbolic_build_from_spec.__get__(model)
    model.train_step = _with_replica_axis(type(model).train_step.__get__(model))
    model.test_step = _with_replica_axis(type(model).test_step.__get__(model))
    model.make_train_function(force=True)
    model.make_test_function(force=True)


def _symbolic_build_from_spec(self: keras.Model, iterator=None, data_batch=None) -> None:
    # Keras' own `_maybe_symbolic_build`, with the shapes from the dataset's
    # element spec instead of a batch reduced across workers.
    if iterator is not None:
        data_batch = iterator.data_adapter.get_tf_dataset().element_spec
    with self.distribute_strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def _with_replica_axis(step: Callable[[Any], dict[str, Any]]) -> Callable[[Any], dict[str, Any]]:
    # `step` with every log shaped [1] instead of [].
    def step_with_replica_axis(data) -> dict[str, Any]:
        return keras.tree.map_structure(lambda value: tf.expand_dims(value, 0), step(data))

    return step_with_replica_axis


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


def setup(mode: str = "none", *, compression: str = "none", elastic: bool = False) -> Replicas:
    """Joins (or starts) the data-parallel job of `mode`.

    Call it before anything touches a GPU: under Horovod it makes only the
    GPU of this process's local rank visible.

    Args:
        mode: One of `DISTRIBUTED_MODES`.
        compression: Horovod gradient compression, one of `GRADIENT_COMPRESSIONS`.
        elastic: Horovod elastic mode (see `Replicas.run_elastic`).

    Returns:
        A `Replicas`.

    Raises:
        ValueError: An unknown mode or compression, or `elastic` without
            Horovod.
        RuntimeError: Horovod not installed, or `multiworker` without
            `TF_CONFIG`.

    Example:

    ```python
    replicas = setup("horovod", compression="fp16")
    if replicas.is_chief:
        print(f"{replicas.size} ranks")
    ```
    """
    if mode not in DISTRIBUTED_MODES:
        raise ValueError(f"train.distributed: expected one of {DISTRIBUTED_MODES}, got {mode!r}.")
    if compression not in GRADIENT_COMPRESSIONS:
        raise ValueError(
            f"train.gradient_compression: expected one of {GRADIENT_COMPRESSIONS}, got {compression!r}."
        )
    if elastic and mode != "horovod":
        raise ValueError(f"train.elastic: needs train.distributed 'horovod', got {mode!r}.")
    if mode == "none":
        return Replicas(compression=compression)
    if mode == "horovod":
        hvd = _hvd()
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            tf.config.set_visible_devices(gpus[hvd.local_rank() % len(gpus)], "GPU")
        return Replicas("horovod", hvd.rank(), hvd.size(), hvd.local_rank(), hvd.size(),
                        compression=compression, elastic=elastic)
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
