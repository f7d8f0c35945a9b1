"""Per model family: where a transformer's layers are and which sublayer each adapter site wraps.

One table, keyed by ``config.model_type`` as peft keys its target-module map: a new family is one
entry here (and, for a tiny test config, one builder in base_model.py), not an edit elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# "post" transforms a sublayer's output before its residual and LayerNorm (Houlsby); "parallel"
# adds a low-rank delta computed from the projection's input (LoRA).
POST = "post"
PARALLEL = "parallel"
SiteMode = Literal["post", "parallel"]


@dataclass(frozen=True)
class Site:
    path: str  # dotted path of an nn.Linear inside one layer
    mode: SiteMode


@dataclass(frozen=True)
class Family:
    name: str
    layers: str  # dotted path of the ModuleList of layers inside the loaded model
    sites: dict[str, Site]
    inputs: tuple[str, ...]  # tokenizer outputs the model's forward takes
    load_kwargs: dict[str, Any]


_BERT_SITES = {
    "attn": Site("attention.output.dense", POST),
    "ffn": Site("output.dense", POST),
    "query": Site("attention.self.query", PARALLEL),
    "key": Site("attention.self.key", PARALLEL),
    "value": Site("attention.self.value", PARALLEL),
    # Sparse ΔW targets: the same Linears as attn/ffn, read as projections (a Linear may carry a
    # parallel delta and a post adapter at once; the delta applies first).
    "attn_out": Site("attention.output.dense", PARALLEL),
    "ffn_in": Site("intermediate.dense", PARALLEL),
    "ffn_out": Site("output.dense", PARALLEL),
}

FAMILIES: dict[str, Family] = {
    "bert": Family("bert", "encoder.layer", _BERT_SITES,
                   ("input_ids", "attention_mask", "token_type_ids"),
                   {"add_pooling_layer": False}),
    # RoBERTa and XLM-R share BERT's layer layout; they have one token type, so none is passed.
    "roberta": Family("roberta", "encoder.layer", _BERT_SITES,
                      ("input_ids", "attention_mask"), {"add_pooling_layer": False}),
    "xlm-roberta": Family("xlm-roberta", "encoder.layer", _BERT_SITES,
                          ("input_ids", "attention_mask"), {"add_pooling_layer": False}),
    "distilbert": Family("distilbert", "transformer.layer", {
        "attn": Site("attention.out_lin", POST),
        "ffn": Site("ffn.lin2", POST),
        "query": Site("attention.q_lin", PARALLEL),
        "key": Site("attention.k_lin", PARALLEL),
        "value": Site("attention.v_lin", PARALLEL),
        "attn_out": Site("attention.out_lin", PARALLEL),
        "ffn_in": Site("ffn.lin1", PARALLEL),
        "ffn_out": Site("ffn.lin2", PARALLEL),
    }, ("input_ids", "attention_mask"), {}),
    # Decoder families (GPT-2's fused Conv1D c_attn, Llama's q/k/v/o_proj and gate/up/down_proj)
    # need a causal-LM head and generation; they join this table with that work.
}


def family_of(model_type: str) -> Family:
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise ValueError(f"unsupported base model type {model_type!r}; supported: "
                         f"{sorted(FAMILIES)}") from None
