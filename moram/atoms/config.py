"""MoRAM's method config (:class:`MoRAMConfig`) and :class:`AtomConfig`, the one-object form of the Python API."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from moram.adapters.method import MethodConfig
from moram.atoms.linear import AtomLinear
from moram.errors import ConfigError

if TYPE_CHECKING:
    from moram.adapters.layer import ContinualLinear


@dataclass(frozen=True)
class MoRAMConfig(MethodConfig):
    """MoRAM: a bank of rank-1 atoms on every target layer, routed by their own keys (docs/design.md §1).

    The defaults are the paper's CLIP (X-TAIL) settings; :meth:`llm` gives its LLM (TRACE) settings.

    Args:
        rank: Atoms each target layer gains per task (the paper's r; a number of atoms, not a LoRA rank).
        top_k: Atoms each token routes to per layer; the layer uses k = min(max(top_k, 2), N).
        temperature: Softmax temperature tau applied to the normalised scores of the selected atoms.
        threshold: Inference-only gate delta: a selected atom whose normalised score is below it is dropped,
            without renormalising the others. None switches the gate off (on the command line, ``-1``
            does the same: normalised scores are >= -1).
        scale: Multiplier of the atoms' output, identical in training and inference.
        dropout: Dropout probability on the layer input before the keys (training only).
        signed_scores: Select the top-k atoms by signed score (the paper); False selects by absolute score.
        reference: Compute every routed layer with the dense reference formula of moram.atoms.routing instead
            of the fast kernels (slow; for checking a suspected kernel). Same numbers up to rounding.

    Example:
        >>> MoRAMConfig.llm().scale
        2.0
        >>> MoRAMConfig(rank=0)
        Traceback (most recent call last):
        ...
        moram.errors.ConfigError: MoRAMConfig.rank must be an integer >= 1, got 0
    """

    rank: int = 16
    top_k: int = 16
    temperature: float = 0.01
    threshold: float | None = 0.2
    scale: float = 1.0
    dropout: float = 0.0
    signed_scores: bool = True
    reference: bool = False

    layer_class: ClassVar[type[ContinualLinear] | None] = AtomLinear
    runtime_options: ClassVar[tuple[str, ...]] = ("threshold", "dropout", "reference")

    def __post_init__(self) -> None:
        self.check("rank", isinstance(self.rank, int) and self.rank >= 1, "an integer >= 1")
        self.check("top_k", isinstance(self.top_k, int) and self.top_k >= 1, "an integer >= 1")
        self.check("temperature", self.temperature > 0, "a float > 0")
        self.check("scale", self.scale == self.scale, "a finite float")
        self.check("dropout", 0.0 <= self.dropout < 1.0, "a float in [0, 1)")
        self.check(
            "threshold", self.threshold is None or -1.0 <= self.threshold <= 1.0,
            "None or a float in [-1, 1] (scores are normalised)",
        )

    @classmethod
    def llm(cls, **overrides: Any) -> MoRAMConfig:
        """The paper's LLM (TRACE) settings: r = k = 8, tau 0.03, delta 0.2, scale 2, dropout 0.1."""
        values: dict[str, Any] = {
            "rank": 8, "top_k": 8, "temperature": 0.03, "threshold": 0.2, "scale": 2.0, "dropout": 0.1
        }
        values.update(overrides)
        return cls(**values)


_METHOD_FIELDS = tuple(f.name for f in dataclasses.fields(MoRAMConfig))


@dataclass(frozen=True)
class AtomConfig(MoRAMConfig):
    """MoRAM's options and the run-level ones (capacity, targets, seed) in one object, for the Python API.

    ``inject_atoms(model, AtomConfig(...))`` is the short way to put atoms into any model;
    :attr:`method` is the :class:`MoRAMConfig` part. In a run, ``model.method`` holds the MoRAM options
    and ``model.max_tasks`` / ``model.targets`` / ``model.seed`` the others. MoRAM's options are
    :class:`MoRAMConfig`'s fields (inherited, written once).

    Args:
        max_tasks: Number of tasks the layers hold; the capacity max_tasks x rank is allocated once.
        targets: Module names to adapt: an exact name, a dotted suffix ("q_proj" matches
            "layers.0.attn.q_proj") or a regular expression prefixed with "re:" (matched against the full name).
            None uses the backbone's default target set.
        seed: Seed of the atom initialisation; each layer and task draws from its own generator.

    Example:
        >>> AtomConfig(rank=4, max_tasks=3).capacity
        12
        >>> AtomConfig.llm().method == MoRAMConfig.llm()
        True
    """

    max_tasks: int | None = None
    targets: list[str] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except ConfigError as err:
            raise ConfigError(str(err).replace("MoRAMConfig.", "AtomConfig.")) from None
        if self.max_tasks is not None and self.max_tasks < 1:
            raise ConfigError(f"AtomConfig.max_tasks must be None or an integer >= 1, got {self.max_tasks!r}")
        if self.targets is not None:
            if isinstance(self.targets, str):
                raise ConfigError(
                    f"AtomConfig.targets must be a list of patterns, got the string {self.targets!r}; "
                    f"write [{self.targets!r}]"
                )
            if not self.targets:
                raise ConfigError("AtomConfig.targets is an empty list; give patterns or None for the defaults")

    def validate(self) -> None:
        """Raise :class:`~moram.errors.ConfigError` naming the field when a value is out of range."""
        self.__post_init__()

    @property
    def method(self) -> MoRAMConfig:
        """The MoRAM options of this config (a plain :class:`MoRAMConfig`)."""
        return MoRAMConfig(**{name: getattr(self, name) for name in _METHOD_FIELDS})

    @classmethod
    def from_method(cls, method: MoRAMConfig, **run: Any) -> AtomConfig:
        """An AtomConfig of ``method``'s options and the run-level ``run`` ones (max_tasks, targets, seed)."""
        return cls(**method.options(), **run)

    @property
    def capacity(self) -> int:
        """Atoms a layer can hold over the whole run: ``max_tasks * rank``."""
        if self.max_tasks is None:
            raise ConfigError(
                "AtomConfig.max_tasks is None: set the number of tasks the atom layers must hold "
                "(in a run, model.max_tasks: null takes it from the data)"
            )
        return self.max_tasks * self.rank

    @classmethod
    def llm(cls, **overrides: Any) -> AtomConfig:  # type: ignore[override]
        """The paper's LLM (TRACE) settings: r = k = 8, tau 0.03, delta 0.2, scale 2, dropout 0.1."""
        values = MoRAMConfig.llm().options()
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """Plain-JSON view (``reference`` left out: it says how to compute, not what the memory is)."""
        values = dataclasses.asdict(self)
        del values["reference"]
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AtomConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown AtomConfig field(s) {unknown}; valid fields: {sorted(known)}")
        return cls(**values)
