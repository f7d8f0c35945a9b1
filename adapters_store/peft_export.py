"""A task's LoRA route in peft's on-disk format (adapter_config.json + adapter_model.safetensors,
zipped with the task's head and labels), built from the stored module files without torch."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from adapters_store.blobstore import Blobs
from adapters_store.errors import InvalidInput
from adapters_store.model_families import family_of
from adapters_store.module_config import HamConfig, LoraConfig
from adapters_store.records import BankManifest

EXPORTABLE = ("lora", "ham")


def peft_zip(manifest: BankManifest, task_id: str, blobs: Blobs) -> bytes:
    """The zip for ``task_id``'s live route; InvalidInput when the route is not LoRA-shaped.

    Every layer's module must be LoRA (or HAM, whose per-target gain is folded into B) with one
    rank, scale and target list; empty layers are left out through peft's
    ``layers_to_transform``. The head is not part of a peft adapter: it travels beside it
    (``head.safetensors`` with ``weight``/``bias``, ``labels.json`` in output order)."""
    route = manifest.routes[task_id]
    layers = [(i, m) for i, m in enumerate(route.layers) if m is not None]
    if not layers:
        raise InvalidInput(f"task {task_id!r} has no adapter modules to export")
    recs = [manifest.modules[m] for _, m in layers]
    kinds = sorted({r.kind for r in recs})
    if any(k not in EXPORTABLE for k in kinds):
        raise InvalidInput(f"task {task_id!r} uses {kinds} modules; peft export covers LoRA "
                           "routes (lora, ham)", {"kinds": kinds})
    shapes = {(r.config.rank, tuple(r.config.targets)) for r in recs  # type: ignore[union-attr]
              if isinstance(r.config, LoraConfig)}
    if len(shapes) != 1:
        raise InvalidInput("the route's LoRA modules differ in rank or targets; peft takes one "
                           "rank and target list per adapter", {"shapes": sorted(shapes)})
    rank, targets = shapes.pop()
    family = family_of(manifest.base.family)
    tensors: dict[str, np.ndarray] = {}
    for (layer, _), rec in zip(layers, recs, strict=True):
        stored = st_load(blobs.get(rec.blob))
        config = rec.config
        assert isinstance(config, LoraConfig)
        # peft's scale is lora_alpha / r, one for the adapter: fold each module's own scale (and
        # HAM's gain) into B and export with lora_alpha = r.
        for target in targets:
            scale = config.alpha / config.rank
            if isinstance(config, HamConfig):
                scale *= float(stored[f"parts.{target}.gain"])
            prefix = f"base_model.model.{family.layers}.{layer}.{family.sites[target].path}"
            tensors[f"{prefix}.lora_A.weight"] = stored[f"parts.{target}.lora_A"]
            tensors[f"{prefix}.lora_B.weight"] = (stored[f"parts.{target}.lora_B"]
                                                 * scale).astype(np.float32)
    config_json = {
        "peft_type": "LORA", "task_type": None, "r": rank, "lora_alpha": rank,
        "target_modules": sorted(targets), "lora_dropout": 0.0, "bias": "none",
        "fan_in_fan_out": False, "inference_mode": True, "modules_to_save": None,
        "layers_to_transform": None if len(layers) == len(route.layers)
        else [i for i, _ in layers],
        "layers_pattern": None if len(layers) == len(route.layers)
        else family.layers.rsplit(".", 1)[-1],
        "base_model_name_or_path": manifest.base.name,
    }
    head = st_load(blobs.get(route.head.blob))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("adapter_config.json", json.dumps(config_json, indent=1))
        zf.writestr("adapter_model.safetensors", st_save(tensors))
        zf.writestr("head.safetensors", st_save({k: v for k, v in head.items()}))
        zf.writestr("labels.json", json.dumps(route.head.labels))
        zf.writestr("README.txt", (
            f"Task {task_id} of bank {manifest.version}, base {manifest.base.name} "
            f"(fingerprint {manifest.base.fingerprint}).\n"
            "Load with peft.PeftModel.from_pretrained(base_model, this_folder); the task's "
            "prediction is softmax(head(mean-pooled last hidden state)), labels.json in order.\n"))
    return out.getvalue()
