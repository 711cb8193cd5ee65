"""Awaiting the batcher's results from the event loop: one wake-up per batch, timeouts drop queued work."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import threading

import pytest

from vispipe.serving.futures import await_result


def test_a_batch_of_results_wakes_the_loop_fewer_times_than_it_has_results():
    async def main() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        wakeups = 0
        call_soon_threadsafe = loop.call_soon_threadsafe

        def counted(*args):
            nonlocal wakeups
            wakeups += 1
            return call_soon_threadsafe(*args)

        loop.call_soon_threadsafe = counted
        sources = [concurrent.futures.Future() for _ in range(16)]
        waits = [asyncio.ensure_future(await_result(s, timeout_s=30)) for s in sources]
        await asyncio.sleep(0)  # every waiter is watching its source

        def finish_batch() -> None:  # as a batcher's worker settles one batch
            for i, source in enumerate(sources):
                source.set_result(i)

        worker = threading.Thread(target=finish_batch)
        worker.start()
        results = await asyncio.gather(*waits)
        worker.join()
        return results, wakeups

    results, wakeups = asyncio.run(main())
    assert results == list(range(16))
    assert 1 <= wakeups < 16


def test_errors_pass_through_and_a_timeout_cancels_the_queued_request():
    async def main() -> None:
        failed = concurrent.futures.Future()
        threading.Thread(target=failed.set_exception, args=(ValueError("bad values"),)).start()
        with pytest.raises(ValueError, match="bad values"):
            await await_result(failed, timeout_s=30)
        queued = concurrent.futures.Future()
        with pytest.raises(TimeoutError):
            await await_result(queued, timeout_s=0.05)
        assert queued.cancelled()  # the batcher drops it instead of running it

    asyncio.run(main())


def test_a_finished_loop_leaves_nothing_behind():
    from vispipe.serving import futures

    async def one() -> int:
        source = concurrent.futures.Future()
        source.set_result(7)
        return await await_result(source, timeout_s=30)

    gc.collect()
    before = len(futures._BRIDGES)
    assert asyncio.run(one()) == 7
    gc.collect()
    assert len(futures._BRIDGES) == before
