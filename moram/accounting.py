"""Parameter and compute accounting of the adapters in a model, for every method.

Each continual layer reports a :class:`LayerCost` for a given number of tasks (its ``cost(num_tasks)``
method); :func:`adapter_cost` sums them over the model. The counts are the method's own
definition, not a profile of the implementation:

* ``trainable_per_task``: parameters the optimizer updates during one task (the current atoms,
  the current LoRA / expert, a router);
* ``stored``: adapter parameters kept after ``num_tasks`` tasks (frozen and current), i.e. what an
  adapter file has to hold;
* ``flops_per_token``: multiply-adds × 2 added per token by the adapter of one layer after
  ``num_tasks`` tasks, where only selected experts / values are counted (a sparse implementation's
  cost); O(N) routing statistics (norms, softmax, top-k) are left out.

Example:
    >>> from torch import nn

from moram.protocols import continual_layers
    >>> from moram.atoms import AtomConfig, inject_atoms
    >>> model = nn.Sequential(nn.Linear(4, 6))
    >>> _ = inject_atoms(model, AtomConfig(rank=2, top_k=2, max_tasks=3, targets=["0"]))
    >>> adapter_cost(model, num_tasks=3)["stored"]  # 3 tasks x 2 atoms x (4 + 6)
    60
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from moram.protocols import continual_layers


@dataclass(frozen=True)
class LayerCost:
    """The cost of one continual layer (see the module docstring for the definitions)."""

    trainable_per_task: int
    stored: int
    flops_per_token: int


def adapter_cost(model: nn.Module, num_tasks: int) -> dict[str, Any]:
    """Totals and per-layer costs of every continual layer of ``model`` after ``num_tasks`` tasks.

    Returns ``{"num_tasks", "num_layers", "trainable_per_task", "stored", "flops_per_token",
    "flops_per_token_per_layer", "layers": {name: {...}}}``; ``flops_per_token`` sums the layers
    (one token through every continual layer once) and ``flops_per_token_per_layer`` is its mean.
    A model without adapters (zero-shot) costs zero.
    """
    layers: dict[str, dict[str, int]] = {}
    for name, layer in continual_layers(model):
        cost_of = getattr(layer, "cost", None)
        if not callable(cost_of):
            raise TypeError(f"layer '{name}' ({type(layer).__name__}) has no cost(num_tasks) method to account it")
        cost = cost_of(num_tasks)
        layers[name] = {
            "trainable_per_task": cost.trainable_per_task,
            "stored": cost.stored,
            "flops_per_token": cost.flops_per_token,
        }
    total = {key: sum(c[key] for c in layers.values()) for key in ("trainable_per_task", "stored", "flops_per_token")}
    return {
        "num_tasks": num_tasks,
        "num_layers": len(layers),
        **total,
        "flops_per_token_per_layer": total["flops_per_token"] / len(layers) if layers else 0.0,
        "layers": layers,
    }
