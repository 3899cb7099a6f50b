"""Multi-process helpers: FSDP2 shard units for atom models, the global batch, and a clean exit.

Imports torch only (Lightning's strategy subclass, ``FSDP2Strategy``, lives in
:mod:`moram.strategies`). Sharded reads and writes go through :func:`full_value` and
:func:`assign_full`, so layers and callbacks never touch ``DTensor`` themselves.

Data parallelism (DDP, FSDP2) in moram rests on three facts (docs/design.md §3-4):

* every rank holds the same frozen atoms: consolidation is deterministic and reads sharded
  Parameters with ``full_tensor()`` (:func:`full_value`), so nothing is broadcast;
* ``data.batch_size`` is the *global* batch, split evenly across ranks
  (:class:`moram.data.sampler.TaskBatchSampler`);
* a loss that couples the samples of a batch (CLIP's text→image term) is computed on the gathered
  global batch (:func:`gather_batch`), so 1 and N processes compute the same gradient.

Sharding (:func:`shard_atom_model`): each block of a ``nn.ModuleList`` that holds trainable atoms (a
transformer block) becomes one ``fully_shard`` unit, with its frozen weights and its current atoms;
a module outside such blocks that owns trainable Parameters (a continual layer) becomes a unit of its
own. The rest (embeddings, final norms, projections, ``logit_scale``) stays an ordinary replicated
tensor: it is frozen, identical on every rank, and stays readable outside ``forward`` (open_clip's
``encode_image`` / ``encode_text`` and ``logit_scale`` are used without calling the root module).
Frozen atoms are buffers, which ``fully_shard`` never shards: every rank keeps the whole bank,
which routing reads in every forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from moram.errors import ConfigError


def full_value(t: Tensor) -> Tensor:
    """The full value of a possibly sharded (FSDP2 ``DTensor``) tensor; a collective when sharded.

    Every rank must call it, in the same order. A plain tensor is returned as is.
    """
    full_tensor = getattr(t, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else t


def assign_full(param: Tensor, full: Tensor) -> None:
    """Copy the full tensor ``full`` into ``param`` in place, sharding it first when ``param`` is a DTensor.

    ``param.data = ...`` is silently ignored by FSDP2, and ``nn.init`` on a sharded Parameter draws the
    same rows on every rank (docs/design.md §4), so re-initialising goes through a full tensor drawn once.
    """
    mesh = getattr(param, "device_mesh", None)
    if mesh is not None:
        from torch.distributed.tensor import distribute_tensor

        full = distribute_tensor(full.to(param.device, param.dtype), mesh, param.placements)  # type: ignore[attr-defined]
    with torch.no_grad():
        param.copy_(full.to(device=param.device, dtype=param.dtype) if mesh is None else full)


def data_parallel_mesh(mesh: Any) -> Any:
    """The 1-D data-parallel mesh of Lightning's 2-D (``data_parallel``, ``tensor_parallel``) mesh.

    Raises:
        ValueError: when the mesh has a tensor-parallel dimension larger than 1 (moram shards data only).
    """
    names = getattr(mesh, "mesh_dim_names", None) or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise ConfigError(
            f"moram shards over data only, but the device mesh has tensor_parallel size "
            f"{mesh['tensor_parallel'].size()}; use trainer.strategy moram.strategies.FSDP2Strategy "
            "(configs/strategy/fsdp2.yaml), or ModelParallelStrategy with tensor_parallel_size=1 and "
            "data_parallel_size = number of processes"
        )
    return mesh["data_parallel"] if "data_parallel" in names else mesh


def _trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules :func:`shard_atom_model` shards, outermost first.

    Every member of a ``nn.ModuleList`` that holds a trainable Parameter (a transformer block with
    atoms, or with a baseline's adapters), plus each module outside those that owns a trainable
    Parameter itself (e.g. a continual layer outside the blocks). Trainable
    Parameters must all be sharded: FSDP2 synchronises nothing else.
    """
    units: list[nn.Module] = []
    covered: set[int] = set()
    for module in model.modules():
        if id(module) in covered or not isinstance(module, nn.ModuleList):
            continue
        for block in module:
            if _trains(block):
                units.append(block)
                covered.update(id(m) for m in block.modules())
    for module in model.modules():
        if id(module) not in covered and any(p.requires_grad for p in module.parameters(recurse=False)):
            units.append(module)
            covered.update(id(m) for m in module.modules())
    return units


def shard_atom_model(model: nn.Module, mesh: Any) -> int:
    """Apply ``fully_shard`` to every unit of :func:`shard_units` over ``mesh``; idempotent.

    Returns:
        The number of units newly sharded (0 when the model was sharded already).
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    mesh = data_parallel_mesh(mesh)
    if any(isinstance(m, FSDPModule) for m in model.modules()):
        return 0
    units = shard_units(model)
    for unit in units:
        # Explicit: each unit is its own FSDP root (the root module is not sharded), and roots would
        # otherwise keep their parameters unsharded after forward, where consolidation must not see them.
        fully_shard(unit, mesh=mesh, reshard_after_forward=True)
    return len(units)


def reshard(model: nn.Module) -> None:
    """Return every FSDP2 unit of ``model`` to its sharded state (no-op without FSDP2)."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


@contextmanager
def full_parameters(model: nn.Module) -> Iterator[None]:
    """Parameters readable and writable in full inside the block, under any strategy.

    FSDP2: units are resharded first, so Parameters are DTensors (read with ``full_tensor()``,
    written with ``distribute_tensor``, see :mod:`moram.adapters.layer`). FSDP1: the flat parameters are
    gathered and written back (``summon_full_params``). Otherwise nothing to do.
    """
    reshard(model)
    from torch.distributed.fsdp import FullyShardedDataParallel

    if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
        with FullyShardedDataParallel.summon_full_params(model, writeback=True, rank0_only=False):
            yield
    else:
        yield


def is_distributed() -> bool:
    """Whether a default process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward hands each rank the summed gradient of its own rows."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)  # (W·b, ...)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss depends on every row: sum their gradients
        lo = dist.get_rank() * ctx.rows
        return grad[lo : lo + ctx.rows]


def gather_batch(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The global batch: every rank's ``features`` ``(b, D)`` and ``labels`` ``(b,)``, in rank order.

    Gradients flow back to each rank's own features, summed over every rank's loss, so with DDP /
    FSDP averaging the gradients over ranks, a loss computed on the gathered batch gives exactly the
    single-process gradient. Every rank must pass the same ``b`` (the train sampler guarantees it).
    Without a process group, returns the inputs.
    """
    if not is_distributed():
        return features, labels
    all_labels = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
    dist.all_gather(all_labels, labels.contiguous())
    return _GatherWithGrad.apply(features), torch.cat(all_labels)  # (W·b, D), (W·b,)


def finish_distributed() -> None:
    """Barrier, then destroy the default process group (after results are written).

    Leaving the gloo group to interpreter shutdown can abort the process (exit 134) while a peer
    still talks to it; destroying it after a barrier ends every rank cleanly.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
