"""Base models by Hugging Face id, from a local cache only (HF_HUB_OFFLINE=1: no download)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.factories import CPU
from worker.base_model import load_base

ROOT = Path(__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _load_in_subprocess(name: str, cache: Path) -> subprocess.CompletedProcess[str]:
    # huggingface_hub reads HF_HUB_CACHE when imported: a fresh process sees the test's cache.
    code = ("import json, torch; from worker.base_model import load_base; "
            f"b = load_base({name!r}, torch.device('cpu'), 32); "
            "print(json.dumps(b.info.model_dump()))")
    env = os.environ | {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
                        "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def test_hub_id_resolves_from_the_local_cache_offline(tmp_path: Path) -> None:
    tiny = load_base("tiny-bert:2", CPU, 32)
    snapshot = tmp_path / "models--acme--tiny-bert" / "snapshots" / COMMIT
    tiny.model.save_pretrained(snapshot, safe_serialization=True)
    tiny.tokenizer.save_pretrained(snapshot)
    (tmp_path / "models--acme--tiny-bert" / "refs").mkdir()
    (tmp_path / "models--acme--tiny-bert" / "refs" / "main").write_text(COMMIT)
    done = _load_in_subprocess("acme/tiny-bert", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["name"] == "acme/tiny-bert" and info["family"] == "bert"
    assert info["num_layers"] == 2 and info["hidden_size"] == 32
    missing = _load_in_subprocess("acme/not-cached", tmp_path)
    assert missing.returncode != 0
    assert "not in the local Hugging Face cache" in missing.stderr
    bad = _load_in_subprocess("../etc", tmp_path)
    assert "neither a known alias, a local directory nor a Hugging Face model id" in bad.stderr
