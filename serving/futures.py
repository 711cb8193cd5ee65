"""Awaiting the batcher's futures from an event loop, with one loop wake-up per batch.

`asyncio.wrap_future` wakes the loop once per future (a `call_soon_threadsafe`,
a write to the loop's self-pipe and a read back); a batch of 16 requests
finishing together woke it 16 times. `await_result` queues finished futures
and wakes the loop only when the queue was empty, so a batch costs one
wake-up, and it times out with a timer handle rather than `asyncio.wait_for`'s
extra future and callbacks.

```python
outputs = await await_result(batcher.submit(inputs), timeout_s=30.0)
```
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import weakref
from typing import Any

__all__ = ["await_result"]

_Pair = tuple[asyncio.Future, concurrent.futures.Future]


class _LoopBridge:
    """Hands finished concurrent futures to one event loop, settling each burst in one callback.

    Args:
        loop: the event loop whose futures are settled.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = weakref.ref(loop)  # a strong one would keep its _BRIDGES entry, and the loop, alive
        self._lock = threading.Lock()
        self._finished: list[_Pair] = []

    def watch(self, source: concurrent.futures.Future) -> asyncio.Future:
        """An asyncio future, in this bridge's loop (the running one), settled as `source` is."""
        waiter = asyncio.get_running_loop().create_future()
        source.add_done_callback(lambda done: self._finish(waiter, done))
        return waiter

    def _finish(self, waiter: asyncio.Future, source: concurrent.futures.Future) -> None:
        # Runs on the thread that settled `source` (a batcher's worker).
        with self._lock:
            self._finished.append((waiter, source))
            first = len(self._finished) == 1
        loop = self._loop()
        if first and loop is not None:
            try:
                loop.call_soon_threadsafe(self._settle)
            except RuntimeError:  # the loop closed: nobody waits any more
                pass

    def _settle(self) -> None:
        with self._lock:
            finished, self._finished = self._finished, []
        for waiter, source in finished:
            if waiter.done():  # timed out meanwhile
                continue
            if source.cancelled():
                waiter.cancel()
            elif (error := source.exception()) is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(source.result())


_BRIDGES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopBridge] = weakref.WeakKeyDictionary()


def _expire(waiter: asyncio.Future, source: concurrent.futures.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
    source.cancel()  # a request still queued is dropped, not run


async def await_result(source: concurrent.futures.Future, timeout_s: float) -> Any:
    """Waits in the running loop for `source`'s result, at most `timeout_s` seconds.

    Args:
        source: a future another thread settles (the batcher's).
        timeout_s: how long to wait; then `source` is cancelled (dropped if it has not run).

    Returns:
        `source`'s result (its exception is raised).

    Raises:
        TimeoutError: after `timeout_s`.
    """
    loop = asyncio.get_running_loop()
    bridge = _BRIDGES.get(loop)
    if bridge is None:
        bridge = _BRIDGES[loop] = _LoopBridge(loop)
    waiter = bridge.watch(source)
    timer = loop.call_later(timeout_s, _expire, waiter, source)
    try:
        return await waiter
    finally:
        timer.cancel()
        if waiter.cancelled():  # the request itself was cancelled
            source.cancel()
