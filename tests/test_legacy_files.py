"""Files written before the one-layer-base restructure (tests/fixtures/pre_adapter_base) still load.

The fixture was written by ``tests/fixtures/pre_adapter_base/make_fixture.py`` with the code of
commit 40d3c1f: a 2-layer MLP adapted by MoRAM and by each baseline, trained over two tasks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import check_fixture_outputs, fixture_backbone
from torch import nn

from moram import AtomConfig, inject_atoms, load_atoms
from moram.baselines import MoELoRA, RankRExperts, SequentialLoRA

FIXTURE = Path(__file__).parent / "fixtures" / "pre_adapter_base"
EXPECTED = torch.load(FIXTURE / "expected.pt", weights_only=True)
CONFIG = AtomConfig(rank=2, top_k=2, max_tasks=3, targets=["0", "2"], threshold=None)
BASELINES = {
    "lora": SequentialLoRA(rank=2),
    "moe_lora": MoELoRA(rank=2),
    "experts": RankRExperts(rank=2, threshold=None),
}


backbone = fixture_backbone


def check(model: nn.Module, name: str) -> None:
    check_fixture_outputs(model, EXPECTED, name)


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
