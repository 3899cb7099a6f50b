"""Baselines run under MoRAM's protocol and callbacks: zero-shot, sequential LoRA, MoE-LoRA, rank-r experts."""

from moram.baselines.method import AdapterMethod, MoELoRA, RankRExperts, SequentialLoRA, ZeroShot

__all__ = ["AdapterMethod", "MoELoRA", "RankRExperts", "SequentialLoRA", "ZeroShot"]
