"""transformers language models as a moram backbone: the plugin, loading, batching, text metrics, tiny LLaMA.

Importing this package is light (transformers is imported where a model is loaded).
"""

from moram.backbones.lm.backbone import LMBackbone
from moram.backbones.lm.build import default_lm_targets, load_lm, prepare_lm

__all__ = ["LMBackbone", "default_lm_targets", "load_lm", "prepare_lm"]
