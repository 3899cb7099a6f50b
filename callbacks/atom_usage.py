"""Which atoms route which task: selection counts, mean weights and a task-by-task routing matrix.

During every validation pass, a hook on each routed layer (:class:`moram.protocols.RoutedLayer`:
``AtomLinear``, or a baseline's experts) receives the routing weights ``w`` ``(..., N)`` of the
tokens of the task being evaluated (the validation dataloader index) and accumulates, per layer and
per evaluated task ``j``, over the units (atoms or experts) in bank order:

* ``selected[j, u]``: tokens for which unit ``u`` got a non-zero weight (in the top-k and, at
  inference, not gated off by delta);
* ``weight[j, u]``: the sum of its weights; ``weight / selected`` is its mean weight when selected.

A unit is born in task ``u // units_per_task``. The **routing matrix** ``M[i, j]`` is the share of
task ``j``'s routing weight (summed over tokens and layers) that goes to units born in task ``i``;
each column with any routing sums to 1. After each pass, on rank zero, ``atom_usage/<row>.json``
and two heatmaps (``<row>_routing.png``, ``<row>_selection.png``: per layer, the share of tokens
selecting each unit) are written to the run directory, and ``atom_usage/own_share/<task>`` (M[j, j])
and ``atom_usage/unused_fraction`` are logged.

Overhead: while a hook is registered the bank builds its coefficients from the weights it hands
to the hook (no recomputation; outputs are bit-identical), and the hook adds two (N,) reductions per
layer and batch into (tasks × capacity) tensors. Measured on the offline default model (tiny CLIP,
60 routed layers, 40 atoms each, batch 256, one thread, shared CPU): −2 % to +5 % of inference time,
within noise. Hooks exist only during validation.

Example:
    >>> from lightning.pytorch import Trainer
    >>> trainer = Trainer(callbacks=[AtomUsageCallback()], logger=False)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from typing_extensions import override

from moram.protocols import is_task_stream, routed_layers


def routing_matrix(weight: Tensor, units_per_task: int, num_born: int | None = None) -> Tensor:
    """``M[i, j]``: share of evaluated task ``j``'s routing weight that goes to units born in task ``i``.

    Args:
        weight: summed routing weights ``(J, C)``: evaluated task × unit (bank order), one layer or
            the sum of several layers with the same layout.
        units_per_task: units born per task (the rank for atoms, 1 for experts).
        num_born: rows of the result (tasks that can own units); default ``C // units_per_task``.

    Example:
        >>> routing_matrix(torch.tensor([[3.0, 1.0, 0.0, 0.0], [1.0, 0.0, 2.0, 1.0]]), units_per_task=2)
        tensor([[1.0000, 0.2500],
                [0.0000, 0.7500]])
    """
    num_eval, capacity = weight.shape
    born = num_born if num_born is not None else capacity // units_per_task
    by_birth = weight.float().reshape(num_eval, born, units_per_task).sum(-1)  # (J, born)
    total = by_birth.sum(-1, keepdim=True)  # (J, 1)
    return (by_birth / total.clamp_min(1e-30)).T.contiguous()  # (born, J)


class _LayerStats:
    """Accumulators of one routed layer: ``selected`` and ``weight`` (J, C), ``tokens`` (J,)."""

    def __init__(self, num_eval: int, capacity: int, units_per_task: int) -> None:
        self.selected = torch.zeros(num_eval, capacity, dtype=torch.float64)
        self.weight = torch.zeros(num_eval, capacity, dtype=torch.float64)
        self.tokens = torch.zeros(num_eval, dtype=torch.float64)
        self.units_per_task = units_per_task
        self.seen = 0  # units that took part in routing (the largest N seen)

    def add(self, task: int, w: Tensor) -> None:
        w = w.reshape(-1, w.shape[-1]).float()  # (T, N) token rows
        if self.selected.device != w.device:
            self.selected, self.weight, self.tokens = (
                t.to(w.device) for t in (self.selected, self.weight, self.tokens)
            )
        n = w.shape[-1]
        self.seen = max(self.seen, n)
        self.selected[task, :n] += (w > 0).sum(0).to(self.selected.dtype)
        self.weight[task, :n] += w.sum(0).to(self.weight.dtype)
        self.tokens[task] += w.shape[0]


class AtomUsageCallback(Callback):
    """Record per-layer, per-task atom usage and the task routing matrix at every validation.

    Args:
        output_dir: where to write ``atom_usage/``; None means ``trainer.log_dir``.
        save_plots: write the two PNG heatmaps per validation pass.
    """

    def __init__(self, output_dir: str | None = None, save_plots: bool = True) -> None:
        self.output_dir = output_dir
        self.save_plots = save_plots
        self.history: dict[str, list[list[float]]] = {}  # row label -> routing matrix
        self._stats: dict[str, _LayerStats] = {}
        self._handles: list[Any] = []
        self._task = 0
        self._dir: Path | None = None

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # trainer.log_dir is a collective (it broadcasts), so resolve it here on every rank
        self._dir = Path(self.output_dir) if self.output_dir is not None else Path(trainer.log_dir or ".")

    def _task_names(self, trainer: Trainer, num_eval: int) -> list[str]:
        stream = getattr(trainer, "datamodule", None)
        if is_task_stream(stream):
            names = list(stream.task_names)
            if len(names) == num_eval:
                return names
        return [f"task{j}" for j in range(num_eval)]

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.start(pl_module, num_eval=max(len(trainer.num_val_batches), 1))

    def start(self, model: torch.nn.Module, num_eval: int) -> None:
        """Hook every routed layer of ``model``; ``num_eval`` is the number of evaluated tasks."""
        self.stop()
        self._stats = {}
        for name, layer in routed_layers(model):
            stats = _LayerStats(num_eval, layer.route_capacity, layer.units_per_task)
            self._stats[name] = stats
            self._handles.append(layer.register_route_hook(self._recorder(stats)))

    def _recorder(self, stats: _LayerStats) -> Any:
        def record(w: Tensor) -> None:
            stats.add(self._task, w)

        return record

    def stop(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @override
    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._task = dataloader_idx

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.stop()
        if not self._stats:
            return
        for stats in self._stats.values():  # every rank saw its share of the samples
            stats.selected = trainer.strategy.reduce(stats.selected, reduce_op="sum")
            stats.weight = trainer.strategy.reduce(stats.weight, reduce_op="sum")
            stats.tokens = trainer.strategy.reduce(stats.tokens, reduce_op="sum")
        label = "zero_shot" if trainer.sanity_checking else f"after_task{trainer.current_epoch + 1}"
        report = self.summary(self._task_names(trainer, next(iter(self._stats.values())).tokens.shape[0]))
        self.history[label] = report["routing_matrix"]
        if not trainer.sanity_checking:
            names = report["task_names"]
            own = report["routing_matrix"]
            for j, name in enumerate(names):
                if j < len(own):
                    pl_module.log(f"atom_usage/own_share/{name}", float(own[j][j]), sync_dist=False)
            pl_module.log("atom_usage/unused_fraction", float(report["unused_fraction"]), sync_dist=False)
        self._write(label, report)

    def summary(self, task_names: list[str]) -> dict[str, Any]:
        """JSON-ready view of the accumulated statistics (routing matrix summed over layers)."""
        layers: dict[str, Any] = {}
        by_birth: list[Tensor] = []  # per layer (born, J): summed weight by birth task
        used = existing = 0
        for name, s in self._stats.items():
            weight, selected = s.weight.cpu(), s.selected.cpu()
            born = weight.shape[1] // s.units_per_task
            by_birth.append(weight.reshape(weight.shape[0], born, s.units_per_task).sum(-1).T)
            used += int((selected.sum(0) > 0).sum())
            existing += s.seen
            layers[name] = {
                "selection_frequency": (selected / s.tokens.cpu().clamp_min(1).unsqueeze(-1)).tolist(),
                "mean_weight": (weight / selected.clamp_min(1)).tolist(),
                "routing_matrix": routing_matrix(weight, s.units_per_task, born).tolist(),
            }
        rows = max(t.shape[0] for t in by_birth)
        total = sum(torch.nn.functional.pad(t, (0, 0, 0, rows - t.shape[0])) for t in by_birth)
        assert isinstance(total, Tensor)
        share = total / total.sum(0, keepdim=True).clamp_min(1e-30)  # (born, J)
        return {
            "task_names": task_names,
            "routing_matrix": share.tolist(),
            "unused_fraction": 0.0 if not existing else 1.0 - used / existing,
            "layers": layers,
        }

    @rank_zero_only
    def _write(self, label: str, report: dict[str, Any]) -> None:
        if self._dir is None:
            return
        out = self._dir / "atom_usage"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{label}.json").write_text(json.dumps(report) + "\n")
        if self.save_plots:
            _plot(out, label, report)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": dict(self.history)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = dict(state_dict.get("history", {}))


def _plot(out: Path, label: str, report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = report["task_names"]
    matrix = torch.tensor(report["routing_matrix"])
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(names), 1 + 0.6 * matrix.shape[0]))
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(matrix.shape[0]), [f"born in {i + 1}" for i in range(matrix.shape[0])])
    ax.set_xlabel("evaluated task")
    ax.set_title(f"routing weight share ({label})")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out / f"{label}_routing.png", dpi=80)
    plt.close(fig)
    layers = report["layers"]
    freq = [torch.tensor(v["selection_frequency"]).mean(0) for v in layers.values()]  # per layer (C,)
    width = max(len(f) for f in freq)
    grid = torch.stack([torch.nn.functional.pad(f, (0, width - len(f))) for f in freq])  # (layers, C)
    fig, ax = plt.subplots(figsize=(2 + 0.08 * width, 2 + 0.08 * len(freq)))
    im = ax.imshow(grid, aspect="auto", vmin=0, vmax=1, cmap="magma")
    ax.set_xlabel("unit (bank order, frozen first)")
    ax.set_ylabel("layer")
    ax.set_title(f"share of tokens selecting each unit ({label})")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out / f"{label}_selection.png", dpi=80)
    plt.close(fig)
