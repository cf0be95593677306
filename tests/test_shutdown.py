"""The middleware's shutdown on its own: plain asyncio, no crawler."""

from __future__ import annotations

import asyncio

import pytest

from scrapy_asyncfetch._shutdown import Shutdown
from tests.conftest import asyncio_test


async def _fetch(shutdown: Shutdown, done: asyncio.Event, outcomes: list[str]) -> None:
    """What the middleware does around a fetch."""
    task = asyncio.current_task()
    assert task is not None
    shutdown.entered(task)
    try:
        await done.wait()
        outcomes.append("finished")
    except asyncio.CancelledError:
        if not shutdown.closed_it(task):
            outcomes.append("cancelled by someone else")
            raise
        outcomes.append("cancelled at close")
    finally:
        shutdown.left(task)


@asyncio_test
async def test_cancel_returns_once_every_fetch_left() -> None:
    shutdown = Shutdown()
    outcomes: list[str] = []
    never = asyncio.Event()
    tasks = [asyncio.create_task(_fetch(shutdown, never, outcomes)) for _ in range(5)]
    await asyncio.sleep(0)
    shutdown.begin()
    assert shutdown.closing
    assert shutdown.started.is_set()
    await asyncio.wait_for(shutdown.cancel_in_flight(), 10)
    assert outcomes == ["cancelled at close"] * 5
    await asyncio.gather(*tasks)  # the cancellation was taken back: they end normally
    await asyncio.wait_for(shutdown.cancel_in_flight(), 10)  # nothing left: returns at once


@asyncio_test
async def test_grace_period_lets_fetches_finish() -> None:
    shutdown = Shutdown()
    outcomes: list[str] = []
    done = asyncio.Event()
    task = asyncio.create_task(_fetch(shutdown, done, outcomes))
    await asyncio.sleep(0)
    asyncio.get_running_loop().call_soon(done.set)
    await asyncio.wait_for(shutdown.wait_in_flight(30), 10)
    await asyncio.wait_for(shutdown.cancel_in_flight(), 10)
    await task
    assert outcomes == ["finished"]


@asyncio_test
async def test_a_cancellation_from_elsewhere_goes_through() -> None:
    shutdown = Shutdown()
    outcomes: list[str] = []
    task = asyncio.create_task(_fetch(shutdown, asyncio.Event(), outcomes))
    await asyncio.sleep(0)
    task.cancel()  # someone else, e.g. Scrapy's own shutdown
    canceller = asyncio.create_task(shutdown.cancel_in_flight())
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(canceller, 10)
    assert outcomes == ["cancelled by someone else"]
