"""Serving benchmark (same as `adapterd bench serving`): engine ratios against the bare model,
peft and the naive baseline; HTTP latency and throughput; hot swap under load; memory against
live tasks. Writes docs/benchmarks/serving.{json,md} and PNG plots. Runs on CUDA when present.
Usage: python benchmarks/serving.py [--parts engine,http,swap,memory] [--tasks 1,8,64]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.serving_bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
