"""The base of every continual adapter layer: ``y = base(x) + delta(x)`` over a frozen linear map.

MoRAM's :class:`~moram.atoms.linear.AtomLinear`, the baselines of :mod:`moram.baselines` and any
layer a user adds derive from :class:`ContinualLinear`. The base holds a layer's whole lifecycle across
tasks, once (docs/design.md §3.2):

* the frozen base layer, kept as is in ``self.base``, with ``weight``/``bias``/widths delegated to it
  (code written for the plain layer keeps working: dtype checks, weight tying);
* the method's config (``self.config``, a :class:`~moram.adapters.method.MethodConfig`), from which a
  layer reads its options and :meth:`settings` is derived;
* the task counter: a persistent buffer (so resume restores it) with a Python mirror (so ``forward``
  never syncs with the device), ``task_index``/``max_tasks``, and :meth:`consolidate`, which refuses
  to go past capacity (a :class:`~moram.errors.CapacityError` naming ``model.max_tasks``) and calls
  :meth:`end_task` then :meth:`start_task`;
* seeding: task ``t``'s tensors are drawn from :meth:`generator` ``(t)``, seeded by the layer's seed
  (from its name) and ``t``, never from the global RNG;
* fixed-slot storage of per-task tensors (:meth:`add_task_tensor`): the present task's tensor is a
  trainable ``current_<name>`` Parameter, earlier tasks' live one after the other in the ``frozen_<name>``
  buffer of ``(max_tasks - 1)·rows`` rows; the default :meth:`end_task` copies the current tensor into its task's
  slot and :meth:`start_task` draws the next one, so the parameter set never changes during a run;
* the rule "units not yet trained take no part in inference" as state: ``current_trained`` is False
  after each consolidation and set by :meth:`mark_trained` when the present task's tensors are trained
  (a gradient reaches them, or moram's module takes an optimizer step); :attr:`uses_current` reads it;
* route hooks for telemetry (:meth:`register_route_hook`, :attr:`route_hooks`), which a routed layer
  hands its routing weights to;
* state loading: entries written by older moram versions are rewritten by :mod:`moram.upgrades`
  before loading; the state's ``settings`` entry (:meth:`settings` as JSON, written by every state dict)
  must equal the layer's, else a :class:`~moram.errors.StateError` names each difference; the Python
  mirrors are refreshed after loading (:meth:`sync_from_state`).

A subclass declares its tensors (:meth:`add_task_tensor`, or plain Parameters) and implements
``delta`` (or ``add_delta`` when it fuses the addition) and ``cost``; it writes possibly sharded
Parameters through :func:`moram.distributed.assign_full` and reads them with
:func:`moram.distributed.full_value`.

Example:
    >>> import torch
    >>> class Shift(ContinualLinear):  # a tiny continual layer: one trainable output shift per task
    ...     def __init__(self, base, d_in, d_out, config=None, *, max_tasks, seed=0):
    ...         super().__init__(base, d_in, d_out, config, max_tasks=max_tasks, seed=seed)
    ...         self.add_task_tensor("shift", (1, d_out), init="zeros")
    ...     def delta(self, x):
    ...         shift = self.current_shift + self.frozen_task_tensor("shift").sum(0)  # (d_out,)
    ...         return shift.expand(*x.shape[:-1], -1)
    ...     def cost(self, num_tasks): return LayerCost(self.out_features, num_tasks * self.out_features, 0)
    >>> layer = Shift(nn.Linear(3, 2), 3, 2, max_tasks=2)
    >>> layer.consolidate(); layer.task_index
    1
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from moram.accounting import LayerCost
from moram.adapters.seeding import kaiming_rows, task_generator
from moram.distributed import assign_full, full_value
from moram.errors import CapacityError, StateError

if TYPE_CHECKING:
    from moram.adapters.method import MethodConfig

__all__ = ["SETTINGS_KEY", "ContinualLinear", "LayerCost"]

SETTINGS_KEY = "settings"
"""State-dict entry of every continual layer: its settings as JSON bytes, checked when a state is loaded."""

TensorInit = Literal["kaiming", "zeros"]
"""How a per-task tensor is drawn at the start of its task: Kaiming-uniform rows (a = √5, LoRA's A) or zeros."""


def _sync_after_load(module: nn.Module, incompatible_keys: Any) -> None:
    module.sync_from_state()  # type: ignore[operator]


class ContinualLinear(nn.Module):
    """A frozen linear map plus a continual adapter (see the module docstring).

    Args:
        base: the frozen linear map (``nn.Linear``, GPT-2's ``Conv1D`` or a registered type), kept as is.
        in_features: width of the map's input.
        out_features: width of the map's output.
        config: the method's config (its options); None for a layer without options.
        max_tasks: tasks the layer holds; consolidating past the last one is an error naming the option.
        seed: the layer's seed (:func:`moram.adapters.seeding.layer_seed` of the run seed and its name).
    """

    seed_namespace: ClassVar[str] = "moram-adapter"
    """Separates the random streams of methods that share a layer seed."""

    capacity_option: ClassVar[str] = "model.max_tasks"
    """The option to name when the layer is full."""

    tasks_done: Tensor  # () long buffer: consolidations so far
    current_trained: Tensor  # () bool buffer: the present task's tensors were trained since the last consolidation

    def __init__(
        self, base: nn.Module, in_features: int, out_features: int, config: MethodConfig | None = None, *,
        max_tasks: int, seed: int = 0,
    ):
        super().__init__()
        if max_tasks < 1:
            raise CapacityError(f"{type(self).__name__}: {self.capacity_option} must be >= 1, got {max_tasks}")
        self.base = base
        self.config = config
        self.in_features, self.out_features = in_features, out_features
        self.seed = seed
        self._max_tasks = max_tasks
        weight = next(base.parameters(), None)
        self.factory_kwargs: dict[str, Any] = {
            "device": None if weight is None else weight.device,
            "dtype": None if weight is None or not weight.is_floating_point() else weight.dtype,
        }
        device = self.factory_kwargs["device"]
        self.register_buffer("tasks_done", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("current_trained", torch.zeros((), dtype=torch.bool, device=device))
        self._tasks_done = 0  # Python mirrors: forward never syncs with the device
        self._trained = False
        self.task_tensors: dict[str, TensorInit] = {}
        self.route_hooks: OrderedDict[int, Callable[[Tensor], None]] = OrderedDict()
        # After this layer *and its submodules* are loaded.
        self.register_load_state_dict_post_hook(_sync_after_load)

    # ------------------------------------------------------------------ what a subclass provides
    def delta(self, x: Tensor) -> Tensor | None:
        """The adapter's contribution ``(..., d_out)`` for ``x`` ``(..., d_in)``, or None when it adds nothing."""
        raise NotImplementedError

    def add_delta(self, x: Tensor, y: Tensor) -> Tensor:
        """``y + delta(x)``, where ``y = base(x)``; a subclass may fuse the addition."""
        d = self.delta(x)
        return y if d is None else y + d.to(y.dtype)

    def cost(self, num_tasks: int) -> LayerCost:
        """Parameters and FLOPs after ``num_tasks`` tasks (:mod:`moram.accounting`)."""
        raise NotImplementedError

    def end_task(self) -> None:
        """Freeze what the present task trained: each per-task tensor is copied into its task's slot."""
        task = self._tasks_done
        for name in self.task_tensors:
            current = full_value(getattr(self, "current_" + name))
            rows = current.shape[0]
            self.frozen_task_tensor_slots(name)[task * rows : (task + 1) * rows].copy_(current)

    def start_task(self) -> None:
        """Draw the tensors of the task that starts (``task_index`` already counts it); they are untrained."""
        for name in self.task_tensors:
            self.draw_task_tensor(name)
        self._set_trained(False)

    def current_parameters(self) -> list[nn.Parameter]:
        """The Parameters trained in the present task (their optimizer state is reset at boundaries).

        Default: the ``current_<name>`` Parameter of every per-task tensor.
        """
        return [getattr(self, "current_" + name) for name in self.task_tensors]

    def settings(self) -> dict[str, Any]:
        """What fixes this layer's shapes and what it learnt: the config's learnt options and ``max_tasks``.

        Compared when injecting twice and when loading an adapter file into an adapted model.
        """
        options = self.config.learnt_options() if self.config is not None else {}
        return {**options, "max_tasks": self._max_tasks}

    # ------------------------------------------------------------------ per-task tensors (fixed slots)
    def add_task_tensor(self, name: str, shape: Sequence[int], init: TensorInit) -> nn.Parameter:
        """Declare a tensor that each task gets afresh: ``current_<name>`` and ``frozen_<name>`` slots.

        ``current_<name>`` (``shape`` = ``(rows, ...)``) is the trainable Parameter of the present task,
        drawn now for task 0; ``frozen_<name>`` (``((max_tasks - 1)·rows, ...)``) is a buffer whose rows
        ``t·rows`` to ``(t + 1)·rows`` receive task ``t``'s tensor when it ends (tasks one after the other
        along the first dimension, so the filled part is one contiguous prefix). ``init``: ``"kaiming"``
        (rows Kaiming-uniform from the task's generator; ``shape`` is ``(rows, in_features)``) or ``"zeros"``.
        """
        kw = self.factory_kwargs
        current = nn.Parameter(torch.zeros(*shape, **kw))
        setattr(self, "current_" + name, current)
        rows, *rest = shape
        self.register_buffer("frozen_" + name, torch.zeros((self._max_tasks - 1) * rows, *rest, **kw))
        self.task_tensors[name] = init
        self.draw_task_tensor(name)
        current.register_post_accumulate_grad_hook(self._on_trained)
        return current

    @torch.no_grad()
    def draw_task_tensor(self, name: str) -> None:
        """Draw ``current_<name>`` for the present task (from its generator: reproducible, per layer and task)."""
        current = getattr(self, "current_" + name)
        if self.task_tensors[name] == "kaiming":
            value = self.kaiming_rows(int(current.shape[0]), self._tasks_done)
        else:
            value = torch.zeros(tuple(current.shape))
        assign_full(current, value)

    def frozen_task_tensor_slots(self, name: str) -> Tensor:
        """The whole ``frozen_<name>`` buffer ``((max_tasks - 1)·rows, ...)``, filled or not."""
        slots = getattr(self, "frozen_" + name)
        assert isinstance(slots, Tensor)
        return slots

    def frozen_task_tensor(self, name: str) -> Tensor:
        """The finished tasks' ``<name>`` tensors one after the other: ``(task_index·rows, ...)``, a view."""
        rows = getattr(self, "current_" + name).shape[0]
        return self.frozen_task_tensor_slots(name)[: self._tasks_done * rows]

    # ------------------------------------------------------------------ trained or not
    @property
    def uses_current(self) -> bool:
        """Whether the present task's units take part now: always in training, at inference once trained."""
        return self.training or self._trained

    def mark_trained(self) -> None:
        """Record that the present task's tensors have been trained (they take part in inference from now on)."""
        if not self._trained:
            self._set_trained(True)

    def _on_trained(self, param: Tensor) -> None:
        self.mark_trained()

    def _set_trained(self, trained: bool) -> None:
        self._trained = trained
        self.current_trained.fill_(trained)

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
            raise CapacityError(
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
        self._trained = bool(self.current_trained)

    def settings_record(self) -> Tensor:
        """:meth:`settings` (and the widths) as a JSON byte tensor: the ``settings`` entry of the state dict."""
        record = {"in_features": self.in_features, "out_features": self.out_features, **self.settings()}
        return torch.tensor(list(json.dumps(record, sort_keys=True).encode()), dtype=torch.uint8)

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:  # type: ignore[override]
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + SETTINGS_KEY] = self.settings_record()

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        from moram.upgrades import upgrade_layer_state

        upgrade_layer_state(self, state_dict, prefix)
        stored = state_dict.pop(prefix + SETTINGS_KEY, None)
        if stored is not None:
            self._check_settings(stored, prefix)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _check_settings(self, stored: Tensor, prefix: str) -> None:
        """Refuse the state of a layer built with other settings, naming each difference."""
        mine = json.loads(bytes(self.settings_record().tolist()).decode())
        try:
            theirs = json.loads(bytes(stored.to(torch.uint8).tolist()).decode())
        except (ValueError, UnicodeDecodeError) as err:
            raise StateError(f"layer '{prefix.rstrip('.')}': the state's settings entry is unreadable") from err
        diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
        if diff:
            detail = ", ".join(f"{k}: checkpoint {a} vs model {b}" for k, (a, b) in diff.items())
            raise StateError(
                f"layer '{prefix.rstrip('.')}' does not fit the checkpoint ({detail}); build the model with the "
                "settings the checkpoint was trained with"
            )

    def extra_repr(self) -> str:
        details = ", ".join(f"{k}={v}" for k, v in self.settings().items() if k != "max_tasks")
        return f"in={self.in_features}, out={self.out_features}, tasks_done={self._tasks_done}/{self._max_tasks}" + (
            f", {details}" if details else ""
        )

