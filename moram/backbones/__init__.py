"""Backbone plugins of :class:`moram.module.ContinualModule`: what a kind of model adds to a continual run.

* :mod:`moram.backbones.base` — the contract (:class:`~moram.backbones.base.Backbone`);
* :mod:`moram.backbones.clip` — open_clip CLIP: build, attention conversion, the tiny tower, the loss;
* :mod:`moram.backbones.lm` — transformers LMs: build, batching, text metrics, the tiny LLaMA.
"""

from moram.backbones.base import Backbone, EvalScores, StepLoss

__all__ = ["Backbone", "EvalScores", "StepLoss"]
