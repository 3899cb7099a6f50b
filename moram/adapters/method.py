"""A continual adaptation *method* is a config: a frozen dataclass of its own hyperparameters.

Like peft's ``LoraConfig``, a :class:`MethodConfig` holds only what defines the method (a rank, a
temperature, ...) and names the layer class it puts on every target (``layer_class``). Run-level
settings — which modules to adapt, how many tasks the layers hold, the seed — are not part of it:
they belong to the injector and to :class:`~moram.module.ContinualModule` (``model.targets``,
``model.max_tasks``, ``model.seed``). MoRAM (:class:`moram.atoms.MoRAMConfig`) is one method among
the baselines of :mod:`moram.baselines`; no code asks which one it is.

Adding a method is a config and a layer (docs/design.md §3.3)::

    @dataclass(frozen=True)
    class ShiftConfig(MethodConfig):
        scale: float = 1.0
        layer_class: ClassVar[type] = ShiftLinear    # a ContinualLinear subclass

    ContinualModule(backbone=..., method=ShiftConfig(scale=2.0))   # or --model.method my_pkg.ShiftConfig

The layer's constructor is ``layer_class(base, in_features, out_features, config, *, max_tasks, seed)``;
it reads its options from ``config``, so each option is written once (the field and its docstring).
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from moram.adapters.inject import inject_layers
from moram.errors import ConfigError

if TYPE_CHECKING:
    from moram.adapters.layer import ContinualLinear


class MethodConfig(abc.ABC):  # noqa: B024 -- abstract so jsonargparse offers its subclasses (class_path)
    """Base of method configs (see the module docstring); subclasses are frozen dataclasses.

    Class attributes a subclass sets:

    * ``layer_class``: the :class:`~moram.adapters.layer.ContinualLinear` subclass put on every target
      (None for a method that adapts nothing);
    * ``runtime_options``: fields that only say how to compute at inference or in training (not what was
      learnt), so they may differ between an adapter file and the model it is loaded into.
    """

    layer_class: ClassVar[type[ContinualLinear] | None] = None
    runtime_options: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------ building layers
    def make_layer(
        self, base: nn.Module, in_features: int, out_features: int, *, max_tasks: int, seed: int
    ) -> ContinualLinear:
        """The continual layer to put on ``base`` (seeded ``seed``, holding ``max_tasks`` tasks)."""
        if self.layer_class is None:
            raise NotImplementedError(f"{type(self).__name__} builds no layer")
        return self.layer_class(base, in_features, out_features, self, max_tasks=max_tasks, seed=seed)

    def inject(self, model: nn.Module, targets: Sequence[str], *, max_tasks: int, seed: int = 0) -> list[str]:
        """Adapt the ``targets`` of ``model`` in place and freeze the rest; returns the adapted names.

        Args:
            model: any ``nn.Module``.
            targets: module names, dotted suffixes or ``re:`` patterns (:func:`moram.adapters.target_matches`).
            max_tasks: tasks each layer holds (``model.max_tasks``).
            seed: the run seed; each layer draws from its own seed derived from it and its name.
        """

        def make(base: nn.Module, d_in: int, d_out: int, layer_seed: int) -> ContinualLinear:
            return self.make_layer(base, d_in, d_out, max_tasks=max_tasks, seed=layer_seed)

        if max_tasks is None or int(max_tasks) < 1:
            raise ConfigError(f"model.max_tasks must be an integer >= 1 to build {type(self).__name__}'s layers, "
                              f"got {max_tasks!r}")
        return inject_layers(model, targets, make, seed=seed, option="model.targets")

    # ------------------------------------------------------------------ views
    def options(self) -> dict[str, Any]:
        """The method's hyperparameters as a plain dict (JSON-ready)."""
        if dataclasses.is_dataclass(self):
            return dataclasses.asdict(self)
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def learnt_options(self) -> dict[str, Any]:
        """:meth:`options` without ``runtime_options``: what must match to load what was learnt."""
        return {k: v for k, v in self.options().items() if k not in self.runtime_options}

    def to_dict(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": {...}}``: the form configs and adapter files use."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": self.options()}

    def check(self, name: str, ok: bool, expected: str) -> None:
        """Raise :class:`~moram.errors.ConfigError` naming ``<Config>.<name>`` unless ``ok``."""
        if not ok:
            raise ConfigError(f"{type(self).__name__}.{name} must be {expected}, got {getattr(self, name)!r}")


def method_from_dict(spec: dict[str, Any]) -> MethodConfig:
    """The method config of ``{"class_path", "init_args"}`` (the inverse of :meth:`MethodConfig.to_dict`).

    Class paths of earlier moram versions are mapped by :func:`moram.upgrades.upgrade_method_spec`.
    """
    from moram.upgrades import upgrade_method_spec

    spec = upgrade_method_spec(spec)
    path = str(spec.get("class_path", ""))
    module_name, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"unknown method class_path {path!r}: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, MethodConfig)):
        raise ConfigError(f"{path!r} is not a moram method config (a moram.adapters.MethodConfig subclass)")
    args = dict(spec.get("init_args") or {})
    if dataclasses.is_dataclass(cls):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown} of {cls.__name__}; valid: {sorted(known)}")
    return cls(**args)


AdapterMethod = MethodConfig
"""The earlier name of :class:`MethodConfig` (a subclass overriding :meth:`~MethodConfig.make_layer` still works)."""
