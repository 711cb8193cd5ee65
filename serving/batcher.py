"""Server-side dynamic batching: concurrent requests run as one signature call.

```python
batcher = Batcher(run=lambda inputs: model(inputs), config=BatchingConfig(max_batch_size=32))
future = batcher.submit({"images": np.zeros((1, 28, 28, 1), np.uint8)})
outputs = future.result()
```
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import threading
import time
from typing import Callable

import numpy as np

from vispipe.serving.config import BatchingConfig
from vispipe.serving.errors import ServingError

__all__ = ["Batcher"]

Tensors = dict[str, np.ndarray]


@dataclasses.dataclass
class _Task:
    inputs: Tensors
    rows: int
    key: tuple
    future: concurrent.futures.Future
    enqueued: float


def _batch_key(inputs: Tensors) -> tuple:
    # Only requests with the same dtypes and per-row shapes can be concatenated.
    return tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(inputs.items()))


class Batcher:
    """Queues requests and runs them in batches on `num_batch_threads` worker threads.

    A worker takes the oldest request, then waits up to `batch_timeout_ms`
    for more requests of the same shape until `max_batch_size` rows are
    gathered (with no timeout, it takes the requests already queued: those
    that arrived while the previous batch ran), runs `run` once on the
    concatenation and splits the outputs.
    A model whose outputs have no batch dimension gets each request run alone.

    Args:
        run: the signature call, dict of batched inputs -> dict of batched outputs.
        config: batch size, timeout and queue limits.
        name: what is batched, for error messages ("lenet version 2").
        on_batch: called with the size of each batch run (for metrics).
    """

    def __init__(
        self,
        run: Callable[[Tensors], Tensors],
        config: BatchingConfig,
        name: str = "model",
        on_batch: Callable[[int], None] | None = None,
    ):
        self._run = run
        self._config = config
        self._name = name
        self._on_batch = on_batch
        self._queue: collections.deque[_Task] = collections.deque()
        self._queued_rows = 0
        self._closed = False
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._work, name=f"batcher-{name}-{i}", daemon=True)
            for i in range(config.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def queue_depth(self) -> int:
        """Rows waiting to run."""
        return self._queued_rows

    def submit(self, inputs: Tensors) -> concurrent.futures.Future:
        """Queues one request (its arrays share the leading batch dimension).

        Args:
            inputs: input name -> array with rows on axis 0, at most `max_batch_size` rows.

        Returns:
            A future resolving to output name -> array holding this request's rows.

        Raises:
            ServingError: UNAVAILABLE when the queue is full or the batcher is closed.
        """
        rows = _rows(inputs)
        if rows > self._config.max_batch_size:
            raise ValueError(f"a batched request holds at most {self._config.max_batch_size} rows, got {rows}")
        task = _Task(inputs, rows, _batch_key(inputs), concurrent.futures.Future(), time.monotonic())
        with self._cond:
            if self._closed:
                raise ServingError("UNAVAILABLE", f"{self._name} is unloading; retry the request")
            if self._queued_rows + rows > self._config.max_queued:
                raise ServingError(
                    "UNAVAILABLE",
                    f"the batching queue of {self._name} is full "
                    f"({self._queued_rows} rows queued, max_queued={self._config.max_queued})",
                )
            self._queue.append(task)
            self._queued_rows += rows
            self._cond.notify()
        return task.future

    def close(self, timeout: float | None = None) -> None:
        """Refuses new requests, runs the queued ones, and stops the workers."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _take(self, key: tuple, room: int) -> list[_Task]:
        """Removes from the queue the tasks of shape `key` that fit in `room` rows (caller holds the lock)."""
        taken, kept = [], collections.deque()
        for task in self._queue:
            if task.key == key and task.rows <= room:
                taken.append(task)
                room -= task.rows
            else:
                kept.append(task)
        self._queue = kept
        return taken

    def _gather(self) -> list[_Task] | None:
        timeout = self._config.batch_timeout_ms / 1000.0
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._queue[0]
            batch = self._take(first.key, self._config.max_batch_size)
            rows = sum(t.rows for t in batch)
            deadline = first.enqueued + timeout
            while rows < self._config.max_batch_size and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
                more = self._take(first.key, self._config.max_batch_size - rows)
                batch += more
                rows += sum(t.rows for t in more)
            # Gathered rows count as queued until the batch runs.
            self._queued_rows -= rows
        return batch

    def _work(self) -> None:
        while (batch := self._gather()) is not None:
            # Requests that timed out and were cancelled while queued are dropped here.
            batch = [t for t in batch if t.future.set_running_or_notify_cancel()]
            if batch:
                self._run_batch(batch)

    def _run_batch(self, batch: list[_Task]) -> None:
        if len(batch) == 1:
            self._run_alone(batch[0])
        else:
            total = sum(t.rows for t in batch)
            try:
                outputs = self._run({name: np.concatenate([t.inputs[name] for t in batch]) for name in batch[0].inputs})
            except Exception:  # one request's bad values must not fail the others: each runs alone
                outputs = None
            if outputs is not None and all(np.ndim(v) and np.shape(v)[0] == total for v in outputs.values()):
                _split(batch, outputs)
            else:  # no batch dimension to split along, or an error to attribute
                for task in batch:
                    self._run_alone(task)
        if self._on_batch is not None:
            self._on_batch(sum(t.rows for t in batch))

    def _run_alone(self, task: _Task) -> None:
        try:
            task.future.set_result(self._run(task.inputs))
        except BaseException as error:  # handed to the waiting request, never lost
            task.future.set_exception(error)


def _split(batch: list[_Task], outputs: Tensors) -> None:
    start = 0
    for task in batch:
        end = start + task.rows
        task.future.set_result({name: value[start:end] for name, value in outputs.items()})
        start = end


def _rows(inputs: Tensors) -> int:
    sizes = {np.shape(a)[0] if np.ndim(a) else None for a in inputs.values()}
    if len(sizes) != 1 or None in sizes:
        raise ServingError(
            "INVALID_ARGUMENT",
            f"all inputs must share the same batch size (first dimension), got shapes "
            f"{ {name: list(np.shape(a)) for name, a in inputs.items()} }",
        )
    return sizes.pop()
