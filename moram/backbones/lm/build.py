r"""Default atom targets for transformers language models, chosen from ``config.model_type``.

Patterns follow :func:`moram.atoms.target_matches` (dotted suffix, or ``re:`` regex on the full
module name). Injection raises when a pattern matches nothing, so a default set that does not fit
a model fails loudly instead of silently adapting fewer layers.

::

    model_type                        attention (default)                     include_mlp=True adds
    --------------------------------  --------------------------------------  ---------------------------------------
    llama mistral ministral qwen2     q_proj k_proj v_proj o_proj             gate_proj up_proj down_proj
    qwen3 gemma gemma2 gemma3_text
    olmo olmo2 cohere granite helium
    smollm3 stablelm exaone4
    mixtral qwen2_moe qwen3_moe       q_proj k_proj v_proj o_proj             (rejected: experts are not linears)
    starcoder2                        q_proj k_proj v_proj o_proj             mlp.c_fc mlp.c_proj
    phi3                              qkv_proj (packed) o_proj                gate_up_proj (packed) down_proj
    t5 mt5                            re:.*\.(SelfAttention|EncDecAttention)\.(q|k|v|o)
                                                                              re:.*\.DenseReluDense\.(wi|wi_0|wi_1|wo)
    bert roberta xlm-roberta          re:.*\.(attention|crossattention)\.self\.(query|key|value)
                                      re:.*\.(attention|crossattention)\.output\.dense
                                                                              intermediate.dense
                                                                              re:.*\.layer\.\d+\.output\.dense
    gpt2                              attn.c_attn (packed, Conv1D) attn.c_proj
                                                                              mlp.c_fc mlp.c_proj

T5's regex keeps every other module called ``o`` out; BERT's keeps out the pooler's and the MLM
head's ``dense``. A packed projection (GPT-2's ``c_attn``, Phi-3's ``qkv_proj``) carries one bank,
so its q, k and v share one routing decision per token, unlike separate q/k/v layers (docs/design.md §1).
For any other architecture set ``model.targets`` (``AtomConfig.targets`` in the Python API).

Example:
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...                                      num_attention_heads=2, num_key_value_heads=1, vocab_size=10))
    >>> default_lm_targets(model)
    ['q_proj', 'k_proj', 'v_proj', 'o_proj']
    >>> from moram.atoms import AtomConfig
    >>> len(prepare_lm(model, AtomConfig.llm(max_tasks=2), include_mlp=True))
    7
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from moram.adapters.method import MethodConfig
from moram.atoms.config import AtomConfig
from moram.errors import ConfigError, DataNotFoundError

_QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
_GATED_MLP = ["gate_proj", "up_proj", "down_proj"]
_T5_ATTENTION = [r"re:.*\.(SelfAttention|EncDecAttention)\.(q|k|v|o)"]
_T5_MLP = [r"re:.*\.DenseReluDense\.(wi|wi_0|wi_1|wo)"]
_BERT_ATTENTION = [
    r"re:.*\.(attention|crossattention)\.self\.(query|key|value)",
    r"re:.*\.(attention|crossattention)\.output\.dense",
]
_BERT_MLP = ["intermediate.dense", r"re:.*\.layer\.\d+\.output\.dense"]

# model_type -> (attention patterns, MLP patterns or None when the MLP has no plain linears)
_DEFAULTS: dict[str, tuple[list[str], list[str] | None]] = {
    **dict.fromkeys(
        [
            "llama", "mistral", "ministral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2",
            "cohere", "granite", "helium", "smollm3", "stablelm", "exaone4",
        ],
        (_QKVO, _GATED_MLP),
    ),
    **dict.fromkeys(["mixtral", "qwen2_moe", "qwen3_moe"], (_QKVO, None)),
    "starcoder2": (_QKVO, ["mlp.c_fc", "mlp.c_proj"]),
    "phi3": (["qkv_proj", "o_proj"], ["gate_up_proj", "down_proj"]),
    **dict.fromkeys(["t5", "mt5"], (_T5_ATTENTION, _T5_MLP)),
    **dict.fromkeys(["bert", "roberta", "xlm-roberta"], (_BERT_ATTENTION, _BERT_MLP)),
    "gpt2": (["attn.c_attn", "attn.c_proj"], ["mlp.c_fc", "mlp.c_proj"]),
}

SUPPORTED_MODEL_TYPES = tuple(sorted(_DEFAULTS))
"""The ``config.model_type`` values with a default target set."""


def lm_model_type(model: nn.Module) -> str | None:
    """``config.model_type`` of ``model``, or of the first submodule carrying one (a wrapped model)."""
    for module in model.modules():
        model_type = getattr(getattr(module, "config", None), "model_type", None)
        if isinstance(model_type, str) and model_type:
            return model_type
    return None


def default_lm_targets(model: nn.Module, include_mlp: bool = False) -> list[str]:
    """The default atom target patterns for a transformers model (see the module's table).

    Args:
        model: a transformers model, or any module holding one.
        include_mlp: also adapt the feed-forward linears (the paper adapts attention only).

    Raises:
        ValueError: for an architecture without defaults, or ``include_mlp`` on a mixture-of-experts
            model whose experts are not linear modules.
    """
    model_type = lm_model_type(model)
    if model_type not in _DEFAULTS:
        found = f"model_type '{model_type}'" if model_type else "no config.model_type"
        raise ConfigError(
            f"moram has no default atom targets for {type(model).__name__} ({found}); set model.targets "
            f"to the linear layers to adapt (e.g. ['q_proj', 'v_proj']); model types with defaults: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    attention, mlp = _DEFAULTS[model_type]
    if not include_mlp:
        return list(attention)
    if mlp is None:
        raise ConfigError(
            f"model_type '{model_type}' keeps its experts in fused parameters, not linear layers, so "
            "include_mlp=True cannot adapt them; use include_mlp=False or list the layers in model.targets"
        )
    return [*attention, *mlp]


def prepare_lm(
    model: nn.Module, atom_config: AtomConfig, include_mlp: bool = False, method: MethodConfig | None = None
) -> list[str]:
    """Inject atoms (or ``method``'s layers) into a transformers model: ``atom_config.targets``, else the defaults.

    ``atom_config`` gives the capacity, targets and seed (and MoRAM's options when ``method`` is None);
    ``include_mlp`` only applies to the defaults. Returns the adapted module names.
    """
    if atom_config.max_tasks is None:
        raise ConfigError("AtomConfig.max_tasks is None: set the number of tasks the adapters must hold")
    targets = atom_config.targets if atom_config.targets else default_lm_targets(model, include_mlp)
    chosen = method if method is not None else atom_config.method
    return chosen.inject(model, targets, max_tasks=atom_config.max_tasks, seed=atom_config.seed)


# ---------------------------------------------------------------------------- loading
_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


def _looks_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists() or name.count("/") > 1


def load_lm(
    model: str | None = None,
    config: str | dict[str, Any] | None = None,
    tokenizer: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[nn.Module, Any]:
    """A transformers causal or seq2seq LM and its tokenizer, from weights or from a config.

    Args:
        model: a local folder saved with ``save_pretrained``, a hub id (cached, or online when the hub is
            reachable), or ``"packaged"`` for the tiny LLaMA moram ships. Exclusive with ``config``.
        config: a transformers config, as a ``config.json`` path or a dict with ``model_type``; the
            model gets random weights (tests, or training from scratch).
        tokenizer: tokenizer folder or hub id; defaults to ``model``. ``"char"`` builds moram's
            character tokenizer (:func:`moram.backbones.lm.tiny.char_tokenizer`).
        dtype: weight dtype to load in (``float32``, ``bfloat16``, ``float16``); None keeps the
            checkpoint's / float32. Mixed precision is the Trainer's ``precision``, not this.
        trust_remote_code: passed to transformers for models with custom code.

    Returns:
        ``(model, tokenizer)``; ``model.config.is_encoder_decoder`` tells seq2seq from causal. A
        tokenizer without a padding token gets its eos token as padding.

    Raises:
        ValueError / FileNotFoundError naming the option (``model.backbone.model``, ``model.backbone.config``,
        ``model.backbone.tokenizer``) that could not be used.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    if (model is None) == (config is None):
        raise ConfigError(
            "set exactly one of model.backbone.model (weights: folder, hub id or 'packaged') and model.backbone.config"
        )
    torch_dtype = _dtype(dtype)
    if model == "packaged":
        from moram.backbones.lm.tiny import tiny_lm_path

        model = str(tiny_lm_path())
    elif model == "packaged-broad":
        from moram.backbones.lm.tiny import BROAD_LM_DIR

        model = str(BROAD_LM_DIR)
    lm: Any
    if model is not None:
        lm = _from_pretrained(model, torch_dtype, trust_remote_code)
    else:
        cfg = _config_from(config)
        auto = AutoModelForSeq2SeqLM if getattr(cfg, "is_encoder_decoder", False) else AutoModelForCausalLM
        lm = auto.from_config(cfg, trust_remote_code=trust_remote_code)
        if torch_dtype is not None:
            lm = lm.to(torch_dtype)
    tok = _load_tokenizer(tokenizer or model, trust_remote_code)
    if getattr(tok, "pad_token", None) is None and getattr(tok, "eos_token", None) is not None:
        tok.pad_token = tok.eos_token
    vocab = lm.get_input_embeddings().num_embeddings
    if len(tok) > vocab:
        raise ConfigError(
            f"the tokenizer has {len(tok)} tokens but the model's embedding has {vocab} rows; "
            "model.backbone.tokenizer must be the model's own tokenizer (or set the config's vocab_size)"
        )
    return lm, tok


def _dtype(dtype: str | None) -> Any:
    import torch

    if dtype is None:
        return None
    if dtype not in _DTYPES:
        raise ConfigError(f"model.backbone.dtype must be one of {sorted(_DTYPES)} or null, got {dtype!r}")
    return getattr(torch, _DTYPES[dtype])


def _from_pretrained(model: str, torch_dtype: Any, trust_remote_code: bool) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    if _looks_local(model) and not Path(model).expanduser().is_dir():
        raise DataNotFoundError(
            f"model.backbone.model='{model}' is not a folder; give a folder written by save_pretrained "
            "(config.json + weights + tokenizer files), a hub id, or 'packaged'"
        )
    try:
        cfg = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"model.backbone.model='{model}' could not be loaded ({type(err).__name__}: {err}); without network, "
            "download it first (huggingface-cli download ...) or give a local folder"
        ) from err
    auto = AutoModelForSeq2SeqLM if getattr(cfg, "is_encoder_decoder", False) else AutoModelForCausalLM
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    return auto.from_pretrained(model, **kwargs)


def _config_from(config: str | dict[str, Any] | None) -> Any:
    from transformers import AutoConfig

    if isinstance(config, str):
        path = Path(config).expanduser()
        if not path.is_file():
            raise DataNotFoundError(
                f"model.backbone.config='{config}' is not a file; give a config.json path or a dict"
            )
        values = json.loads(path.read_text())
    else:
        values = dict(config or {})
    model_type = values.pop("model_type", None)
    if not model_type:
        raise ConfigError("model.backbone.config needs a 'model_type' (e.g. 'llama', 'gpt2', 't5')")
    try:
        return AutoConfig.for_model(model_type, **values)
    except ValueError as err:
        raise ConfigError(f"model.backbone.config: {err}") from err


def _load_tokenizer(name: str | None, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    if name is None:
        raise ConfigError(
            "model.backbone.config builds random weights: set model.backbone.tokenizer (a folder, hub id or 'char')"
        )
    if name == "char":
        from moram.backbones.lm.tiny import char_tokenizer

        return char_tokenizer()
    if _looks_local(name) and not Path(name).expanduser().is_dir():
        raise DataNotFoundError(f"model.backbone.tokenizer='{name}' is not a folder with tokenizer files")
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"model.backbone.tokenizer='{name}' could not be loaded ({type(err).__name__}: {err})"
        ) from err
