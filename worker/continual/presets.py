"""Benchmark presets: data caps and hyperparameters for a 2-core CPU run and for the paper's."""

from __future__ import annotations

from dataclasses import dataclass, field

from adapters_store.strategy_params import STRATEGY_NAMES

ALL_STRATEGIES = STRATEGY_NAMES
# A Settings field's value, or an upload hyperparameter as the command line gives it.
Value = str | int | float | list[int]


@dataclass(frozen=True)
class Preset:
    """``settings`` are Settings fields (the server's ADAPTERD_* defaults) for every strategy;
    ``params`` are per-strategy upload overrides (validated like an upload's)."""

    name: str
    train_cap: int | None
    test_cap: int | None
    settings: dict[str, Value]
    params: dict[str, dict[str, Value]] = field(default_factory=dict)
    description: str = ""


PRESETS: dict[str, Preset] = {
    "cpu": Preset(
        name="cpu", train_cap=800, test_cap=400,
        settings={
            "max_length": 128, "batch_size": 16, "epochs": 3, "learning_rate": 1e-3,
            "head_learning_rate": 3e-3, "safm_epochs": 3, "safm_warmup_epochs": 2,
            "safm_search_epochs": 2, "safm_learning_rate": 1e-3,
        },
        description=(
            "About an hour for olora1 x all strategies on 2 CPU cores with MiniLM. Per task: "
            "800 train rows (stratified; 15% of them held out as the validation split the "
            "strategies use), 400 test rows (stratified), 128 tokens, batch 16. One adapter lr "
            "(1e-3) for every strategy so that they differ by method only; per_task/seqft/"
            "multitask 3 epochs; safm/acm 2 warm-up + 2 search + 3 tuning epochs. In ~86 "
            "search steps x 1e-3 a logit moves at most ~0.09, under a quarter of the paper's "
            "~2k steps x 1.75e-4 (methods.md 1.3), so decisions stay near their initial bias "
            "(findings: docs/benchmarks/continual-olora1-findings.md). Every other SAFM/ACM "
            "value is the paper's (alpha 0.11, beta 0.08, entropy 0.01, layer loss 0.4, "
            "replay 0.2, middle layer forced)."),
    ),
    "paper": Preset(
        name="paper", train_cap=None, test_cap=None,
        settings={
            "max_length": 256, "batch_size": 8, "epochs": 12, "learning_rate": 1.75e-4,
            "safm_epochs": 12, "safm_warmup_epochs": 3, "safm_search_epochs": 3,
            "safm_learning_rate": 1.75e-4,
        },
        description=(
            "The SAFM paper's hyperparameters (AdamW 1.75e-4, batch 8, 3+3 decision epochs, "
            "12 tuning epochs; 12 epochs for the plain strategies too), full train and test "
            "splits, 256 tokens. For a GPU."),
    ),
}
