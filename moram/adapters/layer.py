"""The base of every continual adapter layer: ``y = base(x) + delta(x)`` over a frozen linear map.

MoRAM's :class:`~moram.atoms.linear.AtomLinear`, the baselines of :mod:`moram.baselines` and any
layer a user adds derive from :class:`ContinualLinear`. The base holds what they all share, once:

* the frozen base layer, kept as is in ``self.base``, with ``weight``/``bias``/widths delegated to it
  (code written for the plain layer keeps working: dtype checks, weight tying);
* the task counter: a persistent buffer (so resume restores it) with a Python mirror (so ``forward``
  never syncs with the device), ``task_index``/``max_tasks``, and :meth:`consolidate`, which refuses
  to go past capacity with a message naming the option and calls the subclass's :meth:`end_task`;
* seeding: task ``t``'s parameters are drawn from :meth:`generator` ``(t)``, seeded by the layer's
  seed (from its name) and ``t``, never from the global RNG;
* route hooks for telemetry (:meth:`register_route_hook`), called by routed subclasses through
  :meth:`report_route`;
* the state sync after loading (:meth:`sync_from_state`).

A subclass implements ``delta`` (or ``add_delta`` when it fuses the addition), ``end_task`` (and
``start_task`` when each task draws fresh parameters),
``current_parameters``, ``settings`` and ``cost``; it writes possibly sharded Parameters through
:func:`moram.distributed.assign_full` and reads them with :func:`moram.distributed.full_value`.

Example:
    >>> import torch
    >>> class Bias(ContinualLinear):  # a tiny continual layer: one trainable output shift per task
    ...     def __init__(self, base, d_in, d_out, *, max_tasks, seed=0):
    ...         super().__init__(base, d_in, d_out, max_tasks=max_tasks, seed=seed)
    ...         self.shift = nn.Parameter(torch.zeros(d_out))
    ...     def delta(self, x):
    ...         return self.shift.expand(*x.shape[:-1], -1)
    ...     def end_task(self): pass
    ...     def current_parameters(self): return [self.shift]
    ...     def settings(self): return {}
    ...     def cost(self, num_tasks): return LayerCost(self.out_features, self.out_features, 0)
    >>> layer = Bias(nn.Linear(3, 2), 3, 2, max_tasks=2)
    >>> layer.consolidate(); layer.task_index
    1
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from moram.accounting import LayerCost
from moram.adapters.seeding import kaiming_rows, task_generator

__all__ = ["ContinualLinear", "LayerCost"]


def _sync_after_load(module: nn.Module, incompatible_keys: Any) -> None:
    module.sync_from_state()  # type: ignore[operator]


class ContinualLinear(nn.Module):
    """A frozen linear map plus a continual adapter (see the module docstring).

    Args:
        base: the frozen linear map (``nn.Linear``, GPT-2's ``Conv1D`` or a registered type), kept as is.
        in_features: width of the map's input.
        out_features: width of the map's output.
        max_tasks: tasks the layer holds; consolidating past the last one is an error naming the option.
        seed: the layer's seed (:func:`moram.adapters.seeding.layer_seed` of the run seed and its name).
    """

    seed_namespace: ClassVar[str] = "moram-adapter"
    """Separates the random streams of methods that share a layer seed."""

    capacity_option: ClassVar[str] = "max_tasks"
    """The option to name when the layer is full."""

    tasks_done: Tensor  # () long buffer: consolidations so far

    def __init__(self, base: nn.Module, in_features: int, out_features: int, *, max_tasks: int, seed: int = 0):
        super().__init__()
        if max_tasks < 1:
            raise ValueError(f"{type(self).__name__}: max_tasks must be >= 1, got {max_tasks}")
        self.base = base
        self.in_features, self.out_features = in_features, out_features
        self.seed = seed
        self._max_tasks = max_tasks
        weight = next(base.parameters(), None)
        self.factory_kwargs: dict[str, Any] = {
            "device": None if weight is None else weight.device,
            "dtype": None if weight is None or not weight.is_floating_point() else weight.dtype,
        }
        self.register_buffer("tasks_done", torch.zeros((), dtype=torch.long, device=self.factory_kwargs["device"]))
        self._tasks_done = 0  # Python mirror: forward never syncs with the device
        self.route_hooks: OrderedDict[int, Callable[[Tensor], None]] = OrderedDict()
        # After this layer *and its submodules* are loaded (a bank loads after its layer).
        self.register_load_state_dict_post_hook(_sync_after_load)

    # ------------------------------------------------------------------ what a subclass provides
    def delta(self, x: Tensor) -> Tensor | None:
        """The adapter's contribution ``(..., d_out)`` for ``x`` ``(..., d_in)``, or None when it adds nothing."""
        raise NotImplementedError

    def add_delta(self, x: Tensor, y: Tensor) -> Tensor:
        """``y + delta(x)``, where ``y = base(x)``; a subclass may fuse the addition."""
        d = self.delta(x)
        return y if d is None else y + d.to(y.dtype)

    def end_task(self) -> None:
        """Freeze (or keep) what the present task trained (called by :meth:`consolidate`)."""
        raise NotImplementedError

    def start_task(self) -> None:
        """Prepare the parameters of the task that starts (``task_index`` already counts it); default none."""

    def current_parameters(self) -> list[nn.Parameter]:
        """The Parameters trained in the present task (their optimizer state is reset at boundaries)."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The options that fix this layer's shapes and function (compared when injecting twice)."""
        raise NotImplementedError

    def cost(self, num_tasks: int) -> LayerCost:
        """Parameters and FLOPs after ``num_tasks`` tasks (:mod:`moram.accounting`)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    def forward(self, x: Tensor) -> Tensor:
        return self.add_delta(x, self.base(x))

    @property
    def weight(self) -> Tensor:
        """The base layer's weight."""
        return self.base.weight  # type: ignore[return-value]

    @property
    def bias(self) -> Tensor | None:
        """The base layer's bias."""
        return getattr(self.base, "bias", None)

    @property
    def task_index(self) -> int:
        """Tasks consolidated so far: the index of the task being trained."""
        return self._tasks_done

    @property
    def max_tasks(self) -> int:
        """Tasks the layer holds."""
        return self._max_tasks

    @torch.no_grad()
    def consolidate(self) -> None:
        """End the present task (:meth:`end_task`), count it, start the next (:meth:`start_task`).

        Refused, before anything changes, when the next task would not fit.
        """
        done = self._tasks_done
        if done + 1 >= self._max_tasks:
            raise RuntimeError(
                f"{type(self).__name__} is full: it holds {self.capacity_option}={self._max_tasks} tasks, and "
                f"consolidating task {done + 1} would start task {done + 2}; raise {self.capacity_option} "
                f"to at least {done + 2}"
            )
        self.end_task()
        self._set_tasks_done(done + 1)
        self.start_task()

    def _set_tasks_done(self, count: int) -> None:
        self._tasks_done = count
        self.tasks_done.fill_(count)

    def generator(self, task: int) -> torch.Generator:
        """The generator task ``task``'s parameters are drawn from (per layer and task; not the global RNG)."""
        return task_generator(self.seed_namespace, self.seed, task)

    def kaiming_rows(self, rows: int, task: int) -> Tensor:
        """``(rows, in_features)`` float32 Kaiming-uniform (a = √5, LoRA's init of A) from task ``task``'s generator."""
        return kaiming_rows(rows, self.in_features, self.generator(task))

    def register_route_hook(self, hook: Callable[[Tensor], None]) -> RemovableHandle:
        """Call ``hook(w)`` with the routing weights ``(..., N)`` at every forward (telemetry); returns its handle."""
        handle = RemovableHandle(self.route_hooks)
        self.route_hooks[handle.id] = hook
        return handle

    def report_route(self, weights: Tensor) -> None:
        """Hand ``weights`` ``(..., N)`` (detached) to every route hook."""
        for hook in list(self.route_hooks.values()):
            hook(weights.detach())

    # ------------------------------------------------------------------ state
    def sync_from_state(self) -> None:
        """Refresh Python mirrors from buffers after a state dict was loaded (a subclass extends it).

        Runs as a load-state-dict post hook, after the layer's submodules were loaded too.
        """
        self._tasks_done = int(self.tasks_done)

    def upgrade_state(self, state_dict: dict[str, Any], prefix: str) -> None:
        """Rewrite, in place, this layer's entries of a state dict written by an older moram (default: none).

        Called before loading; a subclass maps old names or layouts to today's.
        """

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        self.upgrade_state(state_dict, prefix)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        details = ", ".join(f"{k}={v}" for k, v in self.settings().items())
        return f"in={self.in_features}, out={self.out_features}, tasks_done={self._tasks_done}/{self._max_tasks}" + (
            f", {details}" if details else ""
        )
