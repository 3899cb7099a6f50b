"""Adapter-only files: ship just the memory (safetensors + a JSON sidecar).

Layout of a directory written by :func:`save_atoms`::

    atoms.safetensors   "<layer>.frozen_keys" (n, d_in), "<layer>.frozen_values" (n, d_out),
                        "<layer>.current_keys" (r, d_in), "<layer>.current_values" (r, d_out)
    atoms.json          {"format": "moram-atoms", "version": 1, "config": {AtomConfig},
                         "layers": {"<layer>": {"in_features", "out_features", "num_frozen", "current_live"}},
                         "layouts": ["split_attention", ...]}

``layouts`` names the conversions the model had been through before its layers were adapted (open_clip's
attention split into q/k/v/out linears: :data:`LAYOUTS`); :func:`load_atoms` applies them to a plain
model first, so an adapter folder loads into the backbone it was trained on in one call.

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

LAYOUTS: dict[str, str] = {"split_attention": "moram.backbones.clip.attention.convert_attention"}
"""Layout conversions an adapter file may record, by name: the function that applies one to a plain model.

A module class made by a conversion says so with a ``moram_layout`` class attribute."""

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
    sidecar = {"format": FORMAT, "version": VERSION, "config": config.to_dict(), "layers": meta,
               "layouts": model_layouts(model)}
    (out / CONFIG_NAME).write_text(json.dumps(sidecar, indent=2) + "\n")
    return out


def model_layouts(model: nn.Module) -> list[str]:
    """The layout conversions ``model`` has been through (the ``moram_layout`` of its modules), sorted."""
    return sorted({str(m.moram_layout) for m in model.modules() if getattr(type(m), "moram_layout", None)})


def apply_layouts(model: nn.Module, layouts: list[str]) -> list[str]:
    """Apply to ``model`` the conversions of ``layouts`` it has not been through; returns those applied."""
    import importlib

    unknown = [name for name in layouts if name not in LAYOUTS]
    if unknown:
        raise AtomStateError(f"the adapter file needs the model layout(s) {unknown}, unknown to this moram version")
    applied = [name for name in layouts if name not in model_layouts(model)]
    for name in applied:
        module, _, function = LAYOUTS[name].rpartition(".")
        getattr(importlib.import_module(module), function)(model)
    return applied


def read_layouts(directory: str | Path) -> list[str]:
    """The ``layouts`` an adapter folder records (none for files written before they were recorded)."""
    return list(json.loads((Path(directory) / CONFIG_NAME).read_text()).get("layouts", []))


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

    A model without routed layers gets them first: the layout conversions the file records are
    applied (open_clip's attention split into q/k/v/out linears, as training did), then atoms are
    injected with the file's AtomConfig into exactly the file's layers. The model's capacity may be
    larger than the file's (to keep learning); every other setting must match, and the layer sets
    must be equal.

    Example (a folder a ``moram fit`` run exported after its last task)::

        model, tokenizer = moram.backbones.clip.build_clip(model_config="moram-tiny-minilm", pretrained="packaged")
        moram.load_atoms(model, "lightning_logs/version_0/adapters/task4-digits_8-9")
    """
    from safetensors.torch import load_file

    config, meta = read_atom_config(directory)
    if not atom_layers(model):
        apply_layouts(model, read_layouts(directory))
        missing = sorted(set(meta) - {name for name, _ in model.named_modules()})
        if missing:
            raise AtomStateError(
                f"the adapter in '{directory}' adapts layers this model does not have ({missing[:3]}"
                f"{'...' if len(missing) > 3 else ''}): load it into the backbone it was trained on (the run's "
                "model.backbone options)"
            )
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
