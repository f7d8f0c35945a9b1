"""Package boundaries: service and worker meet only in adapters_store; the API never loads torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "service": {"torch", "transformers", "safetensors", "worker"},
    "worker": {"service", "fastapi", "starlette"},
    "adapters_store": {"torch", "transformers", "fastapi", "starlette", "service", "worker"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_package_imports_across_the_boundary() -> None:
    crossings = []
    for package, banned in FORBIDDEN.items():
        files = sorted((ROOT / package).rglob("*.py"))
        assert files, f"{package} has no modules"
        for path in files:
            bad = _imports(path) & banned
            if bad:
                crossings.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not crossings, crossings


def test_importing_the_api_leaves_torch_out() -> None:
    code = ("import sys, service.app, adapterd.cli; "
            "bad = [m for m in ('torch', 'transformers', 'worker') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
