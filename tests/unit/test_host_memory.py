"""The host-heap policy: freed activations stay mapped for the next forward, and a trim gives
them back. Each case runs in a fresh interpreter, since the policy is process-wide and cannot
be undone."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from worker.host_memory import keep_freed_memory

ROOT = Path(__file__).resolve().parents[2]
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A forward's pattern: several MiB-sized activations allocated, used and freed each step.
_STEPS = """
import json, resource, sys, torch
from worker.host_memory import keep_freed_memory
applied = keep_freed_memory(int(sys.argv[1]))
def step():
    a = torch.ones(1344, 1536); b = a * 2; c = torch.ones(1344, 384); d = b + a
    return float(d[0, 0] + c[0, 0])
for _ in range(8): step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20): step()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
print(json.dumps({"applied": applied, "faults_per_step": faults}))
"""

# 192 MiB freed in 8 MiB blocks: the kept heap holds it until it is trimmed.
_TRIM = """
import json, os, torch
from worker.host_memory import keep_freed_memory, return_freed_memory
def rss(): return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
keep_freed_memory(512)
blocks = [torch.ones(1024, 2048) for _ in range(24)]
held = rss()
del blocks
kept = rss()
return_freed_memory()
print(json.dumps({"held": held, "kept": kept, "trimmed": rss()}))
"""


def _run(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_zero_leaves_the_allocator_alone() -> None:
    assert keep_freed_memory(0) is False


@pytest.mark.skipif(not GLIBC, reason="the policy is glibc's mallopt")
def test_kept_heap_stops_refaulting_each_step() -> None:
    default, kept = _run(_STEPS, "0"), _run(_STEPS, "64")
    assert default["applied"] is False and kept["applied"] is True
    # glibc's default faults in every page of the freed blocks again (~6,000 a step here with
    # 4 KiB pages); a host with transparent huge pages always on faults little either way.
    assert kept["faults_per_step"] <= max(64.0, default["faults_per_step"] / 5), (default, kept)


@pytest.mark.skipif(not GLIBC, reason="the policy is glibc's mallopt")
def test_trim_gives_kept_memory_back() -> None:
    got = _run(_TRIM)
    mib = 2**20
    assert got["kept"] > got["held"] - 32 * mib, got  # freed, but still mapped
    assert got["trimmed"] < got["kept"] - 128 * mib, got  # handed back
