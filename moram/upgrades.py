"""Every path that reads what an older moram wrote, in one place (docs/design.md §3.8).

Files and settings of earlier versions keep loading; each function here rewrites one kind of old
content into today's form and is a no-op on current content:

* :func:`upgrade_layer_state` — a continual layer's state-dict entries (called by the layer base before
  loading, and by :func:`upgrade_model_state` for a whole checkpoint):

  - MoRAM before 0.3 kept its atoms in a ``bank`` submodule (``bank.current_keys``, ``bank.frozen_keys``,
    ..., ``bank.num_frozen``, ``bank.current_live``, ``bank.signature``): today they are the layer's
    per-task tensors (same layout), its task counter and ``current_trained``; the old signature is
    checked against the layer;
  - the LoRA store of 0.2 kept one slot per task (``frozen_A`` ``(max_tasks - 1, r, d_in)``); today the
    tasks' rows follow one another (``((max_tasks - 1)·r, d_in)``);
  - sequential LoRA before the one layer base: ``keys`` = ``lora_A``, ``values`` = ``lora_B``ᵀ;
  - the expert store before the one layer base: ``*_keys`` = ``*_A``, ``*_values`` = ``*_B``ᵀ, and its
    ``current_live`` flag is ``current_trained``;
  - state written before layers kept a task counter or the trained flag gets them.
* :func:`upgrade_hparams` — a checkpoint's module hyperparameters: moram 0.1's per-model modules
  (``CLIPContinualModule``, ``LMContinualModule``) become the composed module with a backbone plugin,
  and moram 0.2's ``atoms`` (MoRAM's options mixed with the run's capacity, targets and seed, used by
  every method) becomes ``method`` (MoRAM's config when the method was null) plus ``max_tasks``,
  ``targets`` and ``seed``.
* :func:`upgrade_method_spec` — a method ``class_path`` of an earlier version.
* :func:`upgrade_adapter_files` — adapter folders of earlier versions (``moram-atoms`` v1 written by
  ``save_atoms``, ``moram-adapters`` v1) in the one format of :mod:`moram.adapters.files`.
* :func:`stored_task_count` — the capacity of a checkpoint's layers, also for files that did not record it.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from moram.errors import StateError

if TYPE_CHECKING:
    from moram.adapters.layer import ContinualLinear

# ----------------------------------------------------------------------------------------- layer state

_FIXED_POINT = 1_000_000_000  # moram 0.2 stored the float settings of a bank's signature at this scale
_SIGNATURE_FIELDS = ("rank", "max_tasks", "in_features", "out_features", "top_k", "temperature", "scale",
                     "signed_scores")


def _rename(state: dict[str, Any], old: str, new: str, convert: Any = None) -> None:
    if old in state and new not in state:
        value = state.pop(old)
        state[new] = convert(value) if convert is not None else value


def upgrade_layer_state(layer: ContinualLinear, state: dict[str, Any], prefix: str) -> None:
    """Rewrite, in place, ``layer``'s entries (under ``prefix``) of a state dict written by an older moram."""
    from moram.atoms.linear import AtomLinear
    from moram.baselines.expert_store import ExpertStoreLinear, LoRAStoreLinear
    from moram.baselines.lora import LoRALinear

    if isinstance(layer, AtomLinear):
        _upgrade_atom_bank(layer, state, prefix)
    elif isinstance(layer, LoRALinear):
        _rename(state, prefix + "keys", prefix + "lora_A")
        _rename(state, prefix + "values", prefix + "lora_B", lambda v: v.T.contiguous())
    elif isinstance(layer, LoRAStoreLinear):
        if isinstance(layer, ExpertStoreLinear):  # before the one layer base
            _rename(state, prefix + "current_keys", prefix + "current_A")
            _rename(state, prefix + "frozen_keys", prefix + "frozen_A")
            _rename(state, prefix + "current_values", prefix + "current_B", lambda v: v.T.contiguous())
            _rename(state, prefix + "frozen_values", prefix + "frozen_B", lambda v: v.transpose(1, 2).contiguous())
        for name in ("frozen_A", "frozen_B"):  # 0.2 kept one slot per task: (max_tasks - 1, rows, cols)
            value = state.get(prefix + name)
            if isinstance(value, Tensor) and value.dim() == 3:
                state[prefix + name] = value.reshape(-1, value.shape[-1])
    _rename(state, prefix + "current_live", prefix + "current_trained")
    if _has_layer_entries(state, prefix):
        device = layer.tasks_done.device
        state.setdefault(prefix + "tasks_done", torch.zeros((), dtype=torch.long, device=device))
        state.setdefault(prefix + "current_trained", torch.zeros((), dtype=torch.bool, device=device))
        state.setdefault(prefix + "settings", layer.settings_record())  # written since 0.3: nothing to compare


def _has_layer_entries(state: dict[str, Any], prefix: str) -> bool:
    return any(k.startswith(prefix) and not k.startswith(prefix + "base.") for k in state)


def _upgrade_atom_bank(layer: Any, state: dict[str, Any], prefix: str) -> None:
    bank = prefix + "bank."
    if not any(k.startswith(bank) for k in state):
        return
    r = layer.rank
    signature = state.pop(bank + "signature", None)
    if isinstance(signature, Tensor) and signature.numel() == len(_SIGNATURE_FIELDS):
        stored = dict(zip(_SIGNATURE_FIELDS, signature.tolist(), strict=True))
        stored["temperature"] /= _FIXED_POINT
        stored["scale"] /= _FIXED_POINT
        mine = {"rank": r, "max_tasks": layer.max_tasks, "in_features": layer.in_features,
                "out_features": layer.out_features, "top_k": layer.top_k, "temperature": layer.temperature,
                "scale": layer.scale, "signed_scores": int(layer.signed_scores)}
        diff = {k: (stored[k], v) for k, v in mine.items() if abs(float(stored[k]) - float(v)) > 1e-9}
        if diff:
            detail = ", ".join(f"{k}: checkpoint {a} vs model {b}" for k, (a, b) in diff.items())
            raise StateError(
                f"the atoms of layer '{prefix.rstrip('.')}' do not fit the checkpoint ({detail}); build the "
                "model with the settings the checkpoint was trained with"
            )
    for name in ("current_keys", "current_values", "frozen_keys", "frozen_values"):
        _rename(state, bank + name, prefix + name)  # same layout: the finished tasks' atoms in bank order
    frozen = state.pop(bank + "num_frozen", None)
    if isinstance(frozen, Tensor):
        tasks = torch.div(frozen, r, rounding_mode="floor")
        done = state.setdefault(prefix + "tasks_done", tasks)
        if int(done) != int(tasks) or int(frozen) % r:
            raise StateError(
                f"the state holds {int(done)} finished tasks for layer '{prefix.rstrip('.')}' but {int(frozen)} "
                f"frozen atoms (rank {r}); the file is inconsistent"
            )
    _rename(state, bank + "current_live", prefix + "current_trained")


def upgrade_model_state(model: nn.Module, state: dict[str, Any]) -> None:
    """:func:`upgrade_layer_state` for every continual layer of ``model`` over a whole state dict (in place).

    ``state`` is keyed as ``model.state_dict()`` is (e.g. a checkpoint's ``state_dict`` for the
    LightningModule), so its keys can be checked against the model before loading.
    """
    from moram.adapters.layer import ContinualLinear

    for name, module in model.named_modules():
        if isinstance(module, ContinualLinear):
            upgrade_layer_state(module, state, f"{name}." if name else "")


# ----------------------------------------------------------------------------------------- hyperparameters

LEGACY_MODULES = {
    "moram.module.CLIPContinualModule": "moram.backbones.clip.CLIPBackbone",
    "moram.lm_module.LMContinualModule": "moram.backbones.lm.LMBackbone",
}
"""The LightningModules of moram 0.1 (one per kind of model), and the backbone plugin each became: the
plugin's constructor options were those modules' backbone options."""

METHOD_PATHS = {
    "moram.baselines.ZeroShot": "moram.baselines.ZeroShotConfig",
    "moram.baselines.SequentialLoRA": "moram.baselines.SequentialLoRAConfig",
    "moram.baselines.OLoRA": "moram.baselines.OLoRAConfig",
    "moram.baselines.MoELoRA": "moram.baselines.MoELoRAConfig",
    "moram.baselines.RankRExperts": "moram.baselines.RankRExpertsConfig",
    "moram.atoms.MoRAM": "moram.atoms.MoRAMConfig",
    "moram.MoRAM": "moram.atoms.MoRAMConfig",
}
"""Method class paths of moram 0.2 (short and ``.method.`` forms) and today's config classes."""

_RUN_OPTIONS = ("max_tasks", "targets", "seed")


def upgrade_method_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A ``{"class_path", "init_args"}`` method spec with an earlier version's class path mapped to today's."""
    path = str(spec.get("class_path", ""))
    short = path.replace(".method.", ".").replace(".inject.", ".")
    if short in METHOD_PATHS:
        return {**spec, "class_path": METHOD_PATHS[short]}
    return spec


def upgrade_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's module hyperparameters in today's form (see the module docstring); others unchanged.

    Example:
        >>> new = upgrade_hparams({"_class_path": "moram.module.CLIPContinualModule", "model_config": "m", "lr": 0.1})
        >>> new["_class_path"], new["lr"]
        ('moram.module.ContinualModule', 0.1)
        >>> new["backbone"]
        {'class_path': 'moram.backbones.clip.CLIPBackbone', 'init_args': {'model_config': 'm'}}
        >>> new = upgrade_hparams({"method": None, "atoms": {"rank": 4, "max_tasks": 3, "targets": None, "seed": 1}})
        >>> new["method"]["class_path"], new["method"]["init_args"]["rank"], new["max_tasks"], new["seed"]
        ('moram.atoms.MoRAMConfig', 4, 3, 1)
    """
    hparams = _upgrade_composed(hparams)
    if "atoms" in hparams:
        hparams = dict(hparams)
        atoms = hparams.pop("atoms")
        method = hparams.get("method")
        options = _atoms_dict(atoms)
        for key in _RUN_OPTIONS:
            if key in options and hparams.get(key) is None:
                hparams[key] = options[key]
        if method is None and options:
            from moram.atoms.config import MoRAMConfig

            fields = {f.name for f in dataclasses.fields(MoRAMConfig)}
            hparams["method"] = {"class_path": "moram.atoms.MoRAMConfig",
                                 "init_args": {k: v for k, v in options.items() if k in fields}}
    method = hparams.get("method")
    if isinstance(method, dict) and "class_path" in method:
        hparams["method"] = upgrade_method_spec(method)
    return hparams


def _atoms_dict(atoms: Any) -> dict[str, Any]:
    if atoms is None:
        return {}
    if isinstance(atoms, dict):
        return dict(atoms.get("init_args", atoms)) if "class_path" in atoms else dict(atoms)
    if dataclasses.is_dataclass(atoms) and not isinstance(atoms, type):
        return dataclasses.asdict(atoms)
    return dict(vars(atoms))


def _upgrade_composed(hparams: dict[str, Any]) -> dict[str, Any]:
    backbone = LEGACY_MODULES.get(str(hparams.get("_class_path")))
    if backbone is None:
        return hparams
    module, _, name = backbone.rpartition(".")
    options = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    shared = {k: v for k, v in hparams.items() if k not in options and k != "_class_path"}
    init_args = {k: hparams[k] for k in options if k in hparams}
    return {**shared, "backbone": {"class_path": backbone, "init_args": init_args},
            "_class_path": "moram.module.ContinualModule"}


def stored_task_count(checkpoint: dict[str, Any]) -> int | None:
    """The number of tasks the checkpoint's layers were built for (their capacity), or None if it does not say.

    Written as ``moram_checkpoint["max_tasks"]`` since moram 0.2; older files hold the task stream's
    state (its ``task_names``), which gives the same number when the capacity came from the stream.
    """
    info = checkpoint.get("moram_checkpoint")
    if isinstance(info, dict) and info.get("max_tasks") is not None:
        return int(info["max_tasks"])
    for value in checkpoint.values():
        if isinstance(value, dict) and isinstance(value.get("task_names"), list) and value["task_names"]:
            return len(value["task_names"])
    return None


# ----------------------------------------------------------------------------------------- adapter files


def upgrade_adapter_files(directory: Path, sidecar: dict[str, Any], tensors: dict[str, Tensor]) -> tuple[
        dict[str, Any], dict[str, Tensor]]:
    """The sidecar and tensors of an adapter folder of an earlier format, in today's (v2) form.

    * ``moram-atoms`` v1 (``atoms.json`` / ``atoms.safetensors``, MoRAM only): the AtomConfig becomes the
      method, capacity, targets and seed; the filled frozen atoms are laid into per-task slots.
    * ``moram-adapters`` v1 (any method, no method recorded): the layers' settings and types are kept;
      the method is read from the layer type and its settings.
    """
    fmt, version = sidecar.get("format"), sidecar.get("version")
    if fmt == "moram-atoms" and version == 1:
        return _from_atoms_v1(sidecar, tensors)
    if fmt == "moram-adapters" and version == 1:
        return _from_adapters_v1(sidecar, tensors)
    raise StateError(f"'{directory}' holds an adapter file of format {fmt!r} version {version!r}, unknown to this "
                     "moram version")


def _from_atoms_v1(sidecar: dict[str, Any], tensors: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    from moram.atoms.config import AtomConfig

    config = AtomConfig.from_dict(sidecar["config"])
    r, max_tasks = config.rank, int(config.max_tasks or 1)
    layers: dict[str, Any] = {}
    out: dict[str, Tensor] = {}
    for name, info in sidecar["layers"].items():
        n = int(info["num_frozen"])
        tasks = n // r
        layers[name] = {"type": "AtomLinear", "in_features": info["in_features"],
                        "out_features": info["out_features"], "task_index": tasks}
        for part in ("keys", "values"):  # filled frozen rows only: loading pads them to the model's slots
            out[f"{name}.frozen_{part}"] = tensors[f"{name}.frozen_{part}"][:n]
            out[f"{name}.current_{part}"] = tensors[f"{name}.current_{part}"]
        out[f"{name}.tasks_done"] = torch.tensor(tasks)
        out[f"{name}.current_trained"] = torch.tensor(bool(info["current_live"]))
    new = {"format": "moram-adapters", "version": 2, "method": config.method.to_dict(), "max_tasks": max_tasks,
           "seed": config.seed, "layers": layers, "layouts": sidecar.get("layouts", [])}
    return new, out


_V1_TYPES = {
    "LoRALinear": "moram.baselines.SequentialLoRAConfig",
    "OLoRALinear": "moram.baselines.OLoRAConfig",
    "MoELoRALinear": "moram.baselines.MoELoRAConfig",
    "ExpertBankLinear": "moram.baselines.RankRExpertsConfig",
    "AtomLinear": "moram.atoms.MoRAMConfig",
}


def _from_adapters_v1(sidecar: dict[str, Any], tensors: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    layers = sidecar["layers"]
    if not layers:
        raise StateError("the adapter file lists no layers")
    first = next(iter(layers.values()))
    settings = dict(first["settings"])
    max_tasks = int(settings.pop("max_tasks"))
    path = _V1_TYPES.get(first["type"])
    if path is None:
        raise StateError(f"the adapter file holds {first['type']} layers, which this moram cannot rebuild")
    module, _, cls_name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), cls_name)
    fields = {f.name for f in dataclasses.fields(cls)}
    method = cls(**{k: v for k, v in settings.items() if k in fields})
    new_layers = {name: {"type": info["type"], "task_index": info["task_index"]} for name, info in layers.items()}
    out = dict(tensors)  # old entry names are rewritten per layer by upgrade_layer_state when loading
    new = {"format": "moram-adapters", "version": 2, "method": method.to_dict(), "max_tasks": max_tasks,
           "seed": None, "layers": new_layers, "layouts": sidecar.get("layouts", [])}
    return new, out


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file as a dict; a :class:`~moram.errors.StateError` naming the file when it is not one."""
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise StateError(f"cannot read '{path}': {err}") from err
    if not isinstance(value, dict):
        raise StateError(f"'{path}' does not hold a JSON object")
    return value
