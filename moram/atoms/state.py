"""Adapter-only files: ship just the memory (safetensors + a JSON sidecar).

Layout of a directory written by :func:`save_atoms`::

    atoms.safetensors   "<layer>.frozen_keys" (n, d_in), "<layer>.frozen_values" (n, d_out),
                        "<layer>.current_keys" (r, d_in), "<layer>.current_values" (r, d_out)
    atoms.json          {"format": "moram-atoms", "version": 1, "config": {AtomConfig},
                         "layers": {"<layer>": {"in_features", "out_features", "num_frozen", "current_live"}}}

Layer names are relative to the model passed in, with wrapper prefixes removed, so files written
from a DDP-, FSDP- or compile-wrapped model load into a plain one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moram.atoms.bank import AtomBank, AtomStateError
from moram.atoms.config import AtomConfig
from moram.atoms.inject import atom_layers, inject_atoms
from moram.distributed import assign_full, full_value

WEIGHTS_NAME = "atoms.safetensors"
CONFIG_NAME = "atoms.json"
FORMAT = "moram-atoms"
VERSION = 1


def save_atoms(model: nn.Module, directory: str | Path, config: AtomConfig) -> Path:
    """Write the atoms of every routed layer of ``model`` to ``directory``; returns the directory."""
    from safetensors.torch import save_file

    layers = atom_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no routed layers; call inject_atoms first")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, dict[str, Any]] = {}
    for name, layer in layers:
        bank = layer.bank
        n = bank.num_frozen_atoms
        tensors[f"{name}.frozen_keys"] = bank.frozen_keys[:n]
        tensors[f"{name}.frozen_values"] = bank.frozen_values[:n]
        tensors[f"{name}.current_keys"] = full_value(bank.current_keys)
        tensors[f"{name}.current_values"] = full_value(bank.current_values)
        meta[name] = {
            "in_features": bank.in_features,
            "out_features": bank.out_features,
            "num_frozen": n,
            "current_live": bool(bank.current_live),
        }
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(out / WEIGHTS_NAME))
    sidecar = {"format": FORMAT, "version": VERSION, "config": config.to_dict(), "layers": meta}
    (out / CONFIG_NAME).write_text(json.dumps(sidecar, indent=2) + "\n")
    return out


def read_atom_config(directory: str | Path) -> tuple[AtomConfig, dict[str, dict[str, Any]]]:
    """The AtomConfig and per-layer metadata of an adapter directory."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in '{directory}': not a directory written by moram.save_atoms")
    sidecar = json.loads(path.read_text())
    if sidecar.get("format") != FORMAT or sidecar.get("version") != VERSION:
        raise AtomStateError(
            f"'{path}' is not a {FORMAT} v{VERSION} file (format={sidecar.get('format')!r}, "
            f"version={sidecar.get('version')!r})"
        )
    return AtomConfig.from_dict(sidecar["config"]), sidecar["layers"]


def _check_bank(name: str, bank: AtomBank, config: AtomConfig, info: dict[str, Any]) -> None:
    expected = {
        "rank": (config.rank, bank.rank),
        "top_k": (config.top_k, bank.top_k),
        "temperature": (config.temperature, bank.temperature),
        "scale": (config.scale, bank.scale),
        "signed_scores": (config.signed_scores, bank.signed_scores),
        "in_features": (info["in_features"], bank.in_features),
        "out_features": (info["out_features"], bank.out_features),
    }
    diff = {k: v for k, v in expected.items() if v[0] != v[1]}
    if diff:
        detail = ", ".join(f"{k}: file {a} vs model {b}" for k, (a, b) in diff.items())
        raise AtomStateError(f"atoms for layer '{name}' do not fit the model ({detail})")
    if info["num_frozen"] + bank.rank > bank.capacity:
        raise AtomStateError(
            f"layer '{name}' holds {info['num_frozen']} frozen atoms in the file but the model's bank "
            f"has room for {bank.capacity - bank.rank}; raise AtomConfig.max_tasks"
        )


def load_atoms(model: nn.Module, directory: str | Path) -> list[str]:
    """Load an adapter directory into ``model``; returns the loaded layer names.

    A model without routed layers gets them first, injected with the file's AtomConfig into
    exactly the file's layers. The model's capacity may be larger than the file's (to keep
    learning); every other setting must match, and the layer sets must be equal.
    """
    from safetensors.torch import load_file

    config, meta = read_atom_config(directory)
    if not atom_layers(model):
        inject_atoms(model, config, targets=list(meta))
    layers = dict(atom_layers(model))
    if set(layers) != set(meta):
        only_file = sorted(set(meta) - set(layers))
        only_model = sorted(set(layers) - set(meta))
        raise AtomStateError(
            f"the adapter in '{directory}' does not cover the same layers as the model: "
            f"only in the file {only_file[:5]}{'...' if len(only_file) > 5 else ''}, "
            f"only in the model {only_model[:5]}{'...' if len(only_model) > 5 else ''}"
        )
    tensors = load_file(str(Path(directory) / WEIGHTS_NAME))
    for name, layer in layers.items():
        bank, info = layer.bank, meta[name]
        _check_bank(name, bank, config, info)
        n = info["num_frozen"]
        with torch.no_grad():
            bank.frozen_keys.zero_()
            bank.frozen_values.zero_()
            bank.frozen_keys[:n].copy_(tensors[f"{name}.frozen_keys"])
            bank.frozen_values[:n].copy_(tensors[f"{name}.frozen_values"])
            assign_full(bank.current_keys, tensors[f"{name}.current_keys"])
            assign_full(bank.current_values, tensors[f"{name}.current_values"])
            bank.num_frozen.fill_(n)
            bank.current_live.fill_(bool(info["current_live"]))
            layer.tasks_done.fill_(n // bank.rank)
        bank.sync_from_state()
        layer.sync_from_state()
    return list(layers)
