"""What every baseline layer shares: a frozen base map, a task counter, and injection.

A baseline layer is a :class:`moram.protocols.ContinualLayer`, like ``AtomLinear``: it keeps the
frozen base module inside it (``self.base``), adds ``delta(x)`` to its output, counts the task
boundaries it crossed in a persistent buffer (so resume restores it), and names the Parameters it
trains in the present task. :class:`ExpertStoreLinear` adds the storage of rank-r experts shared by
MoE-LoRA and the rank-r experts ablation: fixed capacity, frozen experts in buffers, the current
one as Parameters, exactly like the atom bank (DESIGN.md §3).
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from moram.atoms.inject import _layer_widths, _select, layer_seed
from moram.distributed import assign_full, full_value

LayerFactory = Callable[[nn.Module, int, int, int], nn.Module]
"""``(base, in_features, out_features, seed) -> adapted layer``."""


class AdapterLinear(nn.Module):
    """A frozen base map plus an adapter, ``y = base(x) + delta(x)``, that counts its tasks.

    Args:
        base: the frozen linear map, kept as is.
        in_features / out_features: widths of the map.
        max_tasks: tasks the layer may hold (consolidating past it is an error naming the option).
        seed: seed of this layer's initialisation; task ``t`` draws from a generator of ``(seed, t)``.
    """

    tasks_done: Tensor  # () long buffer: consolidations so far

    def __init__(self, base: nn.Module, in_features: int, out_features: int, max_tasks: int, seed: int = 0) -> None:
        super().__init__()
        self.base = base
        self.in_features, self.out_features = in_features, out_features
        self._max_tasks, self.seed = max_tasks, seed
        weight = next(base.parameters(), None)
        self.factory_kwargs: dict[str, Any] = {
            "device": None if weight is None else weight.device,
            "dtype": None if weight is None or not weight.is_floating_point() else weight.dtype,
        }
        self.register_buffer("tasks_done", torch.zeros((), dtype=torch.long, device=self.factory_kwargs["device"]))
        self._tasks_done = 0  # Python mirror: forward never syncs with the device

    def delta(self, x: Tensor) -> Tensor | None:
        """The adapter's contribution ``(..., d_out)``, or None when it adds nothing."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)
        d = self.delta(x)
        return y if d is None else y + d.to(y.dtype)

    @property
    def task_index(self) -> int:
        """Tasks consolidated so far."""
        return self._tasks_done

    @property
    def max_tasks(self) -> int:
        return self._max_tasks

    def _advance(self) -> int:
        """Count one task boundary; returns the index of the task that ended."""
        done = self._tasks_done
        if done + 1 >= self._max_tasks:
            raise RuntimeError(
                f"{type(self).__name__} holds max_tasks={self._max_tasks} tasks and task {done + 2} would not fit; "
                "raise the number of tasks the model is built for"
            )
        self._tasks_done = done + 1
        self.tasks_done.fill_(done + 1)
        return done

    def _generator(self, task: int) -> torch.Generator:
        digest = hashlib.sha256(f"moram-adapter:{self.seed}:{task}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))

    def _kaiming(self, rows: int, task: int) -> Tensor:
        """Rows drawn Kaiming-uniform (a=√5, the usual LoRA init of A) from the task's generator."""
        out = torch.empty(rows, self.in_features, dtype=torch.float32)
        return nn.init.kaiming_uniform_(out, a=math.sqrt(5), generator=self._generator(task))

    @property
    def weight(self) -> Tensor:
        return self.base.weight  # type: ignore[return-value]

    @property
    def bias(self) -> Tensor | None:
        return getattr(self.base, "bias", None)

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._tasks_done = int(self.tasks_done)


class ExpertStoreLinear(AdapterLinear):
    """Rank-r experts, one per task: expert ``e`` has keys ``A_e`` (r, d_in) and values ``B_e`` (r, d_out).

    Frozen experts live in buffers (``frozen_keys`` (max_tasks - 1, r, d_in), ``frozen_values``), the
    current task's expert in Parameters; :meth:`consolidate` copies it into the next slot and re-draws
    it (keys Kaiming-uniform, values zero). As in the atom bank, an expert that was not trained since
    the last consolidation takes no part in inference routing (DESIGN.md §1, item 2).
    """

    frozen_keys: Tensor
    frozen_values: Tensor
    current_live: Tensor

    def __init__(
        self, base: nn.Module, in_features: int, out_features: int, *, rank: int, max_tasks: int, scale: float,
        seed: int = 0,
    ) -> None:
        super().__init__(base, in_features, out_features, max_tasks, seed)
        self.rank, self.scale = rank, scale
        kw = self.factory_kwargs
        self.current_keys = nn.Parameter(torch.empty(rank, in_features, **kw))
        self.current_values = nn.Parameter(torch.zeros(rank, out_features, **kw))
        self.register_buffer("frozen_keys", torch.zeros(max_tasks - 1, rank, in_features, **kw))
        self.register_buffer("frozen_values", torch.zeros(max_tasks - 1, rank, out_features, **kw))
        self.register_buffer("current_live", torch.zeros((), dtype=torch.bool, device=kw["device"]))
        self._live = False
        self._route_hooks: OrderedDict[int, Callable[[Tensor], None]] = OrderedDict()  # weak-referenceable
        self.reset_current()

    @torch.no_grad()
    def reset_current(self) -> None:
        assign_full(self.current_keys, self._kaiming(self.rank, self._tasks_done))
        assign_full(self.current_values, torch.zeros(self.rank, self.out_features))
        self._live = False
        self.current_live.fill_(False)

    @torch.no_grad()
    def consolidate(self) -> None:
        """Freeze the current expert into the next slot and start a fresh one."""
        n = self._tasks_done
        self._advance()
        self.frozen_keys[n].copy_(full_value(self.current_keys))
        self.frozen_values[n].copy_(full_value(self.current_values))
        self.reset_current()

    def _uses_current(self) -> bool:
        if self.training and not self._live and torch.is_grad_enabled() and self.current_keys.requires_grad:
            self._live = True
            self.current_live.fill_(True)
        return self.training or self._live

    def expert_weights(self, use_current: bool) -> tuple[Tensor, Tensor]:
        """Stacked keys ``(E·r, d_in)`` and values ``(E·r, d_out)`` of the experts that take part."""
        n, r = self._tasks_done, self.rank
        keys = [self.frozen_keys[:n].reshape(n * r, self.in_features)]
        values = [self.frozen_values[:n].reshape(n * r, self.out_features)]
        if use_current:
            keys.append(self.current_keys)
            values.append(self.current_values)
        return torch.cat(keys), torch.cat(values)

    def mix(self, z: Tensor, w: Tensor, values: Tensor) -> Tensor:
        """``scale · Σ_e w_e B_eᵀ z_e`` ``(..., d_out)`` from responses ``z`` (..., E, r) and weights ``w`` (..., E)."""
        coef = (z * w.unsqueeze(-1).to(z.dtype)).flatten(-2)  # (..., E·r)
        return self.scale * F.linear(coef, values.T)  # (..., d_out)

    def _report(self, w: Tensor) -> None:
        for hook in list(self._route_hooks.values()):
            hook(w.detach())

    def current_parameters(self) -> list[nn.Parameter]:
        return [self.current_keys, self.current_values]

    @property
    def units_per_task(self) -> int:
        """Routed units per task: one expert."""
        return 1

    @property
    def route_capacity(self) -> int:
        return self._max_tasks

    def register_route_hook(self, hook: Callable[[Tensor], None]) -> RemovableHandle:
        """Call ``hook(w)`` with the expert weights ``(..., E)`` at every forward (telemetry)."""
        handle = RemovableHandle(self._route_hooks)
        self._route_hooks[handle.id] = hook
        return handle

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._live = bool(self.current_live)


def inject_adapters(model: nn.Module, targets: list[str], make: LayerFactory, seed: int = 0) -> list[str]:
    """Wrap every target module of ``model`` with ``make(base, d_in, d_out, layer_seed)`` and freeze the rest.

    Targets match like :func:`moram.atoms.inject_atoms` (exact name, dotted suffix, ``re:``); a
    pattern that matches nothing or a module of an unsupported type is an error naming it.
    """
    from moram.protocols import find_continual_layers

    adapted = []
    for name, module in _select(model, list(targets)):
        widths = _layer_widths(module)
        if widths is None:
            raise TypeError(f"module '{name}' matched the targets but is a {type(module).__name__}, not a linear map")
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, make(module, *widths, layer_seed(seed, name)))
        adapted.append(name)
    model.requires_grad_(False)
    for _, layer in find_continual_layers(model):
        for p in layer.current_parameters():
            p.requires_grad_(True)
    return adapted
