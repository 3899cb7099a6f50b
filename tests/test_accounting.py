"""Adapter accounting against counts done by hand (d_in/d_out 4->6 and 6->3, r = 2, 3 tasks)."""

from __future__ import annotations

import pytest
from torch import nn

from moram import AtomConfig, inject_atoms
from moram.accounting import adapter_cost
from moram.baselines import MoELoRA, RankRExperts, SequentialLoRA, ZeroShot
from moram.protocols import continual_layers

# Layers (d_in, d_out) = (4, 6) and (6, 3); r = 2; k = 2; T = max_tasks = 3.
HAND = {
    # trainable r(d_in+d_out); stored T r (d_in+d_out); FLOPs 2 N d_in + 2 k d_out with N = T r = 6
    "moram": (2 * 10 + 2 * 9, 3 * 2 * 10 + 3 * 2 * 9, (2 * 6 * 4 + 2 * 2 * 6) + (2 * 6 * 6 + 2 * 2 * 3)),
    # one LoRA: r(d_in+d_out) everything, 2 r (d_in+d_out) FLOPs
    "lora": (38, 38, 2 * 20 + 2 * 18),
    # + router T x d_in trained and stored; FLOPs 2 T d_in (router) + 2 k r (d_in+d_out) (top-2 experts)
    "moe": ((20 + 12) + (18 + 18), (60 + 12) + (54 + 18), (2 * 3 * 4 + 2 * 2 * 20) + (2 * 3 * 6 + 2 * 2 * 18)),
    # FLOPs 2 T r d_in (every expert's keys score) + 2 k r d_out (two experts' values)
    "experts": (38, 114, (2 * 3 * 2 * 4 + 2 * 2 * 2 * 6) + (2 * 3 * 2 * 6 + 2 * 2 * 2 * 3)),
    "zero_shot": (0, 0, 0),
}


def build(method):
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    targets = ["0", "2"]
    if method == "moram":
        inject_atoms(model, AtomConfig(rank=2, top_k=2, max_tasks=3, targets=targets))
    else:
        kind = {"lora": SequentialLoRA(rank=2), "moe": MoELoRA(rank=2, top_k=2),
                "experts": RankRExperts(rank=2, top_k=2), "zero_shot": ZeroShot()}[method]
        kind.inject(model, targets, max_tasks=3)
    return model


@pytest.mark.parametrize("method", list(HAND))
def test_accounting_equals_the_hand_count(method):
    model = build(method)
    cost = adapter_cost(model, num_tasks=3)
    assert (cost["trainable_per_task"], cost["stored"], cost["flops_per_token"]) == HAND[method]
    # Trainable per task is what the optimizer gets; stored equals the adapter tensors at full capacity.
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert cost["trainable_per_task"] == trainable
    adapter = sum(t.numel() for _, layer in continual_layers(model)
                  for n, t in [*layer.named_parameters(), *layer.named_buffers()]
                  if not n.startswith("base.") and t.is_floating_point())
    assert cost["stored"] == adapter
