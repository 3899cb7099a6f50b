"""The atom bank's lifecycle and state (its numbers against the formula: tests/test_routing.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from moram import AtomConfig, AtomLinear, AtomStateError, consolidate_atoms, inject_atoms, routed_layers
from moram.atoms.routing import reference_delta


def make_layer(d_in=12, d_out=7, dtype=torch.float64, **cfg):
    torch.manual_seed(0)
    base = nn.Linear(d_in, d_out, dtype=dtype)
    layer = AtomLinear(base, d_in, d_out, AtomConfig(**cfg))
    layer.base.requires_grad_(False)
    return layer


def fill(layer: AtomLinear, gen: torch.Generator, tasks: int) -> None:
    """Train-like filling: give the current atoms random values, consolidate, repeat."""
    bank = layer
    for _ in range(tasks):
        with torch.no_grad():
            bank.current_values.normal_(generator=gen)
            bank.current_keys.normal_(generator=gen)
        layer.consolidate()
    with torch.no_grad():
        bank.current_values.normal_(generator=gen)


def test_fresh_layer_is_a_no_op_and_untrained_atoms_never_route():
    layer = make_layer(rank=3, top_k=3, max_tasks=3)
    x = torch.randn(4, 12, dtype=torch.float64)
    layer.eval()
    assert layer.num_routed == 0
    assert torch.equal(layer(x), layer.base(x))
    layer.train()
    assert torch.equal(layer(x), layer.base(x))  # values start at zero
    fill(layer, torch.Generator().manual_seed(3), tasks=1)
    layer.eval()
    # After consolidation the fresh current atoms (random keys, zero values) exist but, untrained,
    # take no part in routing at inference: output equals the frozen-only formula.
    assert not layer.uses_current
    frozen_only = layer.base(x) + reference_delta(
        x, layer.frozen_keys[:3], layer.frozen_values[:3], top_k=3, temperature=0.01, eps=AtomLinear.eps,
        threshold=0.2, scale=1.0,
    )
    torch.testing.assert_close(layer(x), frozen_only, rtol=1e-10, atol=1e-10)
    layer.train()
    layer(x)  # a forward alone changes nothing: the rule is state, not a side effect of forward
    layer.eval()
    assert not layer.uses_current
    assert not bool(layer.current_trained)
    layer.train()
    layer(x).sum().backward()  # a gradient reaching the current atoms brings them in
    layer.eval()
    assert layer.uses_current
    assert bool(layer.current_trained)
    assert layer.num_routed == 6


def test_dropout_applies_to_key_input_in_training_only():
    layer = make_layer(rank=2, top_k=2, max_tasks=2, dropout=0.5)
    with torch.no_grad():
        layer.current_values.normal_()
    x = torch.randn(64, 12, dtype=torch.float64)
    layer.train()
    torch.manual_seed(0)
    a = layer(x)
    torch.manual_seed(1)
    b = layer(x)
    assert not torch.allclose(a, b)
    layer.eval()
    assert torch.equal(layer(x), layer(x))


def test_consolidation_freezes_atoms_under_adamw_and_grows_counter():
    model = nn.Sequential(nn.Linear(12, 16), nn.GELU(), nn.Linear(16, 4))
    cfg = AtomConfig(rank=4, top_k=4, max_tasks=3, targets=["0", "2"])
    inject_atoms(model, cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.5)
    gen = torch.Generator().manual_seed(0)
    snapshots = []
    for task in range(3):
        if task:
            consolidate_atoms(model)
            for _, layer in routed_layers(model):
                assert layer.num_frozen_atoms == 4 * task
                assert torch.equal(layer.current_values, torch.zeros_like(layer.current_values))
                bound = 1 / math.sqrt(layer.in_features)  # Kaiming-uniform a=sqrt(5)
                assert layer.current_keys.abs().max() <= bound
                assert not torch.equal(layer.current_keys, layer.frozen_keys[4 * (task - 1):4 * task])
            snapshots.append([(layer.frozen_keys.clone(), layer.frozen_values.clone())
                              for _, layer in routed_layers(model)])
        for _ in range(20):
            x = torch.randn(16, 12, generator=gen)
            loss = model(x).pow(2).mean() + model(x).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        for done, snap in enumerate(snapshots, start=1):  # every earlier task's atoms are bit-identical
            for (keys, values), (_, layer) in zip(snap, routed_layers(model), strict=True):
                n = done * 4
                assert torch.equal(layer.frozen_keys[:n], keys[:n])
                assert torch.equal(layer.frozen_values[:n], values[:n])
    with pytest.raises(RuntimeError, match=r"layer '0'.*max_tasks=3.*at least 4"):
        consolidate_atoms(model)


def test_initialisation_is_deterministic_and_independent_of_global_rng():
    torch.manual_seed(0)
    a = AtomLinear(nn.Linear(10, 5), 10, 5, AtomConfig(rank=3, max_tasks=2), seed=7)
    torch.manual_seed(123)
    b = AtomLinear(nn.Linear(10, 5), 10, 5, AtomConfig(rank=3, max_tasks=2), seed=7)
    c = AtomLinear(nn.Linear(10, 5), 10, 5, AtomConfig(rank=3, max_tasks=2), seed=8)
    assert torch.equal(a.current_keys, b.current_keys)
    assert not torch.equal(a.current_keys, c.current_keys)
    a.consolidate()
    assert not torch.equal(a.current_keys, b.current_keys)  # each task draws its own atoms


def trained_model(max_tasks=3, rank=2, targets=("0", "2")):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    inject_atoms(model, AtomConfig(rank=rank, top_k=2, max_tasks=max_tasks, targets=list(targets)))
    gen = torch.Generator().manual_seed(5)
    for _name, layer in routed_layers(model):
        fill(layer, gen, tasks=1)
    model.train()
    model(torch.randn(2, 6))
    return model


def test_state_dict_round_trip_is_exact():
    model = trained_model()
    clone = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    inject_atoms(clone, AtomConfig(rank=2, top_k=2, max_tasks=3, targets=["0", "2"]))
    clone.load_state_dict(model.state_dict())
    for (_, a), (_, b) in zip(routed_layers(model), routed_layers(clone), strict=True):
        assert b.num_frozen_atoms == a.num_frozen_atoms == 2
        assert b.uses_current == a.uses_current
        assert torch.equal(a.keys, b.keys)
        assert torch.equal(a.values, b.values)
    x = torch.randn(5, 6)
    model.eval(), clone.eval()
    assert torch.equal(model(x), clone(x))


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (dict(rank=2, top_k=2, max_tasks=4), r"layer '0'.*max_tasks: checkpoint 3 vs model 4"),
        (dict(rank=3, top_k=2, max_tasks=3), r"layer '0'.*rank: checkpoint 2 vs model 3"),
        (dict(rank=2, top_k=2, max_tasks=3, temperature=0.5), r"temperature: checkpoint 0.01 vs model 0.5"),
    ],
)
def test_state_dict_from_other_setting_is_refused(cfg, message):
    model = trained_model()
    other = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    inject_atoms(other, AtomConfig(targets=["0", "2"], **cfg))
    with pytest.raises(AtomStateError, match=message):
        other.load_state_dict(model.state_dict())


def test_state_dict_with_other_targets_is_refused():
    model = trained_model()
    other = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    inject_atoms(other, AtomConfig(rank=2, top_k=2, max_tasks=3, targets=["0"]))
    with pytest.raises(RuntimeError, match=r"2\.current_keys"):
        other.load_state_dict(model.state_dict())


def test_injection_matching_errors_and_idempotence():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 4)))
    cfg = AtomConfig(rank=2, max_tasks=2, targets=["0", "re:2\\.\\d+"])
    assert inject_atoms(model, cfg) == ["0", "2.0"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert inject_atoms(model, cfg) == ["0", "2.0"]
    assert before.keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match=r"pattern\(s\) \['nope'\] matched no module"):
        inject_atoms(model, AtomConfig(max_tasks=2, targets=["nope"]))
    with pytest.raises(TypeError, match=r"module '1' .* ReLU"):
        inject_atoms(model, AtomConfig(max_tasks=2, targets=["1"]))
    with pytest.raises(ValueError, match="different setting"):
        inject_atoms(model, AtomConfig(rank=3, max_tasks=2, targets=["0"]))


@pytest.mark.parametrize(
    ("field", "value"),
    [("rank", 0), ("temperature", 0.0), ("dropout", 1.0), ("threshold", 1.5), ("max_tasks", 0)],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"AtomConfig.{field}"):
        AtomConfig(**{field: value})
