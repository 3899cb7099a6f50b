"""Lightning strategies moram adds (imported by the CLI and YAML, never by ``import moram``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
        # private fields, no public setter (tests/test_lightning_internals.py fails if Lightning renames them)
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    @override
    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Restore a sharded folder holding only the adapters (:mod:`moram.checkpoint`), else as Lightning does."""
        import torch
        from lightning.pytorch.strategies.model_parallel import _METADATA_FILENAME, _is_sharded_checkpoint
        from torch.distributed.checkpoint import load
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        from moram.checkpoint import load_sharded_state

        path = Path(self.broadcast(checkpoint_path))
        if not _is_sharded_checkpoint(path):
            return super().load_checkpoint(path, weights_only=weights_only)
        module = self.lightning_module
        assert module is not None
        load_sharded_state(module, path)
        for idx, optimizer in enumerate(self.optimizers):
            state = {f"optimizer_{idx}": get_optimizer_state_dict(module, optimizer)}
            load(state, checkpoint_id=path)
            set_optimizer_state_dict(module, optimizer, optim_state_dict=state[f"optimizer_{idx}"],
                                     options=StateDictOptions(cpu_offload=True))
        return torch.load(path / _METADATA_FILENAME, weights_only=weights_only)
