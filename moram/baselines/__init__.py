"""Baselines run under MoRAM's protocol and callbacks: zero-shot, sequential LoRA, O-LoRA, MoE-LoRA, rank-r experts."""

from moram.baselines.method import AdapterMethod, MoELoRA, OLoRA, RankRExperts, SequentialLoRA, ZeroShot

__all__ = ["AdapterMethod", "MoELoRA", "OLoRA", "RankRExperts", "SequentialLoRA", "ZeroShot"]
