"""moram's offline default language model: a tiny LLaMA with a character-level tokenizer.

* :func:`char_tokenizer` builds a transformers fast tokenizer (``tokenizers`` library) in which every
  character of an alphabet is one token, plus ``<pad>``, ``<s>`` (bos, prepended when
  ``add_special_tokens=True``), ``</s>`` (eos, never added automatically) and ``<unk>``. Decoding
  concatenates characters (no spaces inserted), so ``decode(encode(text)) == text`` on the alphabet.
* :func:`tiny_llama_config` is a small :class:`transformers.LlamaConfig` for it.
* :func:`load_tiny_lm` loads the shipped model of ``moram/assets/tiny_llama`` (made by
  the recipe ``python -m recipes.pretrain_tiny_lm`` of a checkout; its ``README.md`` holds the recipe and
  the SHA-256 checked here).

Example:
    >>> tok = char_tokenizer()
    >>> ids = tok("sort: 31 =")["input_ids"]
    >>> tok.convert_ids_to_tokens(ids)[:3], tok.decode(ids, skip_special_tokens=True)
    (['<s>', 's', 'o'], 'sort: 31 =')
"""

from __future__ import annotations

import hashlib
import string
from pathlib import Path
from typing import Any

from moram.errors import ConfigError, DataError, DataNotFoundError

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
#: Default alphabet: digits, lower-case letters, space and a little punctuation (ids follow this order).
DEFAULT_ALPHABET = string.digits + string.ascii_lowercase + " :=,.-+>?"

TINY_LM_DIR = Path(__file__).resolve().parents[2] / "assets" / "tiny_llama"
#: The broad base of ``configs/llm_cl.yaml`` (``model: packaged-broad``): pretrained on the inputs of the
#: generated domain tasks (``moram.data.domain_text``). ``packaged`` stays the digit base above, unchanged,
#: so checkpoints of the former default (now ``configs/llm_cl_adversarial.yaml``) keep resuming.
BROAD_LM_DIR = TINY_LM_DIR.parent / "tiny_llama_broad"
_REBUILD = ("rebuild it with `python -m recipes.pretrain_tiny_lm` in a moram checkout (see its README.md) "
            "or reinstall moram")


def char_tokenizer(alphabet: str | None = None) -> Any:
    """A character-level ``PreTrainedTokenizerFast``: ids 0-3 are ``<pad> <s> </s> <unk>``, then ``alphabet``.

    Args:
        alphabet: Characters of the vocabulary (duplicates are an error); default :data:`DEFAULT_ALPHABET`.
            Characters outside it encode to ``<unk>``.

    Example:
        >>> tok = char_tokenizer("ab ")
        >>> tok("ab a", add_special_tokens=False)["input_ids"], len(tok)
        ([4, 5, 6, 4], 7)
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = DEFAULT_ALPHABET if alphabet is None else alphabet
    if not alphabet:
        raise ConfigError("char_tokenizer: the alphabet is empty")
    repeated = sorted({c for c in alphabet if alphabet.count(c) > 1})
    if repeated:
        raise ConfigError(f"char_tokenizer: the alphabet repeats {repeated}; every character must appear once")
    clash = [t for t in SPECIAL_TOKENS if t in alphabet]
    if clash:
        raise ConfigError(f"char_tokenizer: the alphabet must not contain the special tokens {clash}")
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *alphabet])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # every character is its own "word" (newlines included), so WordLevel maps it to one id
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )


def tiny_llama_config(
    vocab_size: int,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 128,
    tokenizer: Any | None = None,
) -> Any:
    """A small ``LlamaConfig`` (tied embeddings, RoPE, no dropout); special ids from ``tokenizer`` if given.

    Example:
        >>> config = tiny_llama_config(vocab_size=50)
        >>> config.model_type, config.hidden_size, config.num_hidden_layers
        ('llama', 128, 4)
    """
    from transformers import LlamaConfig

    ids: dict[str, Any] = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    if tokenizer is not None:
        ids = {
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
    values: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        **ids,
    )
    return LlamaConfig(**values)


def tiny_lm_path() -> Path:
    """Folder of the shipped tiny LLaMA (``from_pretrained``-loadable: config, weights, tokenizer, card)."""
    return TINY_LM_DIR


def card_sha256(card: str | Path) -> str:
    """The SHA-256 recorded in the tiny LLaMA's model card (the ``| SHA-256 | `<hex>` |`` row)."""
    from moram.backbones.clip.tiny import card_sha256 as read_card

    return read_card(card, rebuild=_REBUILD)


def load_tiny_lm(path: str | Path | None = None, check: bool = True) -> tuple[Any, Any]:
    """Load the tiny LLaMA and its tokenizer from ``path`` (default: the shipped folder); model in eval mode.

    With ``check``, the SHA-256 of ``model.safetensors`` must equal the one in the folder's ``README.md``.

    Example:
        >>> model, tokenizer = load_tiny_lm()  # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path) if path is not None else TINY_LM_DIR
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise DataNotFoundError(f"tiny LM weights {weights} are missing; {_REBUILD}")
    if check:
        expected = card_sha256(folder / "README.md")
        actual = hashlib.sha256(weights.read_bytes()).hexdigest()
        if actual != expected:
            raise DataError(
                f"tiny LM weights {weights} are corrupt: SHA-256 {actual} differs from {expected} in its model card; "
                f"{_REBUILD}"
            )
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return model.eval(), tokenizer
