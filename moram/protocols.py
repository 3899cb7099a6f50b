"""What callbacks may use, and nothing else: a leaf module that imports nothing from moram.

Vocabulary (used the same way everywhere in moram):

* a **continual layer** (:class:`ContinualLayer`) is any adapter layer that changes task by task:
  MoRAM's ``AtomLinear`` and every baseline layer. A task-boundary callback drives it through
  ``task_index``, ``max_tasks``, ``consolidate()`` and ``current_parameters()``; reading and writing
  sharded Parameters is the layer's own business, so the callback needs nothing else;
* a **routed layer** (:class:`RoutedLayer`) is a continual layer that routes every token over units
  (atoms, experts) born ``units_per_task`` at a time, and reports its routing weights to a hook
  (telemetry, ``AtomUsageCallback``);
* a **task stream** (:class:`TaskStream`) knows the task sequence (a DataModule, usually); its
  ``current_task`` is the one source of the index of the task being trained (:func:`current_task`);
* a **score**: a LightningModule reports its score on task ``name`` (in percent, 0–100) by logging it
  under :func:`score_key` during validation; the continual-metrics callback reads it from there. A
  module that can also score every task on demand (:class:`TaskEvaluator`) lets the callback fill
  the row of a run resumed right after a task ended, whose validation Lightning skips.

Layers are found structurally (by the members of their class), never by importing a layer type, so
a layer a user writes works with every callback. Names are given without the parts that wrappers add
(DDP ``module``, ``torch.compile``'s ``_orig_mod``, FSDP1 and activation checkpointing).

Example:
    >>> from torch import nn
    >>> continual_layers(nn.Sequential(nn.Linear(2, 2)))
    []
    >>> clean_name("module._orig_mod.visual.blocks.0.attn.q_proj")
    'visual.blocks.0.attn.q_proj'
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol, TypeGuard, runtime_checkable

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

SCORE_PREFIX = "eval/score/"

WRAPPER_PARTS = ("_orig_mod", "module", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")
"""Name parts added by ``torch.compile``, DDP, FSDP1 and activation checkpointing."""


def score_key(task_name: str) -> str:
    """Metric name under which a module logs its validation score (0–100) on ``task_name``."""
    return f"{SCORE_PREFIX}{task_name}"


def clean_name(name: str) -> str:
    """Module name with wrapper parts (:data:`WRAPPER_PARTS`) removed."""
    return ".".join(part for part in name.split(".") if part not in WRAPPER_PARTS)


@runtime_checkable
class ContinualLayer(Protocol):
    """A layer a task-boundary callback can drive."""

    @property
    def task_index(self) -> int:
        """Tasks consolidated so far (the same on every rank)."""
        ...

    @property
    def max_tasks(self) -> int:
        """Tasks the layer can hold."""
        ...

    def consolidate(self) -> None:
        """End the present task: freeze (or keep) what it trained and prepare the next task."""
        ...

    def current_parameters(self) -> list[nn.Parameter]:
        """The Parameters trained in the present task (their optimizer state is reset at boundaries)."""
        ...


@runtime_checkable
class RoutedLayer(ContinualLayer, Protocol):
    """A continual layer routing every token over units born ``units_per_task`` at a time, in birth order."""

    @property
    def units_per_task(self) -> int: ...

    @property
    def route_capacity(self) -> int: ...

    def register_route_hook(self, hook: Callable[[Tensor], None]) -> RemovableHandle:
        """Call ``hook(w)`` with the routing weights ``(..., N)`` over the routed units at every forward."""
        ...


@runtime_checkable
class ContinualHost(Protocol):
    """A module that lists its continual layers itself (possibly none: a zero-shot model trains nothing)."""

    def continual_layers(self) -> list[tuple[str, ContinualLayer]]: ...


@runtime_checkable
class ShardedHost(Protocol):
    """A module whose Parameters must be gathered before a layer can read or write them in full (FSDP1)."""

    def full_parameters(self) -> AbstractContextManager[None]:
        """A context inside which every Parameter is readable and writable in full."""
        ...


@runtime_checkable
class AdapterExporter(Protocol):
    """A module that can write its adapters (not its backbone) to a folder, e.g. after every task."""

    def export_adapters(self, directory: Path) -> bool:
        """Write the adapter state to ``directory`` (every rank calls it); False when there is nothing to write."""
        ...


@runtime_checkable
class TaskStream(Protocol):
    """What callbacks may ask of the task sequence."""

    @property
    def num_tasks(self) -> int: ...

    @property
    def task_names(self) -> list[str]: ...

    @property
    def current_task(self) -> int: ...


@runtime_checkable
class TaskEvaluator(Protocol):
    """A module that scores every task of the stream on demand, outside Lightning's validation loop."""

    def evaluate_tasks(self) -> dict[str, float]:
        """Every task's validation score now, under the names validation logs it under (:func:`score_key`, views).

        Every rank calls it (the scores are synced across ranks); it logs nothing and leaves the model as it was.
        """
        ...


def current_task(trainer: object) -> int:
    """Index of the task being trained: the task stream's ``current_task``, the one source of it in moram.

    ``trainer.datamodule`` when it is a :class:`TaskStream`; otherwise (any other datamodule) the
    trainer's ``current_epoch``, one epoch being one task.
    """
    stream = getattr(trainer, "datamodule", None)
    if is_task_stream(stream):
        return int(stream.current_task)
    return int(getattr(trainer, "current_epoch", 0))


_CONTINUAL = ("task_index", "max_tasks", "consolidate", "current_parameters")
_ROUTED = ("units_per_task", "route_capacity", "register_route_hook")


def is_task_stream(obj: object) -> TypeGuard[TaskStream]:
    """Whether ``obj`` has the :class:`TaskStream` attributes, checked on its class.

    ``isinstance(obj, TaskStream)`` would evaluate the properties (on Python 3.11), which may load
    the data; this looks only at the type.
    """
    return all(hasattr(type(obj), name) for name in ("num_tasks", "task_names", "current_task"))


def is_continual_layer(module: object) -> bool:
    """Whether the class of ``module`` has the :class:`ContinualLayer` members (checked on the type)."""
    return all(hasattr(type(module), name) for name in _CONTINUAL)


def is_routed_layer(module: object) -> bool:
    """Whether the class of ``module`` has the :class:`RoutedLayer` members (checked on the type)."""
    return is_continual_layer(module) and all(hasattr(type(module), name) for name in _ROUTED)


def continual_layers(module: nn.Module) -> list[tuple[str, ContinualLayer]]:
    """The continual layers of ``module`` in module order: its own list if it is a :class:`ContinualHost`.

    Otherwise found by type (:func:`is_continual_layer`); the insides of a found layer are not searched.
    """
    if isinstance(module, ContinualHost):
        return module.continual_layers()
    found: list[tuple[str, ContinualLayer]] = []
    inside: list[str] = []  # raw names of found layers; their submodules are not searched
    for name, m in module.named_modules():
        if any(not prefix or name.startswith(prefix + ".") for prefix in inside):
            continue
        if is_continual_layer(m):
            inside.append(name)
            found.append((clean_name(name), m))  # type: ignore[arg-type]
    return found


def routed_layers(module: nn.Module) -> list[tuple[str, RoutedLayer]]:
    """The continual layers of ``module`` that route tokens over units (:class:`RoutedLayer`), in module order."""
    return [(name, layer) for name, layer in continual_layers(module) if is_routed_layer(layer)]  # type: ignore[misc]
