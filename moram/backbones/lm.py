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
so its q, k and v share one routing decision per token, unlike separate q/k/v layers (DESIGN.md §1).
For any other architecture set ``AtomConfig.targets``.

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

from torch import nn

from moram.atoms.config import AtomConfig
from moram.atoms.inject import inject_atoms

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
        raise ValueError(
            f"moram has no default atom targets for {type(model).__name__} ({found}); set AtomConfig.targets "
            f"to the linear layers to adapt (e.g. ['q_proj', 'v_proj']); model types with defaults: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    attention, mlp = _DEFAULTS[model_type]
    if not include_mlp:
        return list(attention)
    if mlp is None:
        raise ValueError(
            f"model_type '{model_type}' keeps its experts in fused parameters, not linear layers, so "
            "include_mlp=True cannot adapt them; use include_mlp=False or list the layers in AtomConfig.targets"
        )
    return [*attention, *mlp]


def prepare_lm(model: nn.Module, atom_config: AtomConfig, include_mlp: bool = False) -> list[str]:
    """Inject atoms into a transformers model: ``atom_config.targets`` if set, else the defaults.

    ``include_mlp`` only applies to the defaults. Returns the adapted module names (see
    :func:`moram.atoms.inject_atoms`).
    """
    targets = atom_config.targets if atom_config.targets else default_lm_targets(model, include_mlp)
    return inject_atoms(model, atom_config, targets=targets)
