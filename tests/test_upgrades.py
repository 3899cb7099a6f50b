"""Files of moram 0.2, written before methods were configs (tests/fixtures/pre_method_config), still load.

The fixture was written by ``tests/fixtures/pre_method_config/make.py`` with the code of commit c926e9a:
MoRAM's atoms in a ``bank`` submodule, the LoRA store with one slot per task, ``atoms.json`` and
``moram-adapters`` v1 folders, and two ``moram fit`` checkpoints whose hyperparameters hold ``atoms``.
Every rewrite they need lives in :mod:`moram.upgrades`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import check_fixture_outputs, fixture_backbone
from torch import nn

from moram import AtomConfig, MoRAMConfig, continual_layers, inject_atoms, load_adapters
from moram.baselines import MoELoRAConfig, OLoRAConfig, RankRExpertsConfig, SequentialLoRAConfig
from moram.checkpoint import checkpoint_hparams
from moram.cli import main
from moram.errors import StateError
from moram.upgrades import upgrade_hparams

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "pre_method_config"
EXPECTED = torch.load(FIXTURE / "expected.pt", weights_only=True)
CONFIG = AtomConfig(rank=2, top_k=2, max_tasks=3, targets=["0", "2"], threshold=None)
BASELINES = {
    "lora": SequentialLoRAConfig(rank=2),
    "olora": OLoRAConfig(rank=2),
    "moe_lora": MoELoRAConfig(rank=2),
    "experts": RankRExpertsConfig(rank=2, threshold=None),
}


backbone = fixture_backbone


def check(model: nn.Module, name: str) -> None:
    check_fixture_outputs(model, EXPECTED, name)


def test_a_moram_state_of_0_2_loads_strictly_with_its_counters_and_trained_flag():
    model = backbone()
    inject_atoms(model, CONFIG)
    stored = torch.load(FIXTURE / "moram_state.pt", weights_only=True)
    assert any(".bank." in k for k in stored)
    model.load_state_dict(stored)  # strict: every entry has its place after the rewrite
    check(model, "moram")
    assert all(layer.uses_current for _, layer in continual_layers(model))  # trained in the fixture


def test_a_moram_state_of_0_2_with_other_settings_is_refused_naming_them():
    model = backbone()
    inject_atoms(model, AtomConfig(rank=2, top_k=2, max_tasks=3, targets=["0", "2"], temperature=0.5))
    with pytest.raises(StateError, match=r"layer '0'.*temperature: checkpoint 0.01 vs model 0.5"):
        model.load_state_dict(torch.load(FIXTURE / "moram_state.pt", weights_only=True))


@pytest.mark.parametrize("name", list(BASELINES))
def test_baseline_states_of_0_2_load(name):
    model = backbone()
    BASELINES[name].inject(model, ["0", "2"], max_tasks=3, seed=0)
    model.load_state_dict(torch.load(FIXTURE / f"{name}_state.pt", weights_only=True))
    check(model, name)


@pytest.mark.parametrize(("folder", "name"), [("atoms_adapter", "moram"), ("moe_adapters", "moe_lora")])
def test_adapter_folders_of_0_2_rebuild_the_adapted_model_on_a_plain_backbone(folder, name):
    model = backbone()
    assert load_adapters(model, FIXTURE / folder) == ["0", "2"]
    check(model, name)


def test_hyperparameters_with_atoms_read_as_method_and_run_settings():
    clip = checkpoint_hparams(FIXTURE / "clip.ckpt")["init_args"]
    assert "atoms" not in clip
    assert clip["method"] == {"class_path": "moram.atoms.MoRAMConfig",
                              "init_args": {**MoRAMConfig(rank=2, top_k=2).options(), "reference": False}}
    assert (clip["max_tasks"], clip["targets"], clip["seed"]) == (None, None, 0)
    lm = checkpoint_hparams(FIXTURE / "lm.ckpt")["init_args"]
    assert lm["method"]["class_path"] == "moram.baselines.OLoRAConfig"
    assert lm["method"]["init_args"]["rank"] == 2
    assert lm["seed"] == 3  # the run seed lived in atoms
    assert upgrade_hparams(dict(lm)) == lm  # today's form is left as it is


#: moram 0.2's options and today's.
OPTIONS = {"--model.atoms.rank": "--model.method.rank", "--model.atoms.top_k": "--model.method.top_k",
           "--model.atoms.seed": "--model.seed", "moram.baselines.OLoRA": "moram.baselines.OLoRAConfig"}


@pytest.mark.parametrize("name", ["clip", "lm"])
def test_a_0_2_checkpoint_resumes_with_its_adapters_and_scores(tmp_path, monkeypatch, name):
    monkeypatch.chdir(ROOT)
    old = json.loads((FIXTURE / f"{name}_args.json").read_text())
    args = [OPTIONS.get(a, a) for a in old]
    checkpoint = FIXTURE / f"{name}.ckpt"
    stored = torch.load(checkpoint, weights_only=True)["state_dict"]
    cli = main(["validate", *args, "--ckpt_path", str(checkpoint), "--trainer.default_root_dir", str(tmp_path),
                "--trainer.enable_progress_bar", "false"])
    state = cli.model.state_dict()
    layers = continual_layers(cli.model.model)
    assert layers
    assert {layer.task_index for _, layer in layers} == {1}
    if name == "clip":  # the atoms moved out of the bank submodule, unchanged
        moved = [k for k in stored if k.endswith(("_keys", "_values"))]
        assert len(moved) == 4 * len(layers)
        for key in moved:
            assert torch.equal(state[key.replace(".bank.", ".")], stored[key]), key
        counters = [k for k in stored if k.endswith("num_frozen")]
        assert all(int(state[k.replace("bank.num_frozen", "tasks_done")]) * 2 == int(stored[k]) for k in counters)
    expected = json.loads((FIXTURE / f"{name}_metrics.json").read_text())
    scores = {k.removeprefix("eval/score/"): float(v) for k, v in cli.trainer.callback_metrics.items()
              if k.startswith("eval/score/")}
    assert [scores[t] for t in expected["task_names"]] == pytest.approx(expected["final_row"])


def test_a_0_2_checkpoint_loads_outside_a_trainer(monkeypatch):
    from moram.module import ContinualModule

    monkeypatch.chdir(ROOT)
    module = ContinualModule.load_from_checkpoint(FIXTURE / "lm.ckpt")
    assert type(module.method).__name__ == "OLoRAConfig"
    assert module.max_tasks == 2
    assert module.seed == 3
    assert {layer.task_index for _, layer in continual_layers(module.model)} == {1}
