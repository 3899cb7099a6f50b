"""Configuration of the atom banks: one small dataclass shared by injection, CLI and checkpoints."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class AtomConfig:
    """Settings of the rank-1 atom banks, one per target layer (MoRAM, DESIGN.md §1).

    The defaults are the paper's CLIP (X-TAIL) settings; :meth:`llm` gives its LLM (TRACE) settings.

    Args:
        rank: Atoms each target layer gains per task (the paper's r; a number of atoms, not a LoRA rank).
        top_k: Atoms each token routes to per layer; the bank uses k = min(max(top_k, 2), N).
        temperature: Softmax temperature tau applied to the normalised scores of the selected atoms.
        threshold: Inference-only gate delta: a selected atom whose normalised score is below it is dropped,
            without renormalising the others. None switches the gate off.
        scale: Multiplier of the bank's output, identical in training and inference.
        dropout: Dropout probability on the layer input before the keys (training only).
        max_tasks: Number of tasks the banks hold; the capacity max_tasks x rank is allocated once. None:
            taken from the task stream's number of tasks (moram's LightningModules fill it); injecting needs a
            number.
        targets: Module names to adapt: an exact name, a dotted suffix ("q_proj" matches
            "layers.0.attn.q_proj") or a regular expression prefixed with "re:" (matched against the full name).
            None uses the backbone's default target set.
        seed: Seed of the atom initialisation; each layer and task draws from its own generator.
        signed_scores: Select the top-k atoms by signed score (the paper); False selects by absolute score.
        reference: Compute every routed layer with the dense reference formula of moram.atoms.routing instead
            of the fast kernels (slow; for checking a suspected kernel). Same numbers up to rounding.

    Example:
        >>> AtomConfig(rank=4, max_tasks=3).capacity
        12
        >>> AtomConfig.llm().scale
        2.0
    """

    rank: int = 16
    top_k: int = 16
    temperature: float = 0.01
    threshold: float | None = 0.2
    scale: float = 1.0
    dropout: float = 0.0
    max_tasks: int | None = None
    targets: list[str] | None = None
    seed: int = 0
    signed_scores: bool = True
    reference: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when a value is out of range."""
        checks: list[tuple[str, bool, str]] = [
            ("rank", self.rank >= 1, "an integer >= 1"),
            ("top_k", self.top_k >= 1, "an integer >= 1"),
            ("temperature", self.temperature > 0, "a float > 0"),
            ("scale", self.scale == self.scale, "a finite float"),
            ("dropout", 0.0 <= self.dropout < 1.0, "a float in [0, 1)"),
            ("max_tasks", self.max_tasks is None or self.max_tasks >= 1, "None or an integer >= 1"),
            (
                "threshold",
                self.threshold is None or -1.0 <= self.threshold <= 1.0,
                "None or a float in [-1, 1] (scores are normalised)",
            ),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"AtomConfig.{name} must be {expected}, got {getattr(self, name)!r}")
        if self.targets is not None:
            if isinstance(self.targets, str):
                raise ValueError(
                    f"AtomConfig.targets must be a list of patterns, got the string {self.targets!r}; "
                    f"write [{self.targets!r}]"
                )
            if not self.targets:
                raise ValueError("AtomConfig.targets is an empty list; give patterns or None for the defaults")

    @property
    def capacity(self) -> int:
        """Atoms a bank can hold over the whole run: ``max_tasks * rank``."""
        if self.max_tasks is None:
            raise ValueError(
                "AtomConfig.max_tasks is None: set the number of tasks the atom banks must hold "
                "(with a task stream, moram's LightningModules take it from data)"
            )
        return self.max_tasks * self.rank

    @classmethod
    def llm(cls, **overrides: Any) -> AtomConfig:
        """The paper's LLM (TRACE) settings: r = k = 8, tau 0.03, delta 0.2, scale 2, dropout 0.1."""
        values: dict[str, Any] = {
            "rank": 8, "top_k": 8, "temperature": 0.03, "threshold": 0.2, "scale": 2.0, "dropout": 0.1
        }
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view, for the adapter sidecar and run directories.

        ``reference`` is left out: it says how to compute, not what the memory is, so files stay
        readable by versions without the switch.
        """
        values = dataclasses.asdict(self)
        del values["reference"]
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AtomConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown AtomConfig field(s) {unknown}; valid fields: {sorted(known)}")
        return cls(**values)


