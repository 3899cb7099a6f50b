"""Seeds of adapter initialisation: one per layer (from its name), one generator per (layer, task).

Initialisation never touches the global RNG: a layer's task-``t`` parameters are drawn from a
generator seeded by a hash of ``(namespace, layer seed, t)``, so every rank, every resume and every
wrapping (DDP, FSDP, compile) draws the same numbers.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor, nn


def layer_seed(seed: int, name: str) -> int:
    """Stable per-layer seed from the run's seed and the layer's (wrapper-free) module name.

    Example:
        >>> layer_seed(0, "visual.blocks.0.attn.q_proj") == layer_seed(0, "visual.blocks.0.attn.q_proj")
        True
    """
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**62 - 1)


def task_generator(namespace: str, seed: int, task: int) -> torch.Generator:
    """A CPU generator for task ``task`` of the layer seeded ``seed`` (``namespace`` separates methods)."""
    digest = hashlib.sha256(f"{namespace}:{seed}:{task}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def kaiming_rows(rows: int, cols: int, generator: torch.Generator) -> Tensor:
    """``(rows, cols)`` float32 drawn Kaiming-uniform with a = √5 (``nn.Linear``'s and LoRA's init of A)."""
    out = torch.empty(rows, cols, dtype=torch.float32)
    return nn.init.kaiming_uniform_(out, a=math.sqrt(5), generator=generator)
