"""Reading a peft LoRA adapter (zip: adapter_config.json, adapter_model.safetensors,
head.safetensors, labels.json) into per-layer factors, with every check a user gets a 422 for.
Pure numpy: the API validates with it before anything is stored, and the trainer builds the
modules from the same result."""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load

from adapters_store.errors import InvalidInput
from adapters_store.model_families import family_of
from adapters_store.module_config import LORA_SITES

MEMBERS = {"adapter_config.json", "adapter_model.safetensors", "head.safetensors",
           "labels.json"}
OPTIONAL = {"README.txt", "README.md"}


@dataclass
class PeftAdapter:
    rank: int
    alpha: float
    targets: list[str]
    layers: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]]  # layer -> target -> (A, B)
    head_weight: np.ndarray
    head_bias: np.ndarray
    labels: list[str]


def _members(data: bytes, max_bytes: int) -> dict[str, bytes]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise InvalidInput("the adapter upload is not a zip file") from exc
    infos = {i.filename.rsplit("/", 1)[-1]: i for i in archive.infolist() if not i.is_dir()}
    unknown = sorted(set(infos) - MEMBERS - OPTIONAL)
    missing = sorted(MEMBERS - set(infos))
    if unknown or missing:
        raise InvalidInput("the zip must hold adapter_config.json, adapter_model.safetensors, "
                           "head.safetensors and labels.json (a pickled adapter_model.bin is "
                           "refused)", {"missing": missing, "unexpected": unknown})
    if sum(i.file_size for i in infos.values()) > max_bytes:  # a zip bomb stops here
        raise InvalidInput(f"the unpacked adapter is larger than {max_bytes} bytes "
                           "(ADAPTERD_MAX_UPLOAD_BYTES)")
    return {name: archive.read(info) for name, info in infos.items() if name in MEMBERS}


def _tensors(raw: bytes, what: str) -> dict[str, np.ndarray]:
    try:
        return st_load(raw)
    except (SafetensorError, ValueError) as exc:
        raise InvalidInput(f"{what} is not a valid safetensors file: {exc}") from exc


def read_peft_zip(data: bytes, family_name: str, num_layers: int, hidden: int,
                  max_bytes: int) -> PeftAdapter:
    files = _members(data, max_bytes)
    try:
        config = json.loads(files["adapter_config.json"])
        labels = json.loads(files["labels.json"])
    except ValueError as exc:
        raise InvalidInput(f"adapter_config.json or labels.json is not JSON: {exc}") from exc
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise InvalidInput("only peft LoRA adapters can be imported (peft_type LORA)")
    for key, allowed in (("bias", "none"), ("use_dora", False), ("use_rslora", False),
                         ("modules_to_save", None), ("fan_in_fan_out", False)):
        if config.get(key, allowed) not in (allowed, [] if allowed is None else allowed):
            raise InvalidInput(f"adapter_config.json: {key}={config.get(key)!r} is not "
                               f"supported (only {allowed!r})")
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or not 1 <= rank <= 1024 or not isinstance(alpha, int | float) \
            or alpha <= 0:
        raise InvalidInput("adapter_config.json needs r (1..1024) and lora_alpha > 0",
                           {"r": rank, "lora_alpha": alpha})
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise InvalidInput("per-module rank_pattern / alpha_pattern is not supported")
    if not isinstance(labels, list) or len(labels) < 2 or len(set(labels)) != len(labels) \
            or not all(isinstance(x, str) and x.strip() and len(x) <= 200 for x in labels):
        raise InvalidInput("labels.json must list at least 2 distinct label strings")
    family = family_of(family_name)
    paths = {family.sites[t].path: t for t in LORA_SITES}
    pattern = re.compile(rf"^base_model\.model\.{re.escape(family.layers)}\.(\d+)\."
                         rf"({'|'.join(map(re.escape, paths))})\.lora_([AB])\.weight$")
    layers: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    for key, value in _tensors(files["adapter_model.safetensors"], "adapter_model").items():
        m = pattern.match(key)
        if m is None:
            raise InvalidInput(f"adapter tensor {key!r} is not a LoRA factor of this base's "
                               f"query/key/value projections ({family.name})")
        layer = int(m.group(1))
        if layer >= num_layers:
            raise InvalidInput(f"the adapter has layer {layer}; the base has {num_layers}")
        layers.setdefault(layer, {}).setdefault(paths[m.group(2)], {})[m.group(3)] = value
    if not layers:
        raise InvalidInput("adapter_model.safetensors holds no LoRA factors")
    target_sets = {tuple(sorted(t)) for t in layers.values()}
    if len(target_sets) != 1:
        raise InvalidInput("every adapted layer must target the same projections")
    targets = list(target_sets.pop())
    out: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for layer, per_target in sorted(layers.items()):
        out[layer] = {}
        for target, ab in per_target.items():
            a, b = ab.get("A"), ab.get("B")
            if a is None or b is None or a.shape != (rank, hidden) or b.shape != (hidden, rank):
                raise InvalidInput(
                    f"layer {layer} {target}: expected lora_A {rank}x{hidden} and lora_B "
                    f"{hidden}x{rank} (r={rank}, hidden {hidden} of the base)",
                    {"lora_A": None if a is None else list(a.shape),
                     "lora_B": None if b is None else list(b.shape)})
            out[layer][target] = (a.astype(np.float32), b.astype(np.float32))
    head = _tensors(files["head.safetensors"], "head")
    weight, bias = head.get("weight"), head.get("bias")
    if weight is None or bias is None or weight.shape != (len(labels), hidden) \
            or bias.shape != (len(labels),):
        raise InvalidInput(f"head.safetensors needs weight {len(labels)}x{hidden} and bias "
                           f"{len(labels)} (one row per label in labels.json)")
    return PeftAdapter(rank=rank, alpha=float(alpha), targets=targets, layers=out,
                       head_weight=weight.astype(np.float32), head_bias=bias.astype(np.float32),
                       labels=labels)
