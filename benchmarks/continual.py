"""Continual-learning benchmark on real public data (same as `adapterd bench continual`).

Runs each strategy over a task sequence with the trainer's own code, writes
docs/benchmarks/continual-<sequence>-<preset>.{json,md} and PNG plots.
Usage: python benchmarks/continual.py --sequence olora1 --preset cpu [--strategies safm,per_task]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.continual.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
