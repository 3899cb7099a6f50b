"""MoRAM's adapter files: :func:`save_atoms` / :func:`load_atoms` are the one adapter format of every method.

They are :func:`moram.adapters.save_adapters` / :func:`moram.adapters.load_adapters` (see
:mod:`moram.adapters.files` for the layout); folders written by ``save_atoms`` of moram 0.2
(``atoms.json`` / ``atoms.safetensors``) still load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from moram.adapters.files import (
    LAYOUTS,
    apply_layouts,
    load_adapters,
    model_layouts,
    read_adapter_config,
    save_adapters,
)
from moram.atoms.config import AtomConfig, MoRAMConfig
from moram.errors import AdapterFileError

__all__ = ["LAYOUTS", "apply_layouts", "load_atoms", "model_layouts", "read_atom_config", "save_atoms"]


def save_atoms(model: nn.Module, directory: str | Path, config: AtomConfig | None = None) -> Path:
    """Write the adapters of ``model`` to ``directory`` (:func:`moram.adapters.save_adapters`).

    ``config``: the AtomConfig the model was injected with; only its ``seed`` is recorded (the layers
    carry everything else).
    """
    return save_adapters(model, directory, seed=None if config is None else config.seed)


def load_atoms(model: nn.Module, directory: str | Path) -> list[str]:
    """Load an adapter folder into ``model`` (:func:`moram.adapters.load_adapters`); returns the layer names.

    Example (a folder a ``moram fit`` run exported after its last task)::

        model, tokenizer = moram.backbones.clip.build_clip(model_config="moram-tiny-minilm", pretrained="packaged")
        moram.load_atoms(model, "lightning_logs/version_0/adapters/task4-digits_8-9")
    """
    return load_adapters(model, directory)


def read_atom_config(directory: str | Path) -> tuple[AtomConfig, dict[str, dict[str, Any]]]:
    """The AtomConfig (MoRAM's options, capacity, seed, the file's layers as targets) and per-layer metadata."""
    sidecar = read_adapter_config(directory)
    from moram.adapters.method import method_from_dict

    method = method_from_dict(sidecar["method"])
    if not isinstance(method, MoRAMConfig):
        raise AdapterFileError(f"'{directory}' holds {type(method).__name__} adapters, not MoRAM's atoms")
    config = AtomConfig.from_method(method, max_tasks=int(sidecar["max_tasks"]), targets=list(sidecar["layers"]),
                                    seed=int(sidecar.get("seed") or 0))
    return config, sidecar["layers"]


def read_layouts(directory: str | Path) -> list[str]:
    """The ``layouts`` an adapter folder records (none for files written before they were recorded)."""
    return list(read_adapter_config(directory).get("layouts", []))
