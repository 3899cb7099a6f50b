"""Adapter files for every method: the continual layers' own state, without the frozen backbone.

Layout of a directory written by :func:`save_adapters`::

    adapters.safetensors   "<layer>.<entry>" for every state entry of every continual layer but its base
    adapters.json          {"format": "moram-adapters", "version": 1,
                            "layers": {"<layer>": {"type", "settings", "task_index"}}}

Layer names are relative to the model passed in, without wrapper prefixes, so a file written from a
DDP-, FSDP2- or compile-wrapped model loads into a plain one. Loading needs a model adapted by the
same method with the same settings (:meth:`~moram.adapters.layer.ContinualLinear.settings`); its
capacity (``max_tasks``) is part of the settings. MoRAM's compact format, which ships only the filled
atoms and can inject them into a plain model, is :func:`moram.save_atoms`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moram.adapters.layer import ContinualLinear
from moram.distributed import full_value
from moram.protocols import continual_layers

WEIGHTS_NAME = "adapters.safetensors"
CONFIG_NAME = "adapters.json"
FORMAT = "moram-adapters"
VERSION = 1


class AdapterFileError(ValueError):
    """An adapter file does not fit the model (layers, types or settings differ)."""


def _layers(model: nn.Module) -> dict[str, ContinualLinear]:
    layers = {name: layer for name, layer in continual_layers(model) if isinstance(layer, ContinualLinear)}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no continual layers; inject a method first")
    return layers


def _adapter_state(layer: ContinualLinear) -> dict[str, torch.Tensor]:
    """The layer's state without its frozen base layer, in full (gathered when sharded)."""
    return {k: full_value(v) for k, v in layer.state_dict().items() if not k.startswith("base.")}


def save_adapters(model: nn.Module, directory: str | Path) -> Path:
    """Write the state of every continual layer of ``model`` (not the backbone) to ``directory``.

    Example:
        >>> import tempfile
        >>> from moram.baselines import SequentialLoRA
        >>> model = nn.Sequential(nn.Linear(4, 3))
        >>> _ = SequentialLoRA(rank=2).inject(model, ["0"], max_tasks=2)
        >>> out = save_adapters(model, tempfile.mkdtemp())
        >>> sorted(p.name for p in out.iterdir())
        ['adapters.json', 'adapters.safetensors']
    """
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, dict[str, Any]] = {}
    for name, layer in _layers(model).items():
        for key, value in _adapter_state(layer).items():
            tensors[f"{name}.{key}"] = value.detach().cpu().contiguous()
        meta[name] = {"type": type(layer).__name__, "settings": layer.settings(), "task_index": layer.task_index}
    save_file(tensors, str(out / WEIGHTS_NAME))
    sidecar = {"format": FORMAT, "version": VERSION, "layers": meta}
    (out / CONFIG_NAME).write_text(json.dumps(sidecar, indent=2) + "\n")
    return out


def load_adapters(model: nn.Module, directory: str | Path) -> list[str]:
    """Load an adapter directory into ``model`` (adapted by the same method and settings); returns the layer names.

    Raises:
        AdapterFileError: when the file is not an adapter file, or its layers, layer types or
            settings differ from the model's (the message names the first difference).
    """
    from safetensors.torch import load_file

    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in '{directory}': not a directory written by save_adapters")
    sidecar = json.loads(path.read_text())
    if sidecar.get("format") != FORMAT or sidecar.get("version") != VERSION:
        raise AdapterFileError(f"'{path}' is not a {FORMAT} v{VERSION} file")
    meta: dict[str, dict[str, Any]] = sidecar["layers"]
    layers = _layers(model)
    if set(layers) != set(meta):
        only_file, only_model = sorted(set(meta) - set(layers)), sorted(set(layers) - set(meta))
        raise AdapterFileError(
            f"the adapters in '{directory}' do not cover the model's layers: only in the file {only_file[:5]}, "
            f"only in the model {only_model[:5]}"
        )
    for name, layer in layers.items():
        info = meta[name]
        # JSON has no tuples and no ints-vs-floats distinction worth trusting: compare JSON views
        mine = json.loads(json.dumps(layer.settings()))
        if info["type"] != type(layer).__name__ or info["settings"] != mine:
            raise AdapterFileError(
                f"layer '{name}': the file holds a {info['type']} with {info['settings']}, the model a "
                f"{type(layer).__name__} with {mine}; adapt the model with the method and settings of the file"
            )
    tensors = load_file(str(Path(directory) / WEIGHTS_NAME))
    for name, layer in layers.items():
        state = {key[len(name) + 1 :]: value for key, value in tensors.items() if key.startswith(name + ".")}
        own = _adapter_state(layer)
        if set(state) != set(own):
            differ = sorted(set(own) ^ set(state))
            raise AdapterFileError(f"layer '{name}': entries {differ} differ between file and model")
        with torch.no_grad():
            result = layer.load_state_dict(state, strict=False)
        if result.unexpected_keys or any(not k.startswith("base.") for k in result.missing_keys):
            raise AdapterFileError(f"layer '{name}': could not load {result}")
    return list(layers)
