"""The API's background tasks (the reply reader, the staged-manifest watcher): stopping one
without letting it hang the process's shutdown."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

# Cancelled again this often while it runs on: a cancellation can be lost inside a library that
# turns it into its own error and retries (seen as an API shutdown that never finished).
RECANCEL_EVERY_S = 0.1
STOP_TIMEOUT_S = 5.0


async def stop_task(task: asyncio.Task[None], timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Cancel ``task`` and wait for it to end, cancelling again until it does or ``timeout_s``
    passes; True when it ended. Never raises what the task raised: it is logged."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not task.done():
        if loop.time() >= deadline:
            log.warning("background task %s did not stop in %.1fs; leaving it",
                        task.get_name(), timeout_s)
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_EVERY_S)
    if not task.cancelled() and task.exception() is not None:
        log.warning("background task %s ended with %r", task.get_name(), task.exception())
    return True
