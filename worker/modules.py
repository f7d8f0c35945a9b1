"""Adapter modules (bottleneck, LoRA, sparse): their parts, parameters, serialisation and content
ids."""

from __future__ import annotations

import hashlib
import json
import warnings

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from adapters_store.module_config import (
    BottleneckConfig,
    HamConfig,
    LoraConfig,
    ModuleConfig,
    ModuleKind,
    SparseConfig,
    config_kind,
)

# Stored tensor names of a sparse part: flat int32 indices into the (out, in) matrix, ascending,
# the kept values, and (merged modules only) how many experts changed each kept entry, so a
# later merge can extend an overlap-aware mean exactly.
SPARSE_INDICES, SPARSE_VALUES, SPARSE_COUNTS = "indices", "values", "counts"


class BottleneckPart(nn.Module):
    """Houlsby adapter a(y) = y + up(swish(down(y))), applied to a sublayer's output."""

    def __init__(self, hidden: int, size: int) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.up = nn.Linear(size, hidden)
        self.act = nn.SiLU()
        # Near-identity start so a fresh module barely perturbs the frozen base (Houlsby et al.).
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.normal_(self.up.weight, std=1e-2)
        nn.init.zeros_(self.up.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.up(self.act(self.down(y)))


class LoraPart(nn.Module):
    """LoRA delta B·A·x·(alpha/r) on one projection (peft's initialisation: A random, B zero);
    with ``gain`` (HAM) also times a learnable scalar α, initialised to 1."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float,
                 gain: bool = False) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=5**0.5)
        self.scale = alpha / rank
        self.gain = nn.Parameter(torch.ones(())) if gain else None

    def effective_scale(self) -> float:
        """alpha/r (times α): what the batched serving path multiplies each row's delta by."""
        return self.scale if self.gain is None else self.scale * float(self.gain.detach())

    def delta(self) -> torch.Tensor:
        """The dense ΔW = scale (· α) · B·A this part adds to its projection's weight."""
        out = self.lora_B @ self.lora_A * self.scale
        return out if self.gain is None else out * self.gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale
        return out if self.gain is None else out * self.gain


class SparsePart(nn.Module):
    """A trainable ΔW with a binary mask on one projection: y = x·(M⊙ΔW)ᵀ, added to W0·x.

    The product with M makes the gradient outside the mask exactly zero with no hook. While
    ``probe`` is on, the forward uses a detached copy of M⊙ΔW as a leaf, so one backward gives
    ∂L/∂W_eff for every entry (masked or not): what mask selection scores.
    """

    def __init__(self, out_features: int, in_features: int) -> None:
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(out_features, in_features))
        self.register_buffer("mask", torch.ones(out_features, in_features, dtype=torch.bool))
        self.probe = False
        self.probed: torch.Tensor | None = None

    def effective(self) -> torch.Tensor:
        return self.delta * self.mask.to(self.delta.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.effective()
        if self.probe:
            weight = weight.detach().requires_grad_(True)
            self.probed = weight
        return nn.functional.linear(x.to(weight.dtype), weight).to(x.dtype)

    def compact(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat int32 indices of the kept entries, ascending; their fp32 values)."""
        index = self.mask.flatten().nonzero().squeeze(1)
        values = self.delta.detach().flatten().index_select(0, index)
        return index.to("cpu", torch.int32), values.to("cpu", torch.float32)


class SparseDelta(nn.Module):
    """A stored sparse ΔW, served as a CSR matrix: y = (ΔW · xᵀ)ᵀ.

    Measured on 2 CPU cores (MiniLM 384×384, 5% kept, fp32; benchmarks/sparse_forms.py): a CSR
    sparse·dense product took 0.4-0.9x the time of the dense F.linear with a cached dense ΔW
    (1,124 vs 2,712 µs at 1,600 tokens, 97 vs 141 µs at 50), and a gather of the kept columns
    with index_add took 20-26x. CSR also keeps a loaded module at its stored size instead of
    the dense matrix (1,000 tasks × 6 layers × q,k,v would be 10.6 GB dense). The delta is
    applied in fp32 (as mttl does) whatever the serving dtype.
    """

    def __init__(self, out_features: int, in_features: int, indices: torch.Tensor,
                 values: torch.Tensor, counts: torch.Tensor | None = None) -> None:
        super().__init__()
        numel = out_features * in_features
        if indices.dim() != 1 or indices.shape != values.shape:
            raise ValueError("sparse part: indices and values must be equal-length vectors")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= numel):
            raise ValueError("sparse part: an index lies outside the matrix")
        if indices.numel() > 1 and not bool((indices[1:] > indices[:-1]).all()):
            raise ValueError("sparse part: indices must be strictly ascending")
        if counts is not None and counts.shape != indices.shape:
            raise ValueError("sparse part: counts must match indices")
        self.shape = (out_features, in_features)
        self.register_buffer("indices", indices.to(torch.int32))
        self.register_buffer("values", values.to(torch.float32))
        self.register_buffer("counts", None if counts is None else counts.to(torch.int32))
        self._csr: torch.Tensor | None = None

    def csr(self) -> torch.Tensor:
        values = self.values.float()
        if self._csr is None or self._csr.device != values.device:
            self._csr = self._build_csr(values)
        return self._csr

    def _build_csr(self, values: torch.Tensor) -> torch.Tensor:
        # A normal tensor even when first built under inference_mode, so a later forward with
        # autograd on (evaluation inside training) can use the same cache.
        with torch.inference_mode(False), torch.no_grad():
            arrays = sparse_csr_arrays(self.indices, values, self.shape)
            return csr_matrix(arrays["crow"], arrays["col"].to(torch.int32), arrays["val"],
                              self.shape)

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 - nn.Module's signature
        self._csr = None  # rebuilt on the new device at the next forward
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return csr_product(self.csr(), x)

    def compact(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.indices.cpu(), self.values.detach().to("cpu", torch.float32)

    def dense(self) -> torch.Tensor:
        flat = torch.zeros(self.shape[0] * self.shape[1], device=self.values.device)
        return flat.index_put_((self.indices.long(),), self.values.float()).view(self.shape)


def sparse_csr_arrays(indices: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]
                      ) -> dict[str, torch.Tensor]:
    """A stored sparse part (ascending flat indices into ``shape``, values) as CSR's arrays:
    int32 row pointers, columns in int16 where the matrix is at most 32,768 wide (the caller
    widens them to int32 for a product), fp32 values."""
    index = indices.long()
    per_row = torch.bincount(index // shape[1], minlength=shape[0])
    crow = torch.zeros(shape[0] + 1, dtype=torch.int32, device=index.device)
    crow[1:] = per_row.cumsum(0)
    col_dtype = torch.int16 if shape[1] <= torch.iinfo(torch.int16).max + 1 else torch.int32
    return {"crow": crow, "col": (index % shape[1]).to(col_dtype),
            "val": values.to(torch.float32)}


def csr_matrix(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
               shape: tuple[int, int]) -> torch.Tensor:
    """A CSR matrix over arrays built here (checked indices, ascending): no re-check. int32
    indices, as MKL takes them (int64 ones it converts on every call: measured on 2 CPU cores,
    50 tokens of MiniLM at 5% kept, 574 µs against 143)."""
    with warnings.catch_warnings():  # "CSR support is in beta": measured and tested
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def csr_product(csr: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """ΔW·x for every token of ``x``, in fp32 (as mttl applies it) whatever x's dtype."""
    flat = x.reshape(-1, x.shape[-1]).to(torch.float32)
    out = torch.sparse.mm(csr, flat.t().contiguous()).t()
    return out.reshape(*x.shape[:-1], csr.shape[0]).to(x.dtype)


class AdapterModule(nn.Module):
    """One module at one layer: a named part per site (attn/ffn, LoRA or sparse targets).

    A sparse module built from a config trains (``SparsePart``); one built from stored tensors
    serves (``SparseDelta``), so a loaded bank never holds dense ΔW matrices.
    """

    def __init__(self, layer: int, config: ModuleConfig,
                 stored: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.layer = layer
        self.config = config
        parts: dict[str, nn.Module] = {}
        if isinstance(config, BottleneckConfig):
            for name in ("attn", "ffn"):
                parts[name] = BottleneckPart(config.hidden, config.size)
        elif isinstance(config, LoraConfig):  # HamConfig too: LoRA with a gain
            for name in config.targets:
                parts[name] = LoraPart(config.hidden, config.hidden, config.rank, config.alpha,
                                       gain=isinstance(config, HamConfig))
        elif isinstance(config, SparseConfig):
            for name in config.targets:
                out_f, in_f = config.shape(name)
                parts[name] = SparsePart(out_f, in_f) if stored is None else SparseDelta(
                    out_f, in_f, *_stored_part(stored, name))
        else:
            raise TypeError(f"unknown module config {type(config).__name__}")
        self.parts = nn.ModuleDict(parts)

    @property
    def kind(self) -> ModuleKind:
        return config_kind(self.config)

    @property
    def num_params(self) -> int:
        """Stored values: a sparse module counts its kept entries, not its dense shape."""
        return sum(v.numel() for k, v in self.tensors().items()
                   if not k.endswith((SPARSE_INDICES, SPARSE_COUNTS)))

    def tensors(self) -> dict[str, torch.Tensor]:
        if not isinstance(self.config, SparseConfig):
            return {k: v.detach().to("cpu", torch.float32).contiguous()
                    for k, v in self.state_dict().items()}
        out: dict[str, torch.Tensor] = {}
        for name, part in self.parts.items():
            index, values = part.compact()
            out[f"parts.{name}.{SPARSE_INDICES}"] = index.contiguous()
            out[f"parts.{name}.{SPARSE_VALUES}"] = values.contiguous()
            counts = getattr(part, "counts", None)
            if counts is not None:
                out[f"parts.{name}.{SPARSE_COUNTS}"] = counts.to("cpu", torch.int32).contiguous()
        return out

    def content_id(self) -> str:
        """sha256 over the spec and each tensor's name, shape and bytes: same content, same id."""
        h = hashlib.sha256()
        spec = {"kind": self.kind, "layer": self.layer, "config": self.config.model_dump()}
        h.update(json.dumps(spec, sort_keys=True).encode())
        for name, t in sorted(self.tensors().items()):
            h.update(f"\0{name}\0{tuple(t.shape)}\0".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()

    def to_bytes(self) -> bytes:
        # One metadata key: safetensors writes several in hash order, so the same module would
        # get different bytes (and blob digests) in different processes.
        spec = json.dumps({"kind": self.kind, "layer": self.layer}, sort_keys=True)
        return st_save(self.tensors(), metadata={"adapterd": spec})

    @classmethod
    def from_bytes(cls, layer: int, config: ModuleConfig, data: bytes) -> AdapterModule:
        tensors = st_load(data)
        if isinstance(config, SparseConfig):
            module = cls(layer, config, stored=tensors)
            unknown = tensors.keys() - module.tensors().keys()
            if unknown:
                raise ValueError(f"sparse module: unexpected tensors {sorted(unknown)}")
            return module
        module = cls(layer, config)
        module.load_state_dict(tensors, strict=True)
        return module


def _stored_part(stored: dict[str, torch.Tensor], name: str
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    try:
        index = stored[f"parts.{name}.{SPARSE_INDICES}"]
        values = stored[f"parts.{name}.{SPARSE_VALUES}"]
    except KeyError as exc:
        raise ValueError(f"sparse module: missing tensor {exc.args[0]}") from None
    return index, values, stored.get(f"parts.{name}.{SPARSE_COUNTS}")


def planned_params(config: ModuleConfig) -> int:
    """Stored values of one trained module of ``config`` (a sparse one keeps its ratio)."""
    if isinstance(config, SparseConfig):
        return sum(kept_entries(config.keep_ratio, o * i) for o, i in
                   map(config.shape, config.targets))
    return AdapterModule(0, config).num_params


def kept_entries(keep_ratio: float, numel: int) -> int:
    return max(1, min(numel, round(keep_ratio * numel)))


def head_to_bytes(head: nn.Linear) -> bytes:
    return st_save({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()})


def head_from_bytes(data: bytes) -> nn.Linear:
    tensors = st_load(data)
    out_features, in_features = tensors["weight"].shape
    head = nn.Linear(in_features, out_features)
    head.load_state_dict(tensors, strict=True)
    return head
