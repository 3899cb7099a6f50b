"""The TRACE-shaped generated stream (moram.data.domain_text) and the broad tiny LLaMA it runs on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from moram.backbones.lm.metrics import example_scores
from moram.backbones.lm.tiny import BROAD_LM_DIR, DEFAULT_ALPHABET, card_sha256
from moram.cli import main
from moram.data.domain_text import _CATEGORIES as DOMAIN_TASKS_CATEGORIES
from moram.data.domain_text import (
    DEFAULT_DOMAIN_STREAM,
    DOMAIN_TASKS,
    EXTRA_ALPHABET,
    DomainTextTasks,
    domain_examples,
    pretraining_examples,
)

ROOT = Path(__file__).resolve().parents[1]


def test_answers_follow_each_tasks_rule():
    train, _ = domain_examples("meeting", 50, 0)
    for e in train:
        item = re.search(r"move to (\w+) item (\d+)\.", e.prompt)
        yes, no = map(int, re.search(r"Vote (\d+)-(\d+)\.", e.prompt).groups())
        assert item is not None
        verb = {"approve": "approved", "deny": "denied", "table": "tabled", "amend": "amended", "adopt": "adopted"}
        outcome = "passed" if yes > no else "failed"
        assert e.answer == f"{verb[item.group(1)]} item {item.group(2)}, {outcome} {yes}-{no}"
    train, _ = domain_examples("code", 50, 0)
    for e in train:  # the answer closes every bracket the prompt's return expression opened, innermost first
        expr = e.prompt.split("return ", 1)[1]
        stack = [")" if c == "(" else "]" for c in expr if c in "(["]
        assert e.answer == "".join(reversed(stack))
    train, _ = domain_examples("arithmetic", 50, 0)
    for e in train:
        a, b = map(int, re.findall(r"\d+", e.prompt))
        assert int(e.answer) == (a + b if "buys" in e.prompt else a - b)
    train, _ = domain_examples("science", 50, 0)
    for e in train:
        category = re.search(r"Which is an? (\w+)\?", e.prompt).group(1)
        chosen = re.search(rf"{e.answer}\. (\w+)", e.prompt).group(1)
        assert any(chosen in words for name, words in DOMAIN_TASKS_CATEGORIES.items() if name.endswith(category))


def test_test_inputs_never_occur_in_training_and_are_reproducible():
    for task in DOMAIN_TASKS:
        train, test = domain_examples(task, 500, 100, seed=3)
        assert len({e.prompt for e in test}) == 100
        assert not {e.prompt for e in train} & {e.prompt for e in test}
        assert domain_examples(task, 500, 100, seed=3) == (train, test)
        assert domain_examples(task, 500, 100, seed=4)[1] != test


def test_every_task_writes_its_own_symbols_in_the_base_alphabet():
    alphabet = set(DEFAULT_ALPHABET + EXTRA_ALPHABET)
    symbols = {}
    for task in DOMAIN_TASKS:
        train, _ = domain_examples(task, 300, 0)
        text = "".join(e.prompt + e.answer for e in train)
        assert set(text) <= alphabet, task
        symbols[task] = set("".join(e.prompt for e in train))
    # each domain has characters no other default-stream task writes (different inputs, as in TRACE)
    for task in DEFAULT_DOMAIN_STREAM:
        others = set().union(*(symbols[t] for t in DEFAULT_DOMAIN_STREAM if t != task))
        if task != "stance":  # stance is plain lower-case prose: its own words, not its own characters
            assert symbols[task] - others, task


def test_pretraining_mixture_never_shows_a_tasks_mapping():
    mixture = pretraining_examples(list(DOMAIN_TASKS), 200, seed=0)
    for task in DOMAIN_TASKS:
        train, test = domain_examples(task, 2000, 100, seed=0)
        answers_to_prompts = {e.prompt: e.answer for e in train + test}
        for example in mixture:
            # no pretraining example is a task prompt, nor holds one followed by its answer
            assert example["prompt"] not in answers_to_prompts
    assert all(e["prompt"] == "" or e["prompt"].startswith("repeat: ") for e in mixture)


def test_the_source_gives_trace_metrics_and_answer_budgets():
    tasks = DomainTextTasks(train_size=20, test_size=5).build()
    assert [t.name for t in tasks] == DEFAULT_DOMAIN_STREAM
    assert {t.name: t.metric for t in tasks} == {
        "stance": "accuracy", "meeting": "rouge_l", "code": "edit_similarity", "science": "choice_accuracy",
        "simplify": "sari"}
    for t in tasks:
        assert t.max_new_tokens >= max(len(t.test[i]["answer"]) for i in range(len(t.test)))
    simplify = tasks[-1].test[0]
    assert simplify["source"] == simplify["prompt"]
    # the reference scores 100 under its own metric (SARI with the prompt as its source)
    for t in tasks:
        e = t.test[0]
        score = example_scores(t.metric, [e["answer"]], [e["answer"]], [e.get("source", e["prompt"])])
        assert score == pytest.approx([100.0])


def test_bad_options_name_the_option():
    with pytest.raises(ValueError, match="data.source.tasks: unknown"):
        DomainTextTasks(["stance", "poetry"])
    with pytest.raises(ValueError, match="repeats"):
        DomainTextTasks(["stance", "stance"])
    with pytest.raises(ValueError, match="train_size and test_size"):
        DomainTextTasks(test_size=0)
    with pytest.raises(ValueError, match="fewer than"):
        domain_examples("stance", 10, 5000)


def test_the_default_config_runs_this_stream_on_the_broad_base(tmp_path):
    cli = main(["--config", str(ROOT / "configs" / "llm_cl.yaml"), "--trainer.default_root_dir", str(tmp_path)],
               run=False)
    assert isinstance(cli.datamodule.source, DomainTextTasks)
    assert cli.datamodule.source.tasks == DEFAULT_DOMAIN_STREAM
    assert cli.model.backbone.model == "packaged-broad"
    assert len(DEFAULT_DOMAIN_STREAM) >= 5


def test_the_broad_base_is_shipped_with_its_card():
    weights = BROAD_LM_DIR / "model.safetensors"
    assert weights.is_file()
    import hashlib

    assert hashlib.sha256(weights.read_bytes()).hexdigest() == card_sha256(BROAD_LM_DIR / "README.md")
    from moram.backbones.lm.tiny import load_tiny_lm

    model, tokenizer = load_tiny_lm(BROAD_LM_DIR)
    text = "KIM: Vote 3-2. Vereinfache: Der Bär läuft über die Brücke."
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
    assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"]
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
