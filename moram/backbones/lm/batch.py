"""Tokenise prompt/answer batches for causal and seq2seq language models.

The loss of docs/design.md §1 is the LM loss on the answer tokens only: prompt and padding positions
carry the label ``-100`` (ignored by transformers' loss). Prompt and answer are tokenised
separately and concatenated, so the boundary is exact whatever the tokenizer merges, and the
tokens the model is trained to produce after a prompt are the ones it must generate at evaluation.

* causal: ``[bos] prompt answer eos`` right-padded for training; ``[bos] prompt`` left-padded for
  generation (the answer is whatever follows).
* seq2seq: encoder input ``prompt`` (with the tokenizer's own special tokens), labels
  ``answer eos``; the model builds its decoder inputs from the labels.

Example:
    >>> from moram.backbones.lm.tiny import char_tokenizer
    >>> tok = char_tokenizer()
    >>> batch = encode_causal(tok, ["ab="], ["ba"], max_length=16)
    >>> [tok.convert_ids_to_tokens(i) for i in batch["input_ids"][0].tolist()]
    ['<s>', 'a', 'b', '=', 'b', 'a', '</s>']
    >>> batch["labels"][0].tolist()[:4], batch["labels"][0].tolist()[4:] == batch["input_ids"][0].tolist()[4:]
    ([-100, -100, -100, -100], True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from moram.errors import ConfigError

IGNORE = -100


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's padding id (its eos id when it has no padding token)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    raise ConfigError("the tokenizer has neither a pad nor an eos token; give it one (tokenizer.pad_token = ...)")


def _ids(tokenizer: Any, texts: Sequence[str], special: bool) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=special)["input_ids"]]


def _strip_eos(tokenizer: Any, ids: list[list[int]]) -> list[list[int]]:
    # tokenizers that append eos themselves (T5) would end the prompt of a causal model early
    eos = tokenizer.eos_token_id
    return [seq[:-1] if seq and eos is not None and seq[-1] == eos else seq for seq in ids]


def _pad(rows: list[list[int]], value: int, left: bool = False) -> Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), max(width, 1)), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            if left:
                out[i, out.shape[1] - len(row) :] = torch.tensor(row)
            else:
                out[i, : len(row)] = torch.tensor(row)
    return out


def _fit(prompt: list[int], answer: list[int], max_length: int, keep_head: int) -> tuple[list[int], list[int]]:
    """Cut the prompt's middle-left (after ``keep_head`` special tokens) and then the answer's tail to fit."""
    overflow = len(prompt) + len(answer) - max_length
    if overflow > 0:
        removable = max(len(prompt) - keep_head - 1, 0)  # keep the special head and the prompt's last token
        cut = min(overflow, removable)
        prompt = prompt[:keep_head] + prompt[keep_head + cut :]
        overflow -= cut
    if overflow > 0:
        answer = answer[: max(len(answer) - overflow, 1)]
    return prompt, answer


def encode_causal(
    tokenizer: Any, prompts: Sequence[str], answers: Sequence[str], max_length: int = 512
) -> dict[str, Tensor]:
    """Training batch of a causal LM: ``input_ids``, ``attention_mask`` and ``labels`` (prompt masked).

    Too-long examples lose the start of the prompt first (the instruction's end and the answer stay),
    then the end of the answer.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    prompt_ids = _strip_eos(tokenizer, _ids(tokenizer, prompts, special=True))
    answer_ids = _ids(tokenizer, answers, special=False)
    bos = tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    inputs: list[list[int]] = []
    labels: list[list[int]] = []
    for p, a in zip(prompt_ids, answer_ids, strict=True):
        a = a + ([eos] if eos is not None else [])
        head = 1 if p and bos is not None and p[0] == bos else 0
        p, a = _fit(p, a, max_length, head)
        inputs.append(p + a)
        labels.append([IGNORE] * len(p) + a)
    pad = pad_id(tokenizer)
    input_ids = _pad(inputs, pad)
    mask = _pad([[1] * len(r) for r in inputs], 0)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": _pad(labels, IGNORE)}


def encode_causal_prompts(tokenizer: Any, prompts: Sequence[str], max_length: int = 512) -> dict[str, Tensor]:
    """Generation inputs of a causal LM: left-padded ``[bos] prompt`` (cut from the left to ``max_length``)."""
    rows = _strip_eos(tokenizer, _ids(tokenizer, prompts, special=True))
    bos = tokenizer.bos_token_id
    cut = []
    for p in rows:
        head = 1 if p and bos is not None and p[0] == bos else 0
        cut.append(_fit(p, [], max_length, head)[0])
    mask = _pad([[1] * len(r) for r in cut], 0, left=True)
    return {"input_ids": _pad(cut, pad_id(tokenizer), left=True), "attention_mask": mask}


def encode_seq2seq(
    tokenizer: Any, prompts: Sequence[str], answers: Sequence[str] | None = None, max_length: int = 512
) -> dict[str, Tensor]:
    """Encoder inputs (and, with ``answers``, ``labels`` = answer + eos, padding ignored) of a seq2seq LM."""
    rows = [r[-max_length:] if len(r) > max_length else r for r in _ids(tokenizer, prompts, special=True)]
    out = {"input_ids": _pad(rows, pad_id(tokenizer)), "attention_mask": _pad([[1] * len(r) for r in rows], 0)}
    if answers is not None:
        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        eos = tokenizer.eos_token_id
        labels = []
        for a in _strip_eos(tokenizer, _ids(tokenizer, answers, special=False)):
            labels.append((a + ([eos] if eos is not None else []))[:max_length])
        out["labels"] = _pad(labels, IGNORE)
    return out


def decode_answers(tokenizer: Any, generated: Tensor) -> list[str]:
    """Decode generated answer ids (prompt already removed), stopping at eos, stripped of spaces."""
    eos = tokenizer.eos_token_id
    texts = []
    for row in generated.tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos)]
        texts.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return texts
