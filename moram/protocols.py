"""The small protocols callbacks rely on; they never depend on moram's LightningModules.

* :class:`AtomHost` — a module that can list its routed layers. Any module works without
  implementing it: :func:`find_atom_layers` falls back to finding ``AtomLinear`` modules by type.
* :class:`ContinualLayer` — any adapted layer that grows or changes per task (``AtomLinear``, the
  baselines of :mod:`moram.baselines`): it consolidates at task boundaries and names its trainable
  Parameters. :class:`ContinualHost` lists them; :func:`find_continual_layers` finds them either way.
* :class:`RoutedLayer` — a layer that routes each token over units (atoms, experts) born task by
  task and reports its routing weights to a hook (for ``AtomUsageCallback``).
* :class:`TaskStream` — a DataModule (or anything) that knows the task sequence.
* Scores: a LightningModule reports its score on task ``name`` (in percent, 0–100) by logging it
  under :func:`score_key` during validation; the continual-metrics callback reads it from there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from moram.atoms.inject import routed_layers
from moram.atoms.linear import AtomLinear

SCORE_PREFIX = "eval/score/"


def score_key(task_name: str) -> str:
    """Metric name under which a module logs its validation score (0–100) on ``task_name``."""
    return f"{SCORE_PREFIX}{task_name}"


@runtime_checkable
class AtomHost(Protocol):
    """A module that lists its routed layers (name, layer), in a fixed order on every rank."""

    def atom_layers(self) -> list[tuple[str, AtomLinear]]: ...


@runtime_checkable
class ContinualLayer(Protocol):
    """An adapted layer a task-boundary callback can drive."""

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
class ContinualHost(Protocol):
    """A module that lists its continual layers (possibly none: a zero-shot model trains nothing)."""

    def continual_layers(self) -> list[tuple[str, ContinualLayer]]: ...


@runtime_checkable
class RoutedLayer(Protocol):
    """A layer routing every token over units born ``units_per_task`` at a time, in birth order."""

    @property
    def units_per_task(self) -> int: ...

    @property
    def route_capacity(self) -> int: ...

    def register_route_hook(self, hook: Callable[[Tensor], None]) -> RemovableHandle:
        """Call ``hook(w)`` with the routing weights ``(..., N)`` over the routed units at every forward."""
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


def is_task_stream(obj: object) -> bool:
    """Whether ``obj`` has the :class:`TaskStream` attributes, checked on its class.

    ``isinstance(obj, TaskStream)`` would evaluate the properties (on Python 3.11), which may load
    the data; this looks only at the type.
    """
    return all(hasattr(type(obj), name) for name in ("num_tasks", "task_names", "current_task"))


def find_atom_layers(module: nn.Module) -> list[tuple[str, AtomLinear]]:
    """The routed layers of ``module``: its own list if it is an :class:`AtomHost`, else found by type."""
    if isinstance(module, AtomHost):
        return module.atom_layers()
    return routed_layers(module)


def _is_continual_layer(module: nn.Module) -> bool:
    kind = type(module)
    return all(hasattr(kind, name) for name in ("task_index", "max_tasks", "consolidate", "current_parameters"))


def find_continual_layers(module: nn.Module) -> list[tuple[str, ContinualLayer]]:
    """The continual layers of ``module``: its own list if it is a :class:`ContinualHost`, else found by type.

    Found by their class having the :class:`ContinualLayer` members (``AtomLinear`` and every
    baseline layer); the insides of a found layer are not searched.
    """
    from moram.atoms.inject import clean_name

    if isinstance(module, ContinualHost):
        return module.continual_layers()
    found: list[tuple[str, ContinualLayer]] = []
    inside: list[str] = []  # raw names of found layers; their submodules are not searched
    for name, m in module.named_modules():
        if any(not prefix or name.startswith(prefix + ".") for prefix in inside):
            continue
        if _is_continual_layer(m):
            inside.append(name)
            found.append((clean_name(name), m))  # type: ignore[arg-type]
    return found


def find_routed_layers(module: nn.Module) -> list[tuple[str, RoutedLayer]]:
    """The continual layers of ``module`` that route tokens over units (:class:`RoutedLayer`)."""
    return [
        (name, layer)  # type: ignore[misc]
        for name, layer in find_continual_layers(module)
        if all(hasattr(type(layer), a) for a in ("units_per_task", "route_capacity", "register_route_hook"))
    ]
