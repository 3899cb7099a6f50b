"""open_clip CLIP as a moram backbone: the plugin, model building, attention conversion, tiny tower, loss.

Importing this package is light (open_clip is imported where a model is built).
"""

from moram.backbones.clip.backbone import AGNOSTIC_PREFIX, AWARE_PREFIX, CLIPBackbone, EvalProtocol
from moram.backbones.clip.build import build_clip, build_clip_from_config, clip_targets, load_model_config, prepare_clip

__all__ = [
    "AGNOSTIC_PREFIX",
    "AWARE_PREFIX",
    "CLIPBackbone",
    "EvalProtocol",
    "build_clip",
    "build_clip_from_config",
    "clip_targets",
    "load_model_config",
    "prepare_clip",
]
