"""Stopping the API's background tasks never hangs its shutdown, even when a cancellation is
lost inside a library."""

from __future__ import annotations

import asyncio

from service.background import stop_task


def test_a_task_that_loses_one_cancellation_is_cancelled_again() -> None:
    lost: list[int] = []

    async def loses_the_first() -> None:
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost.append(1)  # as a library that turns it into its own error and retries

    async def main() -> bool:
        task = asyncio.create_task(loses_the_first())
        await asyncio.sleep(0.02)
        return await stop_task(task, timeout_s=5)

    assert asyncio.run(main()) is True and lost == [1]


def test_a_task_that_never_stops_is_left_after_the_timeout() -> None:
    ignoring = [True]

    async def main() -> tuple[bool, float]:
        async def stubborn() -> None:
            while True:
                try:
                    await asyncio.sleep(0.01)
                except asyncio.CancelledError:
                    if not ignoring:
                        raise

        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0.02)  # running, so each cancellation lands inside its loop
        loop = asyncio.get_running_loop()
        started = loop.time()
        stopped = await stop_task(task, timeout_s=0.3)
        took = loop.time() - started
        ignoring.clear()  # now it may end, so the test's loop can close
        task.cancel()
        await asyncio.wait({task})
        return stopped, took

    stopped, took = asyncio.run(asyncio.wait_for(main(), timeout=10))
    assert stopped is False and 0.3 <= took < 2.0


def test_what_a_task_raised_is_logged_not_raised(caplog) -> None:  # noqa: ANN001 - fixture
    async def fails() -> None:
        raise RuntimeError("boom")

    async def main() -> bool:
        task = asyncio.create_task(fails())
        await asyncio.sleep(0)
        return await stop_task(task)

    assert asyncio.run(main()) is True
    assert "boom" in caplog.text
