"""Lightning strategies moram adds (imported by the CLI and YAML, never by ``import moram``)."""

from __future__ import annotations

from lightning.pytorch.strategies import ModelParallelStrategy
from typing_extensions import override


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` with pure data parallelism as its default.

    ``ModelParallelStrategy`` defaults to tensor parallelism inside a node (``tensor_parallel_size``
    = devices per node); moram shards with ``fully_shard`` over all ranks instead, so the defaults
    here are ``data_parallel_size`` = world size and ``tensor_parallel_size`` = 1. The module
    applies ``fully_shard`` in ``configure_model`` (:func:`shard_atom_model`). Runs on CPU (gloo)
    and GPU (nccl).

    Args:
        save_distributed_checkpoint: write checkpoints as a folder of shards (one file per rank)
            rather than one full file from rank 0.
        process_group_backend: ``gloo`` / ``nccl``; None picks by device.
    """

    def __init__(self, save_distributed_checkpoint: bool = True, process_group_backend: str | None = None) -> None:
        super().__init__(
            save_distributed_checkpoint=save_distributed_checkpoint, process_group_backend=process_group_backend
        )

    @override
    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()
