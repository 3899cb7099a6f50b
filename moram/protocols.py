"""The small protocols callbacks rely on; they never depend on moram's LightningModules.

* :class:`AtomHost` — a module that can list its routed layers. Any module works without
  implementing it: :func:`find_atom_layers` falls back to finding ``AtomLinear`` modules by type.
* :class:`TaskStream` — a DataModule (or anything) that knows the task sequence.
* Scores: a LightningModule reports its score on task ``name`` (in percent, 0–100) by logging it
  under :func:`score_key` during validation; the continual-metrics callback reads it from there.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import nn

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
