"""Resumable, rank-sharded sampling of one task for a fixed number of optimizer steps.

The *global* index stream of a task is the concatenation of permutations of its training set,
permutation ``c`` drawn from ``torch.Generator().manual_seed(mix_seed(seed, task, c))`` (never the
global RNG), cut to ``steps × batch_size``. Global batch ``b`` is ``stream[b·B : (b+1)·B]``; rank
``r`` of ``W`` gets the contiguous share ``[r·B/W, (r+1)·B/W)`` of it::

    stream   | perm 0 ............ | perm 1 ............ | ...
    batch b  |   B samples  |
    ranks    | r0 | r1 | ...|          (B/W each)

So the ranks together see exactly what one process would, and the state of a run is a single
number: how many global batches it has consumed, the same on every rank and for any world size.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from moram.errors import ConfigError, DataError


def mix_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed derived from ``seed`` and ``keys`` (stable across runs, platforms and ranks)."""
    text = "/".join(str(k) for k in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def task_index_stream(num_samples: int, total: int, seed: int, task: int) -> torch.Tensor:
    """The first ``total`` indices of the task's global stream (concatenated seeded permutations)."""
    if num_samples < 1:
        raise DataError(f"task {task} has no training samples to draw from")
    cycles = math.ceil(total / num_samples)
    perms = [
        torch.randperm(num_samples, generator=torch.Generator().manual_seed(mix_seed(seed, task, c)))
        for c in range(cycles)
    ]
    return torch.cat(perms)[:total] if perms else torch.empty(0, dtype=torch.long)


class TaskBatchSampler(Sampler[list[int]]):
    """Yields this rank's share of each of ``steps`` global batches, starting at batch ``start``.

    Args:
        num_samples: Size of the task's training set.
        batch_size: Global batch size (all ranks together); must be divisible by ``world_size``.
        steps: Number of global batches (optimizer steps) in the task.
        seed: Run seed.
        task: Task index (changes the permutations).
        rank: This process's rank.
        world_size: Number of processes.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        steps: int,
        seed: int = 0,
        task: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1 or steps < 1:
            raise ConfigError(f"data.batch_size ({batch_size}) and data.steps_per_task ({steps}) must be positive")
        if batch_size % world_size:
            raise ConfigError(
                f"data.batch_size ({batch_size}) is the global batch and must be divisible by the number of "
                f"processes ({world_size}); choose a multiple of {world_size}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.num_samples, self.batch_size, self.steps = num_samples, batch_size, steps
        self.seed, self.task, self.rank, self.world_size = seed, task, rank, world_size
        self.start = 0

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.world_size

    def __len__(self) -> int:
        return self.steps

    def global_batches(self) -> torch.Tensor:
        """All global batches of the task, (steps, batch_size)."""
        stream = task_index_stream(self.num_samples, self.steps * self.batch_size, self.seed, self.task)
        return stream.view(self.steps, self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        lo = self.rank * self.local_batch_size
        shares = self.global_batches()[self.start :, lo : lo + self.local_batch_size]  # (steps - start, B/W)
        for share in shares:
            yield share.tolist()


class TaskLoader:
    """The training loader of one task: ``steps`` batches, resumable at any batch.

    A plain iterable rather than a ``DataLoader`` subclass, so Lightning never re-instantiates it
    or swaps in a ``DistributedSampler`` (sharding is already done by :class:`TaskBatchSampler`).
    ``state_dict()`` records how many batches have been *yielded to the consumer*: Lightning does not
    prefetch from a loader with a length, so when a checkpoint is written (``on_train_batch_end``
    or later) that equals the batches the run has trained on; DataLoader workers prefetch inside,
    before this count. Lightning saves the state under ``loops.fit_loop.state_dict.combined_loader``
    and, on resume, calls ``load_state_dict`` before ``iter()``: iteration then starts at the next
    batch, while ``len()`` stays ``steps`` (Lightning adds the batches already done itself).

    Args:
        dataset: The task's training set.
        sampler: The batch sampler giving this rank's indices.
        num_workers: DataLoader worker processes.
        collate_fn: Optional collate function.
        pin_memory: Whether the DataLoader pins memory.
    """

    def __init__(
        self,
        dataset: Dataset,
        sampler: TaskBatchSampler,
        num_workers: int = 0,
        collate_fn: Any = None,
        pin_memory: bool = False,
    ) -> None:
        self.dataset, self.batch_sampler = dataset, sampler
        self.num_workers, self.collate_fn, self.pin_memory = num_workers, collate_fn, pin_memory
        self.consumed = 0  # batches yielded in the current pass (plus those restored)
        self._resume_at = 0

    def __len__(self) -> int:
        return self.batch_sampler.steps

    def __iter__(self) -> Iterator[Any]:
        self.batch_sampler.start = self.consumed = self._resume_at
        if self._resume_at >= len(self):
            self._resume_at = 0
            return
        loader = DataLoader(
            self.dataset,
            batch_sampler=self.batch_sampler,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory,
            generator=loader_generator(),  # the iterator's base seed must not come from the global RNG
        )
        for batch in loader:
            self.consumed += 1
            yield batch
        self._resume_at = 0  # a full pass ends the resume; a later pass starts from batch 0

    def state_dict(self) -> dict[str, Any]:
        s = self.batch_sampler
        return {
            "task": s.task,
            "consumed": self.consumed,
            "steps": s.steps,
            "batch_size": s.batch_size,
            "seed": s.seed,
            "num_samples": s.num_samples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        s = self.batch_sampler
        if state.get("task", s.task) != s.task:
            raise RuntimeError(
                f"the checkpoint's train loader state is for task {state['task']}, but this loader serves "
                f"task {s.task}; the task index must come from trainer.current_epoch"
            )
        mine = {"steps": s.steps, "batch_size": s.batch_size, "seed": s.seed, "num_samples": s.num_samples}
        changed = {k: (state[k], v) for k, v in mine.items() if k in state and state[k] != v}
        if changed:
            detail = ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in changed.items())
            raise RuntimeError(
                f"cannot resume task {s.task} exactly: the data options changed since the checkpoint ({detail}); "
                "resume with the checkpoint's data.batch_size, data.steps_per_task, data.seed and data.shots"
            )
        self._resume_at = self.consumed = int(state["consumed"])


class ContiguousShardSampler(DistributedSampler):
    """Rank ``r`` reads a contiguous slice of ``range(n)``; no padding, so each sample is read once.

    Subclasses ``DistributedSampler`` only so that Lightning (``use_distributed_sampler=True``)
    recognises the loader as already sharded and leaves it alone. Shards differ in length by at
    most one sample.
    """

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1) -> None:
        self.rank, self.num_replicas, self.total_size = rank, world_size, num_samples
        self.lo = num_samples * rank // world_size
        self.hi = num_samples * (rank + 1) // world_size
        self.num_samples = self.hi - self.lo
        self.shuffle, self.epoch, self.seed, self.drop_last = False, 0, 0, False

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.lo, self.hi))

    def __len__(self) -> int:
        return self.hi - self.lo


def loader_generator() -> torch.Generator:
    """A fixed-seed generator for a DataLoader's base seed (worker seeds).

    Without one, every ``iter(DataLoader)`` draws from the global RNG, so a resumed run (which creates
    its loaders at other moments) would shift every later draw of atom dropout.
    """
    return torch.Generator().manual_seed(0x6D6F72616D)
