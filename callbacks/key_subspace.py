"""Key-subspace protection (opt-in): keep a new task's keys out of the input subspace of earlier tasks.

MoRAM routes every token by its keys (``s_i = a_i·x``, DESIGN.md §1), so a later task's atoms take
routing weight from an earlier task's inputs whenever their keys respond to those inputs (the
*leakage* that :class:`~moram.callbacks.AtomUsageCallback` reports). This callback applies the
gradient-projection remedy of GPM (Saha et al., ICLR 2021) / InfLoRA (Liang & Li, CVPR 2024) to
the keys, per adapted layer:

* **collect**: during each task's training, a forward pre-hook on every layer with atom keys adds
  ``xᵀx`` of (at most ``tokens_per_step``, strided) rows of its input ``x`` to the task's
  covariance ``C`` (summed over DDP ranks before it is used);
* **fold** (at the first batch of task ``t``, before its first forward): the layer's basis ``U``
  (``d_in × m``, orthonormal, of every earlier task) is extended GPM-style with the leading
  eigenvectors of the residual ``(I − UUᵀ) C (I − UUᵀ)`` until ``U`` holds ``threshold`` of the
  energy ``tr C`` of the task's inputs (never more than ``max_fraction · d_in`` directions, so new
  keys keep room);
* **protect** the current keys ``A`` (``r × d_in``) of task ``t``: their initialisation and every
  update are projected onto the orthogonal complement, ``A ← A − (A U) Uᵀ``: the gradient by a
  hook on the key Parameter (Adam's moments only ever see the projected gradient), and the keys
  themselves at their first forward in the task and after every optimizer step (``on_train_batch_end``).

What is guaranteed: the current keys are orthogonal to ``U`` (to float rounding) whenever they are
used or stored: in every forward, after every optimizer step, in checkpoints, and when they are
frozen. A pure gradient projection would not give this with Adam/AdamW: Adam rescales each
coordinate of the projected gradient by its own ``1/√v``, and that rescaled update leaves the
complement; the projection of the keys after each step removes that part (and weight decay, a
multiple of the keys, keeps them in the complement). Frozen atoms and values are never touched.
So an earlier task's input ``x`` (``≈ UUᵀx`` up to the ``1 − threshold`` energy left out) gets
``a·x ≈ 0`` from the new keys.

Off by default (the paper's method stays the default); add it with
``trainer.callbacks: [{class_path: moram.callbacks.KeySubspaceCallback}]`` or
``--trainer.callbacks+=moram.callbacks.KeySubspaceCallback``. It needs one epoch per task (as
:class:`~moram.callbacks.TaskBoundaryCallback`) and replicated keys (single device or DDP; FSDP2's
sharded keys are refused). Its state (bases, the task's covariance, the task count) is in the
callback's checkpoint state, so ``--ckpt_path last`` resumes exactly. Cost: ``d_in × d_in``
float32 per layer for the covariance (in checkpoints too) plus ``d_in × m`` for the basis; per step
one ``(tokens_per_step × d_in)ᵀ`` product per layer.

Measured (``benchmarks/key_subspace.py``, ``benchmarks/results/key_subspace/``): leakage falls from
~50 % to 0.5 % (``clip_cl``) and 3.5 % (``llm_cl``), but later tasks learn less, since their inputs
share the earlier tasks' subspace: ``clip_cl`` Last 96.1 → 88.2 (91.5 at threshold 0.8; 3 seeds);
``llm_cl`` Last 26.6 → 38.2 (42.4 at 0.8; 2 seeds), learning 96.5 → 44.9 (79.5). Not a recommended default.

Example:
    >>> from lightning.pytorch import Trainer
    >>> trainer = Trainer(callbacks=[KeySubspaceCallback(threshold=0.97)], logger=False)
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from moram.protocols import RoutedLayer, is_task_stream, routed_layers

__all__ = ["KeySubspaceCallback", "extend_basis", "project_out"]


def project_out(rows: Tensor, basis: Tensor) -> Tensor:
    """``rows − (rows U) Uᵀ``: the rows ``(..., d)`` projected onto the orthogonal complement of ``U`` ``(d, m)``.

    Example:
        >>> project_out(torch.tensor([[1.0, 2.0, 3.0]]), torch.eye(3)[:, :2])
        tensor([[0., 0., 3.]])
    """
    if basis.shape[1] == 0:
        return rows
    return rows - (rows @ basis) @ basis.T


def extend_basis(basis: Tensor | None, cov: Tensor, threshold: float, max_dims: int | None = None) -> Tensor:
    """GPM's basis update from a task's input covariance ``C = Σ x xᵀ`` ``(d, d)``.

    The returned orthonormal ``(d, m')`` basis starts with ``basis`` (``(d, m)``, or None: empty) and
    adds the fewest leading eigenvectors of the residual ``(I − UUᵀ) C (I − UUᵀ)`` for which the
    energy of the task's inputs inside the basis, ``tr(Uᵀ C U)``, reaches ``threshold · tr(C)``
    (none when it already does), at most ``max_dims`` directions in all. Computed in float64; the
    result has ``cov``'s dtype.

    Example:
        >>> extend_basis(None, torch.diag(torch.tensor([9.0, 1.0, 0.0])), 0.8).abs()
        tensor([[1.],
                [0.],
                [0.]])
    """
    d = cov.shape[0]
    c = cov.double()
    c = (c + c.T) / 2
    u = torch.zeros(d, 0, dtype=torch.float64, device=cov.device) if basis is None else basis.double()
    limit = d if max_dims is None else min(max_dims, d)
    total = float(torch.trace(c))
    captured = float(torch.trace(u.T @ c @ u)) if u.shape[1] else 0.0
    need = threshold * total - captured
    if total <= 0 or need <= 0 or u.shape[1] >= limit:
        return u.to(cov.dtype)
    p = torch.eye(d, dtype=torch.float64, device=cov.device) - u @ u.T
    residual = p @ c @ p
    evals, evecs = torch.linalg.eigh((residual + residual.T) / 2)  # ascending
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    cum = torch.cumsum(evals, 0)
    k = int(torch.searchsorted(cum, torch.tensor(need, dtype=torch.float64, device=cov.device))) + 1
    k = min(k, limit - u.shape[1], int((evals > 0).sum()))
    if k <= 0:
        return u.to(cov.dtype)
    new = evecs[:, :k]
    new = new - u @ (u.T @ new)  # orthogonal to the old basis up to rounding; make it so
    new, _ = torch.linalg.qr(new)
    return torch.cat([u, new], 1).to(cov.dtype)


def _key_parameter(layer: nn.Module) -> nn.Parameter | None:
    """The current keys ``(r, d_in)`` of a routed layer with atom keys (MoRAM's ``AtomLinear``), else None."""
    owner = getattr(layer, "bank", layer)
    keys = getattr(owner, "current_keys", None)
    return keys if isinstance(keys, nn.Parameter) else None


class KeySubspaceCallback(Callback):
    """Project the current atom keys off the input subspace of earlier tasks (see the module docstring).

    Args:
        threshold: share of each task's input energy (per layer) the basis must hold, GPM's
            threshold; 0 keeps every basis empty (the callback then only collects, changing nothing).
        tokens_per_step: input rows per layer and training forward added to the covariance (strided
            over the batch's tokens; all when fewer).
        max_fraction: the basis of a layer never holds more than this share of its input
            dimensions, so a new task's keys always keep ``(1 − max_fraction) · d_in`` free directions.
    """

    def __init__(self, threshold: float = 0.97, tokens_per_step: int = 256, max_fraction: float = 0.9) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"KeySubspaceCallback: threshold must be in [0, 1], got {threshold}")
        if tokens_per_step < 1:
            raise ValueError(f"KeySubspaceCallback: tokens_per_step must be >= 1, got {tokens_per_step}")
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"KeySubspaceCallback: max_fraction must be in [0, 1], got {max_fraction}")
        self.threshold = threshold
        self.tokens_per_step = tokens_per_step
        self.max_fraction = max_fraction
        self.tasks_in_basis = 0  # tasks whose inputs the bases hold
        self.bases: dict[str, Tensor] = {}  # layer -> (d_in, m) orthonormal float32
        self.tokens: dict[str, int] = {}  # layer -> input rows collected in the present task (this rank)
        self._local: dict[str, Tensor] = {}  # layer -> (d_in, d_in) this rank's covariance since the last sync
        self._synced: dict[str, Tensor] = {}  # layer -> covariance already summed over ranks (DDP only)
        self._loaded: dict[str, Tensor] | None = None  # covariance from a checkpoint, placed at train start
        self._layers: dict[str, tuple[RoutedLayer, nn.Parameter]] = {}
        self._projected: dict[str, int] = {}  # layer -> task whose keys were last projected (fresh keys: not yet)
        self._handles: list[RemovableHandle] = []
        self._world = 1

    # ------------------------------------------------------------------ lifecycle
    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After every restore (sharded strategies restore after on_fit_start): state and layers are final here.
        self._world = trainer.world_size
        self._attach(pl_module)
        if self._loaded is not None:
            target = self._local if self._world == 1 else self._synced  # keeps single-process resume bitwise
            for name, cov in self._loaded.items():
                if name in self._layers:
                    target[name] = cov.to(self._layers[name][1].device)
            self._loaded = None
        for name, basis in list(self.bases.items()):
            if name in self._layers:
                self.bases[name] = basis.to(self._layers[name][1].device)
        # keys restored from a checkpoint were projected after their last step; fresh ones are not
        self._projected = {name: layer.task_index for name, (layer, _) in self._layers.items()}

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._detach()

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._detach()

    def _attach(self, model: nn.Module) -> None:
        self._detach()
        self._layers = {}
        for name, layer in routed_layers(model):
            if not isinstance(layer, nn.Module) or (keys := _key_parameter(layer)) is None:
                continue
            if type(keys.data).__name__ == "DTensor":
                raise NotImplementedError(
                    f"KeySubspaceCallback: the keys of layer '{name}' are sharded (FSDP2); it supports "
                    "replicated keys only (single device or DDP)"
                )
            self._layers[name] = (layer, keys)  # type: ignore[assignment]
            self._handles.append(layer.register_forward_pre_hook(self._pre_hook(name)))
            self._handles.append(keys.register_hook(self._grad_hook(name)))
        if not self._layers:
            raise ValueError(
                f"KeySubspaceCallback found no layers with atom keys in {type(model).__name__}; "
                "it protects MoRAM's atoms (inject them with moram.inject_atoms)"
            )

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # ------------------------------------------------------------------ the three steps
    def _active(self, name: str) -> Tensor | None:
        """The basis to project the layer's current keys on, when they belong to the task after the basis."""
        basis = self.bases.get(name)
        if basis is None or basis.shape[1] == 0:
            return None
        layer, _ = self._layers[name]
        return basis if layer.task_index == self.tasks_in_basis else None

    def _pre_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not module.training or not torch.is_grad_enabled():
                return
            self._collect(name, args[0])
            layer = self._layers[name][0]
            if self._projected.get(name) != layer.task_index:  # fresh keys after a consolidation: before first use
                self._project_keys(name)  # (once: the keys may be saved for backward by an earlier call)

        return hook

    def _grad_hook(self, name: str) -> Any:
        def hook(grad: Tensor) -> Tensor:
            basis = self._active(name)
            if basis is None:
                return grad
            return project_out(grad.float(), basis.to(grad.device)).to(grad.dtype)

        return hook

    @torch.no_grad()
    def _collect(self, name: str, x: Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1])
        n = rows.shape[0]
        if n > self.tokens_per_step:
            rows = rows[torch.linspace(0, n - 1, self.tokens_per_step, device=rows.device).long()]
        rows = rows.float()
        cov = self._local.get(name)
        if cov is None:
            cov = self._local[name] = torch.zeros(x.shape[-1], x.shape[-1], device=rows.device)
        cov.addmm_(rows.T, rows)
        self.tokens[name] = self.tokens.get(name, 0) + rows.shape[0]

    @torch.no_grad()
    def _project_keys(self, name: str) -> None:
        basis = self._active(name)
        if basis is None:
            return
        layer, keys = self._layers[name]
        keys.copy_(project_out(keys.float(), basis.to(keys.device)).to(keys.dtype))
        self._projected[name] = layer.task_index

    def _fold(self, trainer: Trainer, task: int) -> None:
        """Add the inputs of the tasks before ``task`` to every layer's basis (every rank, same order)."""
        dims = []
        for name, (_, keys) in self._layers.items():
            cov = self._reduced(trainer, name)
            d = keys.shape[1]
            if cov is not None:
                self.bases[name] = extend_basis(self.bases.get(name), cov, self.threshold,
                                                int(self.max_fraction * d))
            dims.append(self.bases[name].shape[1] if name in self.bases else 0)
            self._local.pop(name, None)
            self._synced.pop(name, None)
            self.tokens[name] = 0
        self.tasks_in_basis = task
        if dims:
            rank_zero_info(f"moram: key subspaces of tasks 1..{task}: {min(dims)}-{max(dims)} directions per layer "
                           f"({sum(dims) / len(dims):.1f} on average, threshold {self.threshold})")

    def _reduced(self, trainer: Trainer, name: str) -> Tensor | None:
        """The layer's covariance of the present task summed over ranks (None when nothing was collected anywhere)."""
        local, synced = self._local.get(name), self._synced.get(name)
        if self._world > 1:
            keys = self._layers[name][1]
            d, device = keys.shape[1], keys.device
            part = local if local is not None else torch.zeros(d, d, device=device)
            total = trainer.strategy.reduce(part.clone(), reduce_op="sum")
            assert isinstance(total, Tensor)
            local = total
        if local is None:
            return synced
        return local if synced is None else synced + local

    def _task(self, trainer: Trainer) -> int:
        task = trainer.current_epoch
        stream = getattr(trainer, "datamodule", None)
        if is_task_stream(stream):
            task = min(task, stream.num_tasks - 1)
        layers = [layer.task_index for layer, _ in self._layers.values()]
        return max([task, *layers])

    def _maybe_fold(self, trainer: Trainer) -> None:
        task = self._task(trainer)
        if task > self.tasks_in_basis:
            self._fold(trainer, task)

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._maybe_fold(trainer)

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._maybe_fold(trainer)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        for name in self._layers:  # after the optimizer step: Adam's rescaled update leaves the complement
            self._project_keys(name)

    # ------------------------------------------------------------------ state
    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._world == 1:
            return
        for name in self._layers:  # every rank saves (Lightning): sum the ranks' covariances, same order everywhere
            total = self._reduced(trainer, name)
            if total is not None:
                self._synced[name] = total
            self._local.pop(name, None)
        checkpoint.setdefault("callbacks", {})[self.state_key] = self.state_dict()  # state_dict() ran before

    @override
    def state_dict(self) -> dict[str, Any]:
        covs: dict[str, Tensor] = {}
        for name in set(self._local) | set(self._synced):
            local, synced = self._local.get(name), self._synced.get(name)
            cov = local if synced is None else (synced if local is None else synced + local)
            assert cov is not None
            covs[name] = cov.detach().cpu().clone()
        if self._loaded is not None:
            covs = {**{k: v.clone() for k, v in self._loaded.items()}, **covs}
        return {
            "threshold": self.threshold,
            "tasks_in_basis": self.tasks_in_basis,
            "bases": {k: v.detach().cpu().clone() for k, v in self.bases.items()},
            "covariances": covs,
            "tokens": dict(self.tokens),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tasks_in_basis = int(state_dict.get("tasks_in_basis", 0))
        self.bases = {k: v.clone() for k, v in state_dict.get("bases", {}).items()}
        self._loaded = {k: v.clone() for k, v in state_dict.get("covariances", {}).items()}
        self._local, self._synced = {}, {}
        self.tokens = dict(state_dict.get("tokens", {}))

    # ------------------------------------------------------------------ cost
    def memory_bytes(self) -> dict[str, int]:
        """Bytes held now: ``bases`` (all layers' ``U``) and ``covariances`` (the present task's ``C``)."""
        bases = sum(b.numel() * b.element_size() for b in self.bases.values())
        covs = sum(c.numel() * c.element_size() for c in [*self._local.values(), *self._synced.values()])
        return {"bases": bases, "covariances": covs}
