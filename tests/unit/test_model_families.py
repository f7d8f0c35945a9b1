"""Every supported encoder family gets its adapter sites wrapped and serves mixed batches that
equal each route run alone; unknown families are refused by name."""

from __future__ import annotations

import json

import pytest
import torch

from adapters_store.model_families import FAMILIES, family_of
from adapters_store.streams import InputItem
from tests.factories import CPU, random_module
from worker.base_model import TINY_FAMILIES, load_base
from worker.routed_model import RoutedEncoder
from worker.routing import RoutedLinear, Routing


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_family_sites_are_wrapped_and_mixed_batches_match(family: str) -> None:
    model = RoutedEncoder(load_base(f"tiny-{family}:2", CPU, 32)).eval()
    assert model.base.info.family == family and model.num_layers == 2
    wrapped = [m for m in model.modules() if isinstance(m, RoutedLinear)]
    sites = FAMILIES[family].sites
    assert len(wrapped) == 2 * len({site.path for site in sites.values()})
    assert sorted(p for m in wrapped[:len(wrapped) // 2] for p, _ in m.parts) == sorted(sites)
    items = [InputItem(text=t)
             for t in ("one two three", "four five", "six seven", "eight", "nine ten")]
    batch = model.base.tokenize(items, CPU)
    assert set(batch) <= set(FAMILIES[family].inputs)
    routes = [[random_module("bottleneck", 0, seed=1), None],
              [random_module("lora", 0, seed=2), random_module("lora", 1, seed=3)],
              [None, None],
              [random_module("bottleneck", 0, seed=1), None],
              [random_module("sparse", 0, seed=4), random_module("sparse", 1, seed=5)]]
    with torch.no_grad():
        mixed = model.embed(batch, Routing.from_rows(routes, 2, CPU))
        bare = model.embed(batch, None)
        for row, route in enumerate(routes):
            alone = model.embed(model.base.tokenize([items[row]], CPU), Routing.uniform(route))
            torch.testing.assert_close(mixed[row], alone[0], atol=1e-5, rtol=0)
    assert not torch.allclose(mixed[0], bare[0], atol=1e-4)  # the modules are applied
    assert not torch.allclose(mixed[1], bare[1], atol=1e-4)
    torch.testing.assert_close(mixed[2], bare[2], atol=1e-6, rtol=0)
    assert not torch.allclose(mixed[4], bare[4], atol=1e-4)


def test_tiny_bases_are_deterministic_and_distinct() -> None:
    prints = {f: load_base(f"tiny-{f}", CPU, 32).info.fingerprint for f in TINY_FAMILIES}
    assert len(set(prints.values())) == len(TINY_FAMILIES)
    assert load_base("tiny-roberta", CPU, 32).info.fingerprint == prints["roberta"]


def test_unknown_family_and_pickled_checkpoints_are_refused(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="unsupported base model type 'gpt2'"):
        family_of("gpt2")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="supported"):
        load_base(str(tmp_path), CPU, 32)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="safetensors"):
        load_base(str(tmp_path), CPU, 32)
    with pytest.raises(ValueError, match="layer count"):
        load_base("tiny-bert:x", CPU, 32)


def test_local_directory_of_another_family_loads(tmp_path) -> None:  # noqa: ANN001
    tiny = load_base("tiny-distilbert", CPU, 32)
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    again = load_base(str(tmp_path), CPU, 32)
    assert again.info.family == "distilbert" and again.info.num_layers == 2
    batch = again.tokenize([InputItem(text="a b c")], CPU)
    torch.testing.assert_close(again.model(**batch).last_hidden_state,
                               tiny.model(**batch).last_hidden_state)
