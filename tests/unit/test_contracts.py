"""Typed contracts: one list of strategy names, typed params per strategy, typed module configs
and layer decisions, and records written before the types still read."""

from __future__ import annotations

import typing

import pytest
from pydantic import ValidationError

from adapters_store.module_config import BottleneckConfig, LoraConfig
from adapters_store.records import BankManifest, LayerDecision, ModuleRecord, Route
from adapters_store.settings import Settings
from adapters_store.strategy_params import (
    STRATEGY_NAMES,
    PlainParams,
    SearchParams,
    StrategyName,
    StrategyOverrides,
    parse_params,
    resolve,
)
from tests.api_data import make_manifest
from worker.strategies import STRATEGIES


def test_strategy_names_are_defined_once() -> None:
    assert set(STRATEGIES) == set(STRATEGY_NAMES) == set(typing.get_args(StrategyName))
    assert Settings.model_fields["strategy"].annotation is StrategyName


def test_resolve_gives_the_strategy_its_own_params_type() -> None:
    s = Settings(base_model="tiny-bert", weight_decay=0.05)
    plain = resolve("per_task", StrategyOverrides(epochs=2), s, 6)
    search = resolve("safm", StrategyOverrides(forced_layers=[4, 1, 4]), s, 6)
    assert isinstance(plain, PlainParams) and plain.epochs == 2 and plain.weight_decay == 0.05
    assert isinstance(search, SearchParams) and search.forced_layers == [1, 4]
    assert search.module_config(32, 64) == BottleneckConfig(hidden=32, size=s.bottleneck_size)
    lora = resolve("per_task", StrategyOverrides(module_kind="lora", lora_rank=4), s, 6)
    assert lora.module_config(32, 64) == LoraConfig(hidden=32, rank=4, alpha=16.0,
                                                targets=["query", "value"])
    with pytest.raises(ValueError, match="unknown strategy"):
        resolve("bogus", StrategyOverrides(), s, 6)
    with pytest.raises(ValidationError):
        StrategyOverrides.model_validate({"epochs": 0})
    with pytest.raises(ValidationError):
        StrategyOverrides.model_validate({"nonsense": 1})
    # A job shows only what the upload gave.
    assert StrategyOverrides(epochs=2).model_dump() == {"epochs": 2}
    assert parse_params(search.model_dump()) == search


def test_module_config_is_typed_by_kind() -> None:
    base = {"id": "a" * 64, "layer": 0, "params": 1, "blob": "b" * 64, "created_by": "t",
            "created_in": "v1"}
    rec = ModuleRecord.model_validate(base | {"kind": "lora", "config": {
        "hidden": 32, "rank": 4, "alpha": 8.0, "targets": ["query"]}})
    assert isinstance(rec.config, LoraConfig)
    with pytest.raises(ValidationError):
        ModuleRecord.model_validate(base | {"kind": "bottleneck", "config": {
            "hidden": 32, "rank": 4, "alpha": 8.0, "targets": ["query"]}})
    with pytest.raises(ValidationError):
        LoraConfig(hidden=32, rank=4, alpha=8.0, targets=["ffn"])  # type: ignore[list-item]


def test_records_from_before_the_types_still_read() -> None:
    manifest = make_manifest()
    raw = manifest.model_dump(mode="json")
    raw["strategy_params"] = {}
    for route in raw["routes"].values():
        route["strategy_params"] = {}
        route["decisions"] = [{"layer": 0, "choice": "new", "forced": False}]
    again = BankManifest.model_validate(raw)
    assert again.strategy_params is None
    route = next(iter(again.routes.values()))
    assert route.strategy_params is None
    assert route.decisions == [LayerDecision(layer=0, choice="new")]
    with pytest.raises(ValidationError):
        Route.model_validate(next(iter(raw["routes"].values())) | {"decisions": [{"layer": 0,
                                                                    "choice": "maybe"}]})
