"""AtomUsageCallback: the routing matrix of a hand-built bank equals the one computed by hand."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch
from helpers import E, Host, hand_built_layer
from torch.utils.data import DataLoader, TensorDataset

from moram.callbacks.atom_usage import AtomUsageCallback, routing_matrix


def test_routing_matrix_of_a_hand_built_bank(tmp_path):
    # Task 1's images are e0: all weight on atom 0 (born in task 1; the other selected atom scores
    # 0 < delta and is gated off). Task 2's are e2 (atom 2 alone) and e0 + e2 (atoms 0 and 2, 1/2 each):
    # task 2's weight is 0.5 on task-1 atoms and 1.5 on task-2 atoms -> shares 0.25 / 0.75.
    task1 = TensorDataset(E[0].repeat(6, 1))
    task2 = TensorDataset(torch.stack([E[2], E[2], E[0] + E[2], E[0] + E[2]]))
    loaders = [DataLoader(task1, batch_size=4), DataLoader(task2, batch_size=3)]
    usage = AtomUsageCallback(output_dir=str(tmp_path))
    trainer = pl.Trainer(callbacks=[usage], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.validate(Host(hand_built_layer()), dataloaders=loaders)
    expected = [[1.0, 0.25], [0.0, 0.75]]
    torch.testing.assert_close(torch.tensor(usage.history["after_task1"]), torch.tensor(expected), atol=1e-6, rtol=0)
    report = json.loads((tmp_path / "atom_usage" / "after_task1.json").read_text())
    layer = report["layers"]["layer"]
    assert layer["selection_frequency"][0] == pytest.approx([1.0, 0.0, 0.0, 0.0])
    assert layer["selection_frequency"][1] == pytest.approx([0.5, 0.0, 1.0, 0.0])
    assert layer["mean_weight"][1] == pytest.approx([0.5, 0.0, 0.75, 0.0], abs=1e-6)
    assert report["unused_fraction"] == pytest.approx(0.5)  # atoms 1 and 3 never selected
    assert (tmp_path / "atom_usage" / "after_task1_routing.png").is_file()
    assert (tmp_path / "atom_usage" / "after_task1_selection.png").is_file()
    assert usage.history == usage.state_dict()["history"]


def test_routing_matrix_columns_sum_to_one():
    weight = torch.rand(3, 6)
    m = routing_matrix(weight, units_per_task=2)
    assert m.shape == (3, 3)
    torch.testing.assert_close(m.sum(0), torch.ones(3))


def test_hooks_do_not_change_the_output():
    layer = hand_built_layer()
    x = torch.randn(5, 7, 4)
    plain = layer(x)
    seen = []
    handle = layer.register_route_hook(seen.append)
    hooked = layer(x)
    handle.remove()
    assert torch.equal(plain, hooked)
    assert seen[0].shape == (5, 7, 4)
    assert bool((seen[0].sum(-1) <= 1 + 1e-6).all())  # softmax weights, some gated off by delta
    assert bool(((seen[0] > 0).sum(-1) <= 2).all())  # top-2
