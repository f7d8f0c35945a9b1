"""The one settings object every adapterd process builds in its entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from adapters_store.module_config import DenseKind, SparseTarget
from adapters_store.strategy_params import (
    DecisionMode,
    GateMode,
    GroupSimilarity,
    LoraTarget,
    MaskCriterion,
    StrategyName,
)


class Settings(BaseSettings):
    """All knobs, read from ``ADAPTERD_*`` environment variables (or passed in tests)."""

    model_config = SettingsConfigDict(env_prefix="ADAPTERD_", extra="ignore")

    # Shared store
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = Field("adapterd", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    data_dir: Path = Path("var/data")
    # Where tensors and datasets live: "local" (data_dir/blobs; hosts share it as a directory)
    # or "s3" (an S3-compatible bucket, e.g. MinIO; every host caches what it reads in
    # blob_cache_dir, default data_dir/blob-cache: blobs never change, so the cache is safe).
    blob_backend: Literal["local", "s3"] = "local"
    # Whether a predict with no inference worker alive is queued and waits up to its deadline
    # (request_timeout_s) for one to start, instead of a 503 at once: for an autoscaler that
    # starts the first worker on demand (deploy/kubernetes). Off on one box, where the
    # supervisor restarts a dead worker and a client should hear at once that none is up.
    wait_for_worker: bool = False
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    blob_cache_dir: Path | None = None

    # Logging (every process)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # json: one object per line (ts, level, logger, pid, message, request_id) for log shippers.
    log_format: Literal["text", "json"] = "text"

    # API
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_request_bytes: int = Field(1024 * 1024, ge=1024)
    max_inputs_per_request: int = Field(64, ge=1, le=4096)
    max_input_chars: int = Field(10_000, ge=1)
    request_timeout_s: float = Field(30.0, gt=0)
    max_queue_depth: int = Field(10_000, ge=1)
    admin_api_keys: list[SecretStr] = Field(default_factory=list)
    inference_api_keys: list[SecretStr] = Field(default_factory=list)

    # Models
    base_model: str = "all-MiniLM-L6-v2"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int = Field(0, ge=0)
    # Freed host memory a torch process keeps mapped for its next forward (glibc); 0: return it
    # to the kernel at once (glibc's default), which re-faults every page of the next forward's
    # activations (worker/host_memory.py).
    malloc_keep_mb: int = Field(512, ge=0, le=1_048_576)
    max_length: int = Field(128, ge=8, le=4096)

    # Inference worker
    max_batch: int = Field(32, ge=1, le=4096)
    # 0: serve what is queued as soon as the worker is free (measured best on 2 CPU cores at
    # concurrency 1 and 16, docs/benchmarks/serving.md); more trades latency for larger batches.
    max_wait_ms: int = Field(0, ge=0, le=10_000)
    # One forward holds at most this many padded tokens (rows x longest row); rows are bucketed
    # by length into as many forwards as needed.
    max_batch_tokens: int = Field(4096, ge=64, le=1_000_000)
    # The inference worker's weights and activations (the trainer always trains in float32);
    # bfloat16 halves memory and is fast on recent GPUs and CPUs with AMX/AVX512-BF16.
    serving_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    claim_idle_ms: int = Field(10_000, ge=100)
    heartbeat_s: float = Field(2.0, gt=0)
    keep_versions: int = Field(2, ge=1, le=64)
    # How often an inference worker looks for a staged or live version it has not loaded yet.
    prefetch_poll_ms: int = Field(50, ge=5, le=10_000)
    # A publish first stages the version and waits up to this long for every live inference
    # worker to load it, so the swap itself is a reference change; 0 publishes at once.
    prepare_timeout_s: float = Field(10.0, ge=0, le=600)

    # Trainer
    strategy: StrategyName = "safm"
    module_kind: DenseKind = "bottleneck"
    bottleneck_size: int = Field(48, ge=1, le=4096)
    lora_rank: int = Field(8, ge=1, le=1024)
    lora_alpha: float = Field(16.0, gt=0)
    lora_targets: list[LoraTarget] = Field(default_factory=lambda: ["query", "value"],
                                           min_length=1)
    epochs: int = Field(4, ge=1, le=100)
    batch_size: int = Field(16, ge=1, le=1024)
    learning_rate: float = Field(1e-3, gt=0, le=1.0)
    head_learning_rate: float = Field(3e-3, gt=0, le=1.0)
    weight_decay: float = Field(0.01, ge=0, le=1.0)
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    min_rows_per_label: int = Field(5, ge=1)
    max_train_rows: int = Field(20_000, ge=10)
    seed: int = 777
    # SAFM / ACM (defaults from the paper and its code; epochs sized for a CPU, see README)
    safm_epochs: int = Field(6, ge=1, le=100, description="tuning-stage epochs (paper: 12)")
    safm_learning_rate: float = Field(1.75e-4, gt=0, le=1.0)
    safm_search_learning_rate: float | None = Field(None, gt=0, le=1.0)
    safm_warmup_epochs: int = Field(3, ge=0, le=50)
    safm_search_epochs: int = Field(3, ge=0, le=50)
    safm_alpha: float = 0.11
    safm_beta: float = Field(0.08, ge=0)
    safm_entropy_coef: float = Field(0.01, ge=0)
    safm_layer_loss_weight: float = Field(0.4, ge=0)
    safm_replay_ratio: float = Field(0.2, ge=0)
    safm_forced_layers: list[int] | None = None
    # How SAFM decides (strategy_params.DecisionMode) and the replay rule; chosen on validation
    # splits (docs/benchmarks/safm-decision.md).
    safm_decision: DecisionMode = "validation"
    safm_decision_tolerance: float = Field(0.02, ge=0, le=10)
    safm_replay_adaptive: bool = True
    # The regression gate before every publish (strategy_params.GateMode); None: a drop of
    # max(1 point, 2 binomial standard errors of the task's held-out split) fails a task.
    regression_gate: GateMode = "fallback"
    regression_tolerance: float | None = Field(None, ge=0, le=1)
    # Sparse adapters (seed 002; mttl's sparse_finetuning config: 5% of q,k,v, SNIP masks
    # re-selected every 100 steps in the first epoch). The learning rate was chosen on
    # validation splits (docs/benchmarks/sparse.md).
    sparse_keep_ratio: float = Field(0.05, gt=0, le=1)
    sparse_mask_update_interval: int = Field(100, ge=1)
    sparse_targets: list[SparseTarget] = Field(
        default_factory=lambda: ["query", "key", "value"], min_length=1)
    sparse_mask_criterion: MaskCriterion = "snip"
    sparse_learning_rate: float = Field(3e-3, gt=0, le=1.0)
    # HAM (seed 001; no official code: the unknowns of the reconstruction, methods.md §3.3).
    # Chosen on validation splits (docs/benchmarks/sparse-merging-ham-findings.md), one knob at
    # a time from the reasoned start, best val Average winning and a tie going to the smaller
    # bank: τ 0.1 over 0.15 and 0.2 on sentiment4 (val Average 61.70, 61.16, 60.65); keep 0.5
    # of ΔW's entries over 0.8 and 1.0 (62.23, 61.70, 61.16); rank cap 16 over 32 and 64 (a tie
    # at 61.70 on sentiment4, and at 59.78 on long15 with 1.03M against 1.62M parameters).
    # Replay stays 0.2 (SAFM's ratio): 0 and 0.5 tied above it (62.23 against 61.70), not
    # monotonic in the ratio, because both formed two groups where 0.2 formed one; nothing in
    # that says dropping replay is safe on dissimilar sequences. Untuned: G_max 3 (the low end
    # of the reconstruction's 3-5, the smallest bank) and the flattened similarity (one
    # decision per task, as the paper groups whole adapters).
    ham_max_groups: int = Field(3, ge=1, le=64)
    ham_group_threshold: float = Field(0.1, ge=-1, le=1)
    ham_group_similarity: GroupSimilarity = "flat"
    ham_prune_keep_ratio: float = Field(0.5, gt=0, le=1)
    ham_rank_cap: int = Field(16, ge=0, le=4096)
    ham_replay_ratio: float = Field(0.2, ge=0, le=10)
    # The trainer runs at a lower CPU priority (nice) so that serving keeps its share on a
    # small box; 0 leaves it at the inference worker's priority.
    trainer_nice: int = Field(10, ge=0, le=19)
    # Torch threads of the trainer alone (0: as torch_threads).
    trainer_torch_threads: int = Field(0, ge=0)
    lease_ttl_s: float = Field(30.0, gt=1)
    job_max_attempts: int = Field(3, ge=1)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value
