"""O-LoRA: its regulariser equals a hand computation, earlier LoRAs stay frozen; it trains on CLIP and LMs."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import fit_with, run_lm
from torch import nn

from moram.baselines import OLoRA
from moram.baselines.olora import OLoRALinear
from moram.module import adapter_penalty
from moram.protocols import continual_layers


def test_penalty_equals_the_hand_computation():
    layer = OLoRALinear(nn.Linear(3, 2), 3, 2, rank=2, max_tasks=3, lambda_orth=0.5, lambda_l2=0.25)
    a1 = torch.tensor([[1.0, 0.0, 2.0], [0.0, -1.0, 0.0]])
    a2 = torch.tensor([[0.0, 3.0, 0.0], [1.0, 1.0, 1.0]])
    a3 = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, -2.0]])
    b3 = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    with torch.no_grad():
        layer.current_A.copy_(a1)
        layer.consolidate()
        layer.current_A.copy_(a2)
        layer.consolidate()
        layer.current_A.copy_(a3)
        layer.current_B.copy_(b3)
    # A3 A1^T = [[2*1 + 0.5*2, 1], [-4, 0]] = [[3, 1], [-4, 0]]: |.| sums to 8
    # A3 A2^T = [[-3, 2 - 1 + 0.5], [0, -2]] = [[-3, 1.5], [0, -2]]: |.| sums to 6.5
    # ||A3||_F = sqrt(4 + 1 + 0.25 + 4) = sqrt(9.25);  ||B3||_F = 5
    expected = 0.5 * (8 + 6.5) + 0.25 * (9.25**0.5 + 5.0)
    assert float(layer.penalty()) == pytest.approx(expected)
    # the official code's loop, over the concatenated earlier A (``lora_A``) and the new one (``loranew_A``)
    lora_a, loranew_a = torch.cat([a1, a2]), a3
    official = 0.5 * torch.abs(torch.mm(lora_a, loranew_a.T)).sum() + 0.25 * (a3.norm(p=2) + b3.norm(p=2))
    assert float(layer.penalty()) == pytest.approx(float(official))
    layer.penalty().backward()
    assert layer.current_A.grad is not None
    assert layer.current_A.grad.abs().sum() > 0


def test_output_sums_every_task_lora_and_earlier_ones_stay_frozen():
    torch.manual_seed(0)
    layer = OLoRALinear(nn.Linear(4, 3), 4, 3, rank=2, max_tasks=3, scale=4.0, dropout=0.0)
    loras = []
    for _ in range(3):
        with torch.no_grad():
            layer.current_B.normal_()
        loras.append((layer.current_A.detach().clone(), layer.current_B.detach().clone()))
        if layer.task_index < 2:
            layer.consolidate()
    x = torch.randn(5, 4)
    expected = layer.base(x) + sum(4.0 * x @ a.T @ b.T for a, b in loras)
    torch.testing.assert_close(layer(x), expected)
    assert {id(p) for p in layer.current_parameters()} == {id(p) for p in layer.parameters() if p.requires_grad} - {
        id(p) for p in layer.base.parameters() if p.requires_grad
    }
    assert not layer.frozen_A.requires_grad
    assert not layer.frozen_B.requires_grad


def test_defaults_are_the_official_settings_and_the_penalty_reaches_the_loss():
    method = OLoRA()
    assert (method.rank, method.scale, method.dropout, method.lambda_orth, method.lambda_l2) == (8, 4.0, 0.1, 0.5, 0.0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 2))
    OLoRA(rank=2, lambda_l2=1.0).inject(model, ["0", "2"], max_tasks=2, seed=0)
    expected = sum(layer.penalty() for _, layer in continual_layers(model))
    assert float(adapter_penalty(model)) == pytest.approx(float(expected))
    assert adapter_penalty(nn.Sequential(nn.Linear(2, 2))) is None


def test_olora_trains_on_clip_through_the_cli(tmp_path, tiny_config):  # noqa: F811
    cli, ends = fit_with(tmp_path, tiny_config, "moram.baselines.OLoRA", "--model.method.rank", "2")
    layers = continual_layers(cli.model)
    assert layers
    assert all(isinstance(layer, OLoRALinear) for _, layer in layers)
    for (_, layer), t1 in zip(layers, ends[0], strict=True):
        assert torch.equal(layer.frozen_A[: layer.rank], t1["current_A"])  # task 1's LoRA, frozen bit-identically
        assert torch.equal(layer.frozen_B[: layer.out_features], t1["current_B"])
    assert any(t["current_B"].abs().sum() > 0 for t in ends[0])
    assert float(adapter_penalty(cli.model.model)) > 0  # task 2's A overlaps task 1's: the term is live


@pytest.mark.slow  # by default: O-LoRA on CLIP (above), a baseline on a language model (test_llm_cl.py)
def test_olora_trains_on_a_language_model(tmp_path):
    cli, log_dir = run_lm(tmp_path, "--model.method", "moram.baselines.OLoRA", "--model.method.rank", "2")
    layers = cli.model.continual_layers()
    assert len(layers) == 8
    assert all(isinstance(layer, OLoRALinear) for _, layer in layers)
    assert all(layer.task_index == 1 and layer.frozen_B[: layer.out_features].abs().sum() > 0 for _, layer in layers)
    assert len(json.loads((log_dir / "continual_metrics.json").read_text())["matrix"]) == 2
