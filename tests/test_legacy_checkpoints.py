"""Checkpoints of moram 0.1 (CLIPContinualModule / LMContinualModule, before the composed module) resume.

The fixture (tests/fixtures/pre_composed_module, written by its make.py with the code of commit
2e6e633) holds each run's last checkpoint, its command-line options in the old form, and the final
row of the accuracy matrix that run reported.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from moram.checkpoint import checkpoint_hparams
from moram.cli import main
from moram.protocols import continual_layers

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "pre_composed_module"
MOVED = ("model_config", "pretrained", "model", "config", "tokenizer", "max_new_tokens")  # now backbone options
OLD_TO_NEW = {f"--model.{option}": f"--model.backbone.{option}" for option in MOVED}
OLD_TO_NEW.update({f"--model.atoms.{option}": f"--model.method.{option}" for option in ("rank", "top_k")})  # 0.3


#: Configs renamed since: the fixture's LM run used the former LLM default, now the adversarial stream.
RENAMED = {"configs/llm_cl.yaml": "configs/llm_cl_adversarial.yaml"}


def new_args(name: str) -> list[str]:
    """The fixture run's options in today's form (renamed options and configs)."""
    old = json.loads((FIXTURE / f"{name}_args.json").read_text())
    return [RENAMED.get(arg, OLD_TO_NEW.get(arg, arg)) for arg in old]


def today(stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The stored entries under today's names: 0.3 moved the atoms out of the ``bank`` submodule.

    The bank's counter and signature have no entry of their own any more (the task counter and the
    settings record hold them: tests/test_upgrades.py checks both).
    """
    renamed = {k.replace(".bank.current_live", ".current_trained").replace(".bank.", "."): v
               for k, v in stored.items() if not k.endswith((".bank.num_frozen", ".bank.signature"))}
    assert len(renamed) < len(stored) or not any(".bank." in k for k in stored)
    return renamed


# the LM case in the slow suite: an LM checkpoint of 0.2 resumes by default (tests/test_upgrades.py)
@pytest.mark.parametrize("name", ["clip", pytest.param("lm", marks=pytest.mark.slow)])
def test_an_old_checkpoint_resumes_with_its_atoms_and_scores(tmp_path, monkeypatch, name):
    monkeypatch.chdir(ROOT)  # the fixture's options name files relative to the repository
    checkpoint = FIXTURE / f"{name}.ckpt"
    stored = torch.load(checkpoint, weights_only=True)
    assert stored["moram_checkpoint"]["version"] == "0.1.0"
    cli = main(["validate", *new_args(name), "--ckpt_path", str(checkpoint),
                "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"])
    module = cli.model
    state = module.state_dict()
    moved = today(stored["state_dict"])
    assert moved.keys() <= state.keys()  # every stored entry has its place in the new module
    assert all(torch.equal(state[k], v) for k, v in moved.items())
    assert {layer.task_index for _, layer in continual_layers(module.model)} == {1}  # task 0 frozen, 1 current
    expected = json.loads((FIXTURE / f"{name}_metrics.json").read_text())
    scores = {k.removeprefix("eval/score/"): float(v) for k, v in cli.trainer.callback_metrics.items()
              if k.startswith("eval/score/")}
    assert [scores[t] for t in expected["task_names"]] == pytest.approx(expected["final_row"])


def test_old_hyperparameters_are_read_in_the_composed_form():
    hparams = checkpoint_hparams(FIXTURE / "clip.ckpt")
    assert hparams["class_path"] == "moram.module.ContinualModule"
    backbone = hparams["init_args"]["backbone"]
    assert backbone["class_path"] == "moram.backbones.clip.CLIPBackbone"
    assert backbone["init_args"]["model_config"] == "tests/fixtures/pre_composed_module/tiny_clip.json"
    assert hparams["init_args"]["method"]["init_args"]["rank"] == 2  # 0.2's atoms: MoRAM's config since 0.3
    assert "atoms" not in hparams["init_args"]


def test_an_old_checkpoint_with_other_settings_is_refused_naming_the_option(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ValueError, match=r"model\.method\.rank: checkpoint 2, config 3"):
        main(["validate", *new_args("clip"), "--model.method.rank", "3", "--ckpt_path", str(FIXTURE / "clip.ckpt"),
              "--trainer.default_root_dir", str(tmp_path)])


@pytest.mark.parametrize("name", ["clip", "lm"])
def test_an_old_checkpoint_loads_outside_a_trainer(monkeypatch, name):
    """``ContinualModule.load_from_checkpoint`` reads 0.1 hyperparameters in the composed form."""
    from lightning.pytorch import seed_everything

    from moram.module import ContinualModule

    monkeypatch.chdir(ROOT)
    checkpoint = FIXTURE / f"{name}.ckpt"
    stored = torch.load(checkpoint, weights_only=True)["state_dict"]
    seed_everything(0)  # the fixture's backbones are random weights, built after the run's seed (0.1 did not store it)
    module = ContinualModule.load_from_checkpoint(checkpoint)
    assert type(module.backbone).__name__ == {"clip": "CLIPBackbone", "lm": "LMBackbone"}[name]
    state = module.state_dict()
    assert all(torch.equal(state[k], v) for k, v in today(stored).items())
    assert {layer.task_index for _, layer in continual_layers(module.model)} == {1}
