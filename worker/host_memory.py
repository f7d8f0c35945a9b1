"""The torch processes' host-heap policy: memory a forward frees stays mapped for the next one."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

# mallopt's parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc refuses a larger mmap threshold on 64-bit hosts (DEFAULT_MMAP_THRESHOLD_MAX).
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024


def keep_freed_memory(keep_mb: int) -> bool:
    """Keep up to ``keep_mb`` MiB of freed heap mapped instead of handing it back to the kernel.

    glibc serves a forward's activations (MiB each) with mmap or from the top of the heap, and
    by default returns them to the kernel on free: the next forward then page-faults every
    4 KiB page of them again, zero-filled. Measured with MiniLM on 2 CPU cores, 32 rows of 42
    tokens, two processes stepped in turn: 16,000 faults per forward and 157 ms against 0 and
    133 ms with this policy (1.19x; docs/benchmarks/serving.md). The heap then holds the
    largest forward's working set between forwards, which the next one needs anyway.

    Returns whether it applied: 0 turns it off, and a C library without glibc's mallopt
    (musl's does nothing, macOS has none) keeps its own behaviour.
    """
    if keep_mb <= 0:
        return False
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        logger.info("host heap: no mallopt in this C library; freed memory goes back as usual")
        return False
    keep = keep_mb * 1024 * 1024
    # Both are needed: a fixed mmap threshold moves blocks up to it into the heap, and the trim
    # threshold stops the heap's free top from being unmapped after each forward.
    applied = bool(mallopt(M_MMAP_THRESHOLD, min(keep, MMAP_THRESHOLD_MAX))) \
        and bool(mallopt(M_TRIM_THRESHOLD, keep))
    if applied:
        logger.info("host heap: keeping up to %d MiB of freed memory for reuse", keep_mb)
    else:
        logger.info("host heap: mallopt refused the thresholds; freed memory goes back as usual")
    return applied


def return_freed_memory() -> None:
    """Hand the heap's free pages back to the kernel now (glibc's malloc_trim).

    For after a bank load: its parse and copy buffers are freed once the modules are in their
    pools, and under the policy above the heap would keep them (measured at 1,000 bottleneck
    tasks in bf16: 1,040 MiB over the base; trimmed, 887). The next forward faults its own
    working set in once and keeps it again.
    """
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)


def _libc_function(name: str) -> Callable[..., int] | None:
    """``name`` from the process's own C library, or None where it has none."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
