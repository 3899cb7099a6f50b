"""Adapter files, one format for every method: the continual layers' state without the frozen backbone.

Layout of a folder written by :func:`save_adapters`::

    adapters.safetensors   "<layer>.<entry>" for every state entry of every continual layer but its base;
                           a per-task tensor's frozen slots only as far as they are filled
    adapters.json          {"format": "moram-adapters", "version": 2,
                            "method": {"class_path", "init_args"},   the method config
                            "max_tasks", "seed",                      the run-level settings
                            "layers": {"<layer>": {"type", "task_index", "in_features", "out_features"}},
                            "layouts": ["split_attention", ...]}

:func:`load_adapters` loads such a folder into a model adapted by the same method, or rebuilds the
adapted layers on a *plain* model first: the layout conversions the file records are applied
(open_clip's attention split into q/k/v/out linears, as training did: :data:`LAYOUTS`), then the
file's method is injected into exactly the file's layers. The model's capacity may be larger than
the file's (to keep learning); every other learnt setting must match.

Layer names are relative to the model passed in, without wrapper prefixes, so a file written from a
DDP-, FSDP2- or compile-wrapped model loads into a plain one. Folders of earlier versions (MoRAM's
``atoms.json`` of ``save_atoms``, ``moram-adapters`` v1) are read through :mod:`moram.upgrades`.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from moram.adapters.layer import SETTINGS_KEY, ContinualLinear
from moram.adapters.method import MethodConfig, method_from_dict
from moram.distributed import full_value
from moram.errors import AdapterFileError, DataNotFoundError
from moram.protocols import continual_layers

__all__ = ["AdapterFileError", "LAYOUTS", "load_adapters", "read_adapter_config", "save_adapters"]

WEIGHTS_NAME = "adapters.safetensors"
CONFIG_NAME = "adapters.json"
FORMAT = "moram-adapters"
VERSION = 2
OLD_NAMES = {"atoms.json": "atoms.safetensors"}  # MoRAM's folders of moram 0.2 (save_atoms)

LAYOUTS: dict[str, str] = {"split_attention": "moram.backbones.clip.attention.convert_attention"}
"""Layout conversions an adapter file may record, by name: the function that applies one to a plain model.

A module class made by a conversion says so with a ``moram_layout`` class attribute."""


def _layers(model: nn.Module) -> dict[str, ContinualLinear]:
    return {name: layer for name, layer in continual_layers(model) if isinstance(layer, ContinualLinear)}


def _adapter_state(layer: ContinualLinear, compact: bool) -> dict[str, Tensor]:
    """The layer's state without its frozen base layer, in full (gathered when sharded).

    ``compact``: a per-task tensor's frozen slots only as far as they are filled.
    """
    state = {k: full_value(v) for k, v in layer.state_dict().items()
             if not k.startswith("base.") and k != SETTINGS_KEY}  # the sidecar records the settings
    if compact:
        for name in layer.task_tensors:
            rows = state["current_" + name].shape[0]
            state["frozen_" + name] = state["frozen_" + name][: layer.task_index * rows]
    return state


def _method_of(layers: dict[str, ContinualLinear]) -> MethodConfig:
    configs = {id(layer.config): layer.config for layer in layers.values()}
    if len(configs) != 1 or None in configs.values():
        raise AdapterFileError("the model's continual layers do not share one method config; save them one by one")
    config = next(iter(configs.values()))
    assert isinstance(config, MethodConfig)
    return config


def model_layouts(model: nn.Module) -> list[str]:
    """The layout conversions ``model`` has been through (the ``moram_layout`` of its modules), sorted."""
    return sorted({str(m.moram_layout) for m in model.modules() if getattr(type(m), "moram_layout", None)})


def apply_layouts(model: nn.Module, layouts: list[str]) -> list[str]:
    """Apply to ``model`` the conversions of ``layouts`` it has not been through; returns those applied."""
    unknown = [name for name in layouts if name not in LAYOUTS]
    if unknown:
        raise AdapterFileError(f"the adapter file needs the model layout(s) {unknown}, unknown to this moram version")
    applied = [name for name in layouts if name not in model_layouts(model)]
    for name in applied:
        module, _, function = LAYOUTS[name].rpartition(".")
        getattr(importlib.import_module(module), function)(model)
    return applied


def save_adapters(model: nn.Module, directory: str | Path, *, seed: int | None = None) -> Path:
    """Write every continual layer of ``model`` (not the backbone) and its method to ``directory``.

    Args:
        model: a model adapted by one method (any wrapper).
        directory: the folder to write (created).
        seed: the run seed, recorded so a rebuilt model draws the same tensors for later tasks.

    Example:
        >>> import tempfile
        >>> from moram.baselines import SequentialLoRAConfig
        >>> model = nn.Sequential(nn.Linear(4, 3))
        >>> _ = SequentialLoRAConfig(rank=2).inject(model, ["0"], max_tasks=2)
        >>> out = save_adapters(model, tempfile.mkdtemp())
        >>> sorted(p.name for p in out.iterdir())
        ['adapters.json', 'adapters.safetensors']
    """
    from safetensors.torch import save_file

    layers = _layers(model)
    if not layers:
        raise AdapterFileError(f"{type(model).__name__} has no continual layers; inject a method first")
    method = _method_of(layers)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    meta: dict[str, dict[str, Any]] = {}
    for name, layer in layers.items():
        for key, value in _adapter_state(layer, compact=True).items():
            tensors[f"{name}.{key}"] = value.detach().cpu().contiguous()
        meta[name] = {"type": type(layer).__name__, "task_index": layer.task_index,
                      "in_features": layer.in_features, "out_features": layer.out_features}
    max_tasks = {layer.max_tasks for layer in layers.values()}
    save_file(tensors, str(out / WEIGHTS_NAME))
    sidecar = {"format": FORMAT, "version": VERSION, "method": method.to_dict(), "max_tasks": max(max_tasks),
               "seed": seed, "layers": meta, "layouts": model_layouts(model)}
    (out / CONFIG_NAME).write_text(json.dumps(sidecar, indent=2) + "\n")
    return out


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    """The sidecar of an adapter folder in today's form (folders of earlier versions are upgraded)."""
    return _read(Path(directory), tensors=False)[0]


def _read(folder: Path, tensors: bool) -> tuple[dict[str, Any], dict[str, Tensor]]:
    from safetensors.torch import load_file

    from moram.upgrades import read_json, upgrade_adapter_files

    names = [(CONFIG_NAME, WEIGHTS_NAME), *OLD_NAMES.items()]
    found = next(((c, w) for c, w in names if (folder / c).is_file()), None)
    if found is None:
        raise DataNotFoundError(
            f"no {CONFIG_NAME} in '{folder}': not a folder written by moram.save_adapters (or save_atoms)"
        )
    sidecar = read_json(folder / found[0])
    fmt, version = sidecar.get("format"), sidecar.get("version")
    if fmt not in (FORMAT, "moram-atoms"):
        raise AdapterFileError(
            f"'{folder / found[0]}' is not a {FORMAT} file (format={fmt!r}, version={version!r})"
        )
    if fmt == FORMAT and version == VERSION:
        return sidecar, load_file(str(folder / found[1])) if tensors else {}
    return upgrade_adapter_files(folder, sidecar, load_file(str(folder / found[1])))


def load_adapters(model: nn.Module, directory: str | Path) -> list[str]:
    """Load an adapter folder into ``model``, first adapting a plain model with the file's method; the layer names.

    Raises:
        FileNotFoundError: no adapter file in ``directory``.
        AdapterFileError: the file is not an adapter file, or its layers, method or learnt settings
            differ from the model's (the message names the first difference).
    """
    folder = Path(directory)
    sidecar, tensors = _read(folder, tensors=True)
    meta: dict[str, dict[str, Any]] = sidecar["layers"]
    method = method_from_dict(sidecar["method"])
    if not _layers(model):
        apply_layouts(model, list(sidecar.get("layouts", [])))
        missing = sorted(set(meta) - {name for name, _ in model.named_modules()})
        if missing:
            raise AdapterFileError(
                f"the adapter in '{folder}' adapts layers this model does not have ({missing[:3]}"
                f"{'...' if len(missing) > 3 else ''}): load it into the backbone it was trained on (the run's "
                "model.backbone options)"
            )
        method.inject(model, list(meta), max_tasks=int(sidecar["max_tasks"]), seed=int(sidecar.get("seed") or 0))
    layers = _layers(model)
    if set(layers) != set(meta):
        only_file, only_model = sorted(set(meta) - set(layers)), sorted(set(layers) - set(meta))
        raise AdapterFileError(
            f"the adapter in '{folder}' does not cover the model's layers: only in the file {only_file[:5]}"
            f"{'...' if len(only_file) > 5 else ''}, only in the model {only_model[:5]}"
            f"{'...' if len(only_model) > 5 else ''}"
        )
    for name, layer in layers.items():
        _check_layer(name, layer, method, meta[name], int(sidecar["max_tasks"]))
        state = {key[len(name) + 1 :]: value for key, value in tensors.items() if key.startswith(name + ".")}
        _load_layer(name, layer, state)
    return list(layers)


def _check_layer(name: str, layer: ContinualLinear, method: MethodConfig, info: dict[str, Any], max_tasks: int) -> None:
    mine = layer.config.learnt_options() if layer.config is not None else {}
    theirs = json.loads(json.dumps(method.learnt_options()))
    mine = json.loads(json.dumps(mine))  # JSON has no tuples and no ints-vs-floats distinction worth trusting
    if info["type"] != type(layer).__name__ or theirs != mine:
        raise AdapterFileError(
            f"layer '{name}': the file holds a {info['type']} with {theirs}, the model a {type(layer).__name__} "
            f"with {mine}; adapt the model with the method and settings of the file"
        )
    widths = (info.get("in_features", layer.in_features), info.get("out_features", layer.out_features))
    if widths != (layer.in_features, layer.out_features):
        raise AdapterFileError(f"layer '{name}': the file's widths {widths} differ from the model's "
                               f"{(layer.in_features, layer.out_features)}")
    if int(info["task_index"]) >= layer.max_tasks:
        raise AdapterFileError(
            f"layer '{name}' holds {info['task_index']} finished tasks in the file but the model's layer holds "
            f"{layer.max_tasks} tasks; raise model.max_tasks to at least {int(info['task_index']) + 1}"
        )
    if max_tasks > layer.max_tasks and not layer.task_tensors:
        raise AdapterFileError(f"layer '{name}': the file was written for {max_tasks} tasks, the model holds "
                               f"{layer.max_tasks}; build it with model.max_tasks={max_tasks}")


def _load_layer(name: str, layer: ContinualLinear, state: dict[str, Tensor]) -> None:
    from moram.upgrades import upgrade_layer_state

    upgrade_layer_state(layer, state, "")
    state.pop(SETTINGS_KEY, None)  # compared by _check_layer (a larger capacity is allowed there)
    own = _adapter_state(layer, compact=False)
    # A model of larger capacity: frozen slots as many as filled in the file, the rest empty; other
    # per-capacity tensors (MoE-LoRA's router rows) keep the model's own rows beyond the file's
    frozen = {"frozen_" + key for key in layer.task_tensors}
    for key, stored in list(state.items()):
        mine = own.get(key)
        if mine is None or stored.dim() == 0 or stored.shape[1:] != mine.shape[1:] or stored.shape[0] > mine.shape[0]:
            continue
        if stored.shape[0] < mine.shape[0] or key in frozen:
            merged = torch.zeros_like(mine) if key in frozen else mine.detach().clone()
            merged[: stored.shape[0]] = stored.to(mine.dtype)
            state[key] = merged
    if set(state) != set(own):
        differ = sorted(set(own) ^ set(state))
        raise AdapterFileError(f"layer '{name}': entries {differ} differ between file and model")
    with torch.no_grad():
        try:
            result = layer.load_state_dict(state, strict=False)
        except RuntimeError as err:
            raise AdapterFileError(f"layer '{name}': the file does not fit the model ({err})") from err
    if result.unexpected_keys or any(not k.startswith("base.") for k in result.missing_keys):
        raise AdapterFileError(f"layer '{name}': could not load {result}")
