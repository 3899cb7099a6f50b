"""Baselines run under MoRAM's protocol and callbacks: zero-shot, sequential LoRA, O-LoRA, MoE-LoRA, rank-r experts."""

from moram.baselines.method import (
    AdapterMethod,
    MethodConfig,
    MoELoRA,
    MoELoRAConfig,
    OLoRA,
    OLoRAConfig,
    RankRExperts,
    RankRExpertsConfig,
    SequentialLoRA,
    SequentialLoRAConfig,
    ZeroShot,
    ZeroShotConfig,
)

__all__ = [
    "AdapterMethod",
    "MethodConfig",
    "MoELoRA",
    "MoELoRAConfig",
    "OLoRA",
    "OLoRAConfig",
    "RankRExperts",
    "RankRExpertsConfig",
    "SequentialLoRA",
    "SequentialLoRAConfig",
    "ZeroShot",
    "ZeroShotConfig",
]
