"""Baselines under MoRAM's protocol: each trains on a tiny CLIP through the CLI and behaves as defined."""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch
from helpers import fit_with, run_fit
from torch import nn

from moram.adapters import load_adapters
from moram.atoms.routing import normalized_topk_weights
from moram.baselines.experts import ExpertBankLinear
from moram.baselines.moe_lora import MoELoRALinear
from moram.protocols import continual_layers


def test_zero_shot_trains_nothing_and_every_row_is_the_zero_shot_row(tmp_path, tiny_config):
    _, metrics, _ = run_fit(tmp_path, tiny_config, "--model.method", "moram.baselines.ZeroShot",
                            "--data.source.classes_per_task", "3")
    assert all(row == metrics["zero_shot"] for row in metrics["matrix"])


def test_sequential_lora_keeps_changing_the_same_weights(tmp_path, tiny_config):
    cli, ends = fit_with(tmp_path, tiny_config, "moram.baselines.SequentialLoRA", "--model.method.rank", "2")
    layers = continual_layers(cli.model)
    assert len(layers) == 12
    assert all(layer.task_index == 1 for _, layer in layers)
    assert all(p.requires_grad for _, layer in layers for p in layer.current_parameters())  # never frozen
    changed = [not torch.equal(a["lora_B"], b["lora_B"]) for a, b in zip(ends[0], ends[1], strict=True)]
    assert all(changed)  # task 2 changed the weights task 1 trained
    # after each task the layers are exported without the backbone, as generic adapter files
    exported = sorted((Path(cli.trainer.log_dir) / "adapters").iterdir())
    assert [p.name for p in exported] == ["task0-synthetic_0", "task1-synthetic_1"]
    assert load_adapters(cli.model.model, exported[-1]) == [name for name, _ in layers]
    first = safetensors.torch.load_file(exported[0] / "adapters.safetensors")
    assert torch.equal(first[f"{layers[0][0]}.lora_B"], ends[0][0]["lora_B"])  # task 1's LoRA as it ended


def slot(layer, name: str, task: int) -> torch.Tensor:
    """Task ``task``'s frozen ``A`` or ``B`` (the tasks' tensors follow one another in the frozen buffer)."""
    current = getattr(layer, f"current_{name}")
    return getattr(layer, f"frozen_{name}").view(-1, *current.shape)[task]


def test_moe_lora_freezes_experts_and_keeps_training_the_router(tmp_path, tiny_config):
    cli, ends = fit_with(tmp_path, tiny_config, "moram.baselines.MoELoRA", "--model.method.rank", "2",
                         "--data.source.num_tasks", "3")
    layers = continual_layers(cli.model)
    for (_, layer), t1, t2 in zip(layers, ends[0], ends[1], strict=True):
        assert torch.equal(slot(layer, "B", 0), t1["current_B"])  # bit-identical after its task
        assert torch.equal(slot(layer, "A", 0), t1["current_A"])
        assert torch.equal(slot(layer, "B", 1), t2["current_B"])
        assert not torch.equal(t1["router"], t2["router"])  # the router trains on every task
    assert any(t["current_B"].abs().sum() > 0 for t in ends[0])


def test_rank_r_experts_freeze_bit_identically(tmp_path, tiny_config):
    cli, ends = fit_with(tmp_path, tiny_config, "moram.baselines.RankRExperts", "--model.method.rank", "2")
    for (_, layer), t1 in zip(continual_layers(cli.model), ends[0], strict=True):
        assert torch.equal(slot(layer, "B", 0), t1["current_B"])
        assert layer.task_index == 1
    assert any(t["current_B"].abs().sum() > 0 for t in ends[0])


def trained_layer(kind, **kwargs):
    torch.manual_seed(0)
    layer = kind(nn.Linear(6, 4), 6, 4, rank=2, max_tasks=4, **kwargs)
    for _ in range(3):  # three trained experts (random values so that every expert matters)
        with torch.no_grad():
            layer.current_B.normal_()
        layer.mark_trained()
        layer.consolidate()
    return layer.eval()


def test_moe_router_gate_sums_to_one_over_the_top2_experts():
    layer = trained_layer(MoELoRALinear, top_k=2)
    g = layer.gate(torch.randn(7, 5, 6), use_current=False)  # (7, 5, E=3)
    assert g.shape == (7, 5, 3)
    assert torch.equal((g > 0).sum(-1), torch.full((7, 5), 2))
    torch.testing.assert_close(g.sum(-1), torch.ones(7, 5))


def test_rank_r_expert_scores_follow_the_documented_formula():
    layer = trained_layer(ExpertBankLinear, top_k=2, temperature=0.5, threshold=None)
    x = torch.randn(5, 6)
    z = torch.einsum("erd,td->ter", layer.frozen_A.view(-1, 2, 6)[:3], x)  # (T, E, r): each expert's response A_e x
    u = z.norm(dim=-1)
    w = normalized_topk_weights(u, top_k=2, temperature=0.5, eps=1e-6, threshold=None)  # (T, E), docs/design.md §1
    expected = layer.base(x) + torch.einsum("te,ter,eor->to", w, z, layer.frozen_B.view(-1, 4, 2)[:3])
    torch.testing.assert_close(layer(x), expected)

