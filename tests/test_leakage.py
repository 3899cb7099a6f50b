"""Routing-leakage telemetry: block shares, leakage and delta-emptied tokens equal a hand computation."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import E, Host, fit_with, hand_built_layer, run_lm
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from moram.baselines.experts import ExpertBankLinear
from moram.baselines.moe_lora import MoELoRALinear
from moram.callbacks.atom_usage import AtomUsageCallback

USAGE = "--trainer.callbacks+=moram.callbacks.atom_usage.AtomUsageCallback"


def validate(layer: nn.Module, tasks: list[torch.Tensor], tmp_path: Path) -> AtomUsageCallback:
    usage = AtomUsageCallback(output_dir=str(tmp_path))
    trainer = pl.Trainer(callbacks=[usage], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.validate(Host(layer), dataloaders=[DataLoader(TensorDataset(x), batch_size=3) for x in tasks])
    return usage


def test_leakage_and_emptied_tokens_of_a_hand_built_bank(tmp_path):
    # Atoms 0, 1 (keys e0, e1) are task 1's block, atoms 2, 3 (e2, e3) task 2's; r = k = 2, delta 0.2.
    # Task 1's tokens: e0 -> atom 0 alone (weight 1), e2 -> atom 2 alone, e0 + e2 -> atoms 0 and 2 (1/2 each):
    # block 1 gets 1 + 1 + 0.5 = 2.5, block 2 gets 1 + 0.5 = 1.5 -> leakage 1.5 / 4 = 0.375.
    # Task 2's tokens: e2 twice (block 2), -e0 twice: every score is <= 0 < delta, so delta empties them.
    task1 = torch.stack([E[0], E[0], E[2], E[0] + E[2]])
    task2 = torch.stack([E[2], E[2], -E[0], -E[0]])
    usage = validate(hand_built_layer(), [task1, task2], tmp_path)
    report = json.loads((tmp_path / "atom_usage" / "after_task1.json").read_text())
    torch.testing.assert_close(torch.tensor(report["routing_matrix"]), torch.tensor([[0.625, 0.0], [0.375, 1.0]]))
    assert report["leakage"] == pytest.approx([0.375, 0.0])  # task 2 has no newer block
    assert report["gate_empty_fraction"] == pytest.approx([0.0, 0.5])
    assert report["layers"]["layer"]["leakage"] == pytest.approx([0.375, 0.0])
    assert report["layers"]["layer"]["gate_empty_fraction"] == pytest.approx([0.0, 0.5])
    assert (tmp_path / "atom_usage" / "after_task1_leakage.png").is_file()
    assert usage.last["tasks"][0] == pytest.approx(
        {"task": "task0", "own_share": 0.625, "leakage": 0.375, "gate_empty_fraction": 0.0})


@pytest.mark.parametrize("kind", ["experts", "moe_lora"])
def test_expert_methods_report_blocks_too(kind, tmp_path):
    torch.manual_seed(0)
    make = {"experts": lambda: ExpertBankLinear(nn.Linear(4, 3), 4, 3, rank=2, max_tasks=2, threshold=0.2),
            "moe_lora": lambda: MoELoRALinear(nn.Linear(4, 3), 4, 3, rank=2, max_tasks=2)}[kind]
    layer = make()
    with torch.no_grad():
        layer.current_B.normal_()
    layer.consolidate()
    with torch.no_grad():
        layer.current_B.normal_()
    layer.train()
    layer.mark_trained()  # as a training step does: the second expert takes part at inference
    layer.eval()
    usage = validate(layer, [torch.randn(6, 4), torch.randn(6, 4)], tmp_path)
    report = usage.summary(["a", "b"])
    share = torch.tensor(report["routing_matrix"])
    assert share.shape == (2, 2)  # one block (expert) per task
    torch.testing.assert_close(share.sum(0), torch.ones(2))
    assert report["leakage"] == pytest.approx([float(share[1, 0]), 0.0])
    if kind == "moe_lora":  # a softmax gate never empties a token
        assert report["gate_empty_fraction"] == [0.0, 0.0]


@pytest.mark.slow  # the CLIP run below covers the callback in a fit by default
def test_an_lm_run_writes_and_prints_the_leakage_table(tmp_path, capsys):
    cli, log_dir = run_lm(tmp_path, USAGE)
    summary = json.loads((log_dir / "atom_usage" / "summary.json").read_text())
    assert summary["row"] == "after_task2"
    assert [r["task"] for r in summary["tasks"]] == ["rotate", "decrement"]
    assert summary["tasks"][1]["leakage"] == 0.0  # the last task has no newer block
    assert 0.0 <= summary["tasks"][0]["leakage"] <= 1.0
    assert "emptied by delta" in capsys.readouterr().out
    assert (log_dir / "atom_usage" / "after_task2_leakage.png").is_file()


@pytest.mark.slow  # the leakage numbers are checked by default on the hand-built layers above; this is the CLI run
def test_a_clip_run_with_rank_r_experts_reports_leakage(tmp_path, tiny_config):  # noqa: F811
    cli, _ = fit_with(tmp_path, tiny_config, "moram.baselines.RankRExperts", "--model.method.rank", "2", USAGE)
    usage = next(c for c in cli.trainer.callbacks if isinstance(c, AtomUsageCallback))
    assert usage.last["row"] == "after_task2"
    assert len(usage.last["tasks"]) == 2
    report = json.loads((Path(cli.trainer.log_dir) / "atom_usage" / "after_task2.json").read_text())
    assert len(report["leakage"]) == len(report["gate_empty_fraction"]) == 2
