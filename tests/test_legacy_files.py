"""Files written before the one-layer-base restructure (tests/fixtures/pre_adapter_base) still load.

The fixture was written by ``tests/fixtures/pre_adapter_base/make_fixture.py`` with the code of
commit 40d3c1f: a 2-layer MLP adapted by MoRAM and by each baseline, trained over two tasks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from moram import AtomConfig, continual_layers, inject_atoms, load_atoms
from moram.baselines import MoELoRA, RankRExperts, SequentialLoRA

FIXTURE = Path(__file__).parent / "fixtures" / "pre_adapter_base"
EXPECTED = torch.load(FIXTURE / "expected.pt", weights_only=True)
CONFIG = AtomConfig(rank=2, top_k=2, max_tasks=3, targets=["0", "2"], threshold=None)
BASELINES = {
    "lora": SequentialLoRA(rank=2),
    "moe_lora": MoELoRA(rank=2),
    "experts": RankRExperts(rank=2, threshold=None),
}


def backbone() -> nn.Module:
    torch.manual_seed(0)  # the fixture's backbone: the frozen weights are not in the adapter file
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4))


def check(model: nn.Module, name: str) -> None:
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(EXPECTED["x"]), EXPECTED[f"{name}_y"], rtol=1e-6, atol=1e-7)
    assert [layer.task_index for _, layer in continual_layers(model)] == [1, 1]


def test_old_moram_state_dict_loads_with_its_task_counter():
    model = backbone()
    inject_atoms(model, CONFIG)
    model.load_state_dict(torch.load(FIXTURE / "moram_state.pt", weights_only=True))  # strict: no key missing
    check(model, "moram")


def test_old_adapter_file_loads_into_a_plain_model():
    model = backbone()
    load_atoms(model, FIXTURE / "atoms_adapter")
    check(model, "moram")


@pytest.mark.parametrize("name", list(BASELINES))
def test_old_baseline_state_dicts_load_under_the_new_names(name):
    model = backbone()
    BASELINES[name].inject(model, ["0", "2"], max_tasks=3, seed=0)
    model.load_state_dict(torch.load(FIXTURE / f"{name}_state.pt", weights_only=True))
    check(model, name)
