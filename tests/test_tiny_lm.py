"""The tiny LM stack: character tokenizer, generated digit tasks, pretraining loss, shipped weights."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from moram.backbones.lm.batch import IGNORE, encode_causal
from moram.backbones.lm.tiny import (
    DEFAULT_ALPHABET,
    card_sha256,
    char_tokenizer,
    load_tiny_lm,
    tiny_llama_config,
    tiny_lm_path,
)
from moram.data.generated_text import (
    CONTINUAL,
    PRIMITIVES,
    TASKS,
    GeneratedTextTasks,
    generate_examples,
    split_name,
)
from moram.data.tasks import TaskSource
from recipes.pretrain_tiny_lm import PRETRAINING_MIXTURE, causal_loss, exact_match, save_tiny_lm, train_steps

# ---------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_and_special_tokens() -> None:
    tok = char_tokenizer()
    assert len(tok) == 4 + len(DEFAULT_ALPHABET)
    ids = tok(DEFAULT_ALPHABET)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.eos_token_id not in ids
    assert len(ids) == 1 + len(DEFAULT_ALPHABET)  # one token per character
    assert tok.decode(ids, skip_special_tokens=True) == DEFAULT_ALPHABET  # no spaces inserted or dropped
    text = "sort descending: 90210 =  7"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok("a!b", add_special_tokens=False)["input_ids"][1] == tok.unk_token_id
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == ("<pad>", "<s>", "</s>", "<unk>")


def test_tokenizer_rejects_bad_alphabets() -> None:
    with pytest.raises(ValueError, match="repeats"):
        char_tokenizer("abca")
    with pytest.raises(ValueError, match="empty"):
        char_tokenizer("")


def test_tokenizer_save_load_round_trip(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = char_tokenizer("0123456789 :=abc")
    tok.save_pretrained(str(tmp_path))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    text = "abc: 0123 = 9"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"], skip_special_tokens=True) == text
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)


def test_tiny_llama_config_uses_tokenizer_ids() -> None:
    tok = char_tokenizer()
    config = tiny_llama_config(len(tok), hidden_size=32, num_layers=1, tokenizer=tok)
    assert (config.vocab_size, config.pad_token_id, config.bos_token_id, config.eos_token_id) == (len(tok), 0, 1, 2)


# ------------------------------------------------------------------------------------ generated tasks


def test_generated_tasks_are_a_seeded_task_source() -> None:
    source = GeneratedTextTasks(["reverse", "sort descending"], train_size=30, test_size=10, seed=3)
    assert isinstance(source, TaskSource)
    assert source.num_tasks == 2
    a, b = source.build(), source.build()
    assert [t.name for t in a] == ["reverse", "sort descending"]
    assert list(a[0].train) == list(b[0].train)
    assert list(a[1].test) == list(b[1].test)
    other = GeneratedTextTasks(["reverse"], train_size=30, test_size=10, seed=4).build()
    assert list(other[0].train) != list(a[0].train)
    # a task's examples do not depend on the other tasks of the stream
    alone = GeneratedTextTasks(["sort descending"], train_size=30, test_size=10, seed=3).build()
    assert list(alone[0].train) == list(a[1].train)
    assert a[0].metric == "exact_match"
    assert a[0].max_new_tokens == source.max_len + 2


def test_generated_tasks_do_not_touch_the_global_rng() -> None:
    torch.manual_seed(0)
    import random

    random.seed(0)
    expected = (random.random(), torch.rand(1))
    random.seed(0)
    torch.manual_seed(0)
    GeneratedTextTasks(train_size=20, test_size=5).build()
    assert (random.random(), torch.rand(1)) == expected


def _digits(prompt: str) -> list[int]:
    return ["0123456789abcdefghij".index(c) % 10 for c in prompt.split(": ")[1].removesuffix(" =")]


EXPECTED = {
    "copy": lambda d: d,
    "reverse": lambda d: d[::-1],
    "sort": sorted,
    "increment": lambda d: [(x + 1) % 10 for x in d],
    "decrement": lambda d: [(x + 9) % 10 for x in d],
    "sort descending": lambda d: sorted(d)[::-1],
    "rotate": lambda d: d[1:] + [d[0]],
    "swap pairs": lambda d: [d[i ^ 1] if (i ^ 1) < len(d) else d[i] for i in range(len(d))],
    "drop first": lambda d: d[1:],
    "reverse increment": lambda d: [(x + 1) % 10 for x in reversed(d)],
    "add two": lambda d: [(x + 2) % 10 for x in d],
    "first last": lambda d: [d[0], d[-1]],
}


@pytest.mark.parametrize("name", sorted(TASKS) + ["reverse letters", "decrement letters"])
def test_generated_answers_are_correct(name: str) -> None:
    train, test = generate_examples(name, 50, 20, min_len=2, max_len=7, seed=1)
    assert set(TASKS) == set(EXPECTED)
    assert {split_name(n)[0] for n in PRIMITIVES + CONTINUAL} <= set(TASKS)
    op, symbols = (name[: -len(" letters")], "abcdefghij") if name.endswith(" letters") else (name, "0123456789")
    alphabet = set(DEFAULT_ALPHABET)
    for example in train + test:
        assert example["prompt"].startswith(f"{op}: ")
        assert example["prompt"].endswith(" =")
        content = example["prompt"][len(op) + 2 : -2]
        assert set(content) <= set(symbols)
        assert 2 <= len(content) <= 7
        digits = _digits(example["prompt"])
        assert example["answer"] == "".join(symbols[x] for x in EXPECTED[op](list(digits)))
        assert set(example["prompt"] + example["answer"]) <= alphabet
    assert not {e["prompt"] for e in test} & {e["prompt"] for e in train}  # held-out inputs


def test_generated_tasks_reject_bad_options() -> None:
    with pytest.raises(ValueError, match="unknown"):
        GeneratedTextTasks(["reverse", "juggle"])
    with pytest.raises(ValueError, match="unknown"):
        generate_examples("juggle letters", 1, 1)
    with pytest.raises(ValueError, match="repeats"):
        GeneratedTextTasks(["copy", "copy"])
    with pytest.raises(ValueError, match="min_len"):
        GeneratedTextTasks(min_len=5, max_len=3)


# ----------------------------------------------------------------------------------------- pretraining


def _tiny_model(tok, hidden: int = 32):  # noqa: ANN001, ANN202
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(len(tok), hidden, 1, 2, 64, tokenizer=tok))


def test_loss_counts_answer_tokens_only(one_thread: None) -> None:
    tok = char_tokenizer()
    model = _tiny_model(tok).eval()
    prompts, answers = ["reverse: 123 =", "copy: 45678 ="], ["321", "45678"]
    batch = encode_causal(tok, prompts, answers)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # hand-computed: token t+1 predicted at position t, only where the label is an answer token or eos
    targets = batch["input_ids"][:, 1:]
    keep = batch["labels"][:, 1:] != IGNORE
    assert keep.sum() == 3 + 1 + 5 + 1  # answers plus one eos each
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    expected = nll[keep.reshape(-1)].mean()
    torch.testing.assert_close(causal_loss(model, tok, prompts, answers), expected, rtol=1e-5, atol=1e-6)


def test_pretraining_steps_learn_and_save(tmp_path: Path, one_thread: None) -> None:
    tok = char_tokenizer()
    model = _tiny_model(tok)
    train, test = generate_examples("copy", 64, 4, min_len=2, max_len=3)
    losses = train_steps(model, tok, train, model.parameters(), steps=30, batch_size=16, lr=1e-2, seed=0)
    assert len(losses) == 30
    assert sum(losses[-5:]) < sum(losses[:5])
    assert 0.0 <= exact_match(model, tok, test, max_new_tokens=5) <= 1.0
    facts = {
        "tasks": ["copy"], "steps": 30, "batch_size": 16, "lr": 1e-2, "weight_decay": 0.0, "warmup": 0,
        "train_size": 64, "test_size": 4, "min_len": 2, "max_len": 3, "seed": 0, "minutes": 0.0, "threads": 1,
        "final_loss": losses[-1], "accuracy": {"copy": 0.5}, "mean_accuracy": 0.5, "params": 1,
        "config": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}, "command": None,
    }
    out = save_tiny_lm(model, tok, tmp_path / "lm", facts)
    loaded, loaded_tok = load_tiny_lm(out)  # the card's checksum matches
    ids = encode_causal(tok, ["copy: 12 ="], ["12"])["input_ids"]
    torch.testing.assert_close(loaded(ids).logits, model.eval()(ids).logits)
    assert loaded_tok("copy: 1")["input_ids"] == tok("copy: 1")["input_ids"]
    (out / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match="corrupt"):
        load_tiny_lm(out)


# -------------------------------------------------------------------------------------- shipped weights


def test_shipped_weights_match_their_card() -> None:
    folder = tiny_lm_path()
    weights = folder / "model.safetensors"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == card_sha256(folder / "README.md")
    assert weights.stat().st_size < 3_000_000
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}


def test_shipped_model_solves_the_mixture_and_not_the_stream(one_thread: None) -> None:
    model, tok = load_tiny_lm()
    assert len(tok) == model.config.vocab_size
    mixture = GeneratedTextTasks(PRETRAINING_MIXTURE, train_size=1, test_size=3, seed=11).build()
    examples = [e for task in mixture for e in task.test]
    assert exact_match(model, tok, examples, max_new_tokens=10) >= 0.75  # chance is ~0
    # the continual stream's instructions are new to it: it must learn them (with atoms)
    stream = GeneratedTextTasks(["decrement", "sort descending"], train_size=1, test_size=8, seed=11).build()
    assert exact_match(model, tok, [e for t in stream for e in t.test], max_new_tokens=10) <= 0.5


def test_shipped_model_copy_loads_from_another_folder(tmp_path: Path) -> None:
    shutil.copytree(tiny_lm_path(), tmp_path / "lm")
    model, _ = load_tiny_lm(tmp_path / "lm")
    assert model.config.model_type == "llama"
