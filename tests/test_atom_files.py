"""Adapter-only files: save the memory alone and load it into a fresh or a wrapped model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from moram import AtomConfig, AtomStateError, inject_atoms, load_atoms, routed_layers, save_atoms


def base_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def trained(config):
    model = base_model()
    inject_atoms(model, config)
    gen = torch.Generator().manual_seed(1)
    for _, layer in routed_layers(model):
        with torch.no_grad():
            layer.current_values.normal_(generator=gen)
        layer.consolidate()
        with torch.no_grad():
            layer.current_values.normal_(generator=gen)
    for _, layer in routed_layers(model):
        layer.mark_trained()  # as a training step does: the current atoms take part at inference
    return model


CFG = AtomConfig(rank=2, top_k=2, max_tasks=3, targets=["0", "2"])


def test_round_trip_into_fresh_model_is_exact(tmp_path):
    model = trained(CFG)
    save_atoms(model, tmp_path, CFG)
    sidecar = json.loads((tmp_path / "adapters.json").read_text())  # one format for every method
    assert sidecar["method"] == {"class_path": "moram.atoms.config.MoRAMConfig", "init_args": CFG.method.options()}
    assert (sidecar["max_tasks"], sidecar["seed"]) == (3, 0)
    assert sidecar["layers"]["0"] == {"type": "AtomLinear", "task_index": 1, "in_features": 6, "out_features": 8}
    tensors = load_file(tmp_path / "adapters.safetensors")
    assert tensors["0.frozen_keys"].shape == (2, 6)  # only filled atoms are shipped
    assert bool(tensors["0.current_trained"])
    fresh = base_model()
    assert load_atoms(fresh, tmp_path) == ["0", "2"]  # injects with the file's config
    x = torch.randn(4, 6)
    model.eval(), fresh.eval()
    assert torch.equal(model(x), fresh(x))
    for (_, a), (_, b) in zip(routed_layers(model), routed_layers(fresh), strict=True):
        assert torch.equal(a.keys, b.keys)
        assert torch.equal(a.values, b.values)


def test_names_are_independent_of_wrapping(tmp_path):
    class Wrapper(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.module = inner  # the attribute name DDP uses

    model = trained(CFG)
    save_atoms(Wrapper(model), tmp_path, CFG)
    assert set(json.loads((tmp_path / "adapters.json").read_text())["layers"]) == {"0", "2"}


def test_larger_capacity_accepts_and_other_settings_are_refused(tmp_path):
    model = trained(CFG)
    save_atoms(model, tmp_path, CFG)
    bigger = base_model()
    inject_atoms(bigger, AtomConfig(rank=2, top_k=2, max_tasks=5, targets=["0", "2"]))
    load_atoms(bigger, tmp_path)
    assert routed_layers(bigger)[0][1].num_frozen_atoms == 2
    other = base_model()
    inject_atoms(other, AtomConfig(rank=2, top_k=3, max_tasks=3, targets=["0", "2"]))
    with pytest.raises(AtomStateError, match=r"layer '0': the file holds a AtomLinear with .*'top_k': 2.*'top_k': 3"):
        load_atoms(other, tmp_path)
    fewer = base_model()
    inject_atoms(fewer, AtomConfig(rank=2, top_k=2, max_tasks=3, targets=["0"]))
    with pytest.raises(AtomStateError, match=r"only in the file \['2'\]"):
        load_atoms(fewer, tmp_path)
    small = base_model()
    inject_atoms(small, AtomConfig(rank=2, top_k=2, max_tasks=1, targets=["0", "2"]))
    with pytest.raises(AtomStateError, match="raise model.max_tasks to at least 2"):
        load_atoms(small, tmp_path)


def test_missing_or_foreign_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapters.json"):
        load_atoms(base_model(), tmp_path)
    (tmp_path / "adapters.json").write_text(json.dumps({"format": "something-else"}))
    (tmp_path / "adapters.safetensors").write_bytes(b"")
    with pytest.raises(AtomStateError, match="is not a moram-adapters file"):
        load_atoms(base_model(), tmp_path)
