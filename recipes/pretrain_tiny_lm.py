"""Recipe: pretrain moram's two shipped tiny LLaMAs (character tokenizer) from scratch.

``python -m recipes.pretrain_tiny_lm`` (from the repository root; ``--mixture broad``, the default) builds the
character tokenizer over the default alphabet plus :data:`moram.data.domain_text.EXTRA_ALPHABET` and a tiny
LLaMA from config, and trains *all* its weights (:func:`pretrain_broad_lm`) on the broad mixture of
:func:`moram.data.domain_text.pretraining_examples`: the *inputs* of the seven generated domains (language
modelling of their text, copying spans of it), never a task's answer. The card records the copy accuracy
and each domain task's zero-shot exact match. Output: ``moram/assets/tiny_llama_broad`` (``model:
packaged-broad``), the base of ``configs/llm_cl.yaml``. The shipped weights were made with
``--threads 2 --steps 300 --warmup 30`` (the machine was shared; the default is 1,500 steps).

``--mixture digits`` (:func:`pretrain_tiny_lm`) trains on :data:`PRETRAINING_MIXTURE` (copy, reverse, sort,
increment, each on digit strings and on letter strings a..j) and writes ``moram/assets/tiny_llama``
(``model: packaged``), the base of ``configs/llm_cl_adversarial.yaml``, which teaches it *new*
instructions over the same strings. Either writes the model, the tokenizer and a ``README.md`` model card
(recipe, accuracy, SHA-256 of the weights) with ``save_pretrained`` to ``--out``.

This is a plain PyTorch loop, not a LightningModule: one CPU process, a few minutes, nothing to
resume or shard; the functions here (:func:`train_steps`, :func:`greedy_answers`,
:func:`exact_match`) are also what ``benchmarks/llm_tiny_experiment.py`` and the tests use.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moram.backbones.lm.batch import decode_answers, encode_causal, encode_causal_prompts
from moram.backbones.lm.tiny import BROAD_LM_DIR, DEFAULT_ALPHABET, TINY_LM_DIR, char_tokenizer, tiny_llama_config
from moram.data.domain_text import DOMAIN_TASKS, EXTRA_ALPHABET, domain_examples, pretraining_examples
from moram.data.generated_text import PRIMITIVES, generate_examples

#: The pretraining mixture: the primitives on digit strings and on letter strings (a..j).
PRETRAINING_MIXTURE = [*PRIMITIVES, *(f"{p} letters" for p in PRIMITIVES)]


def causal_loss(model: nn.Module, tokenizer: Any, prompts: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens (and eos) given the prompt; prompt and padding are masked."""
    batch = encode_causal(tokenizer, prompts, answers)
    device = next(model.parameters()).device
    return model(**{k: v.to(device) for k, v in batch.items()}).loss


def train_steps(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[dict[str, str]],
    parameters: Iterable[nn.Parameter],
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    warmup: int = 0,
    betas: tuple[float, float] = (0.9, 0.95),
    seed: int = 0,
    log_every: int = 0,
) -> list[float]:
    """``steps`` AdamW steps on batches drawn without replacement (reshuffled each pass); cosine schedule.

    Returns the loss of every step. Batches come from a ``torch.Generator`` seeded with ``seed``.
    """
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise ValueError("train_steps: no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    losses = []
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        if len(order) < batch_size:
            order += torch.randperm(len(examples), generator=generator).tolist()
        chosen, order = order[:batch_size], order[batch_size:]
        loss = causal_loss(
            model, tokenizer, [examples[i]["prompt"] for i in chosen], [examples[i]["answer"] for i in chosen]
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            recent = sum(losses[-log_every:]) / log_every
            print(f"step {step + 1}/{steps}  loss {recent:.4f}  {time.perf_counter() - start:.0f}s", flush=True)
    model.eval()
    return losses


@torch.no_grad()
def greedy_answers(
    model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 12, batch_size: int = 128
) -> list[str]:
    """Greedy answers to ``prompts`` with ``model.generate`` (left-padded prompts, stop at eos)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        enc = encode_causal_prompts(tokenizer, prompts[i : i + batch_size])
        enc = {k: v.to(device) for k, v in enc.items()}
        generated = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        out += decode_answers(tokenizer, generated[:, enc["input_ids"].shape[1] :].cpu())
    model.train(was_training)
    return out


def exact_match(
    model: nn.Module, tokenizer: Any, examples: Sequence[dict[str, str]], max_new_tokens: int = 12
) -> float:
    """Fraction of ``examples`` whose greedy answer equals the reference exactly."""
    answers = greedy_answers(model, tokenizer, [e["prompt"] for e in examples], max_new_tokens)
    return sum(a == e["answer"] for a, e in zip(answers, examples, strict=True)) / max(len(examples), 1)


def mixture(
    tasks: Sequence[str], train_size: int, test_size: int, min_len: int, max_len: int, seed: int
) -> tuple[list[dict[str, str]], dict[str, list[dict[str, str]]]]:
    """Pooled training examples of ``tasks`` and the test examples of each (see ``generate_examples``)."""
    train: list[dict[str, str]] = []
    tests: dict[str, list[dict[str, str]]] = {}
    for name in tasks:
        tr, te = generate_examples(name, train_size, test_size, min_len, max_len, seed)
        train += tr
        tests[name] = te
    random.Random(seed).shuffle(train)
    return train, tests


def pretrain_tiny_lm(
    out_dir: str | Path | None = TINY_LM_DIR,
    tasks: Sequence[str] = tuple(PRETRAINING_MIXTURE),
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 0.1,
    warmup: int = 200,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 256,
    train_size: int = 20000,
    test_size: int = 200,
    min_len: int = 3,
    max_len: int = 8,
    seed: int = 0,
    log_every: int = 100,
    command: str | None = None,
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Train a tiny LLaMA from scratch on the mixture; write it with its card to ``out_dir`` (if not None).

    Returns (model, tokenizer, facts), ``facts`` holding the recipe and the per-task test exact match.
    """
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = char_tokenizer()
    config = tiny_llama_config(
        len(tokenizer), hidden_size, num_layers, num_heads, intermediate_size, tokenizer=tokenizer
    )
    model = LlamaForCausalLM(config)
    train, tests = mixture(tasks, train_size, test_size, min_len, max_len, seed)
    start = time.perf_counter()
    losses = train_steps(
        model, tokenizer, train, model.parameters(), steps, batch_size, lr, weight_decay, warmup, seed=seed,
        log_every=log_every,
    )
    minutes = (time.perf_counter() - start) / 60
    accuracy = {name: exact_match(model, tokenizer, te, max_len + 2) for name, te in tests.items()}
    facts: dict[str, Any] = {
        "tasks": list(tasks), "steps": steps, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
        "warmup": warmup, "train_size": train_size, "test_size": test_size, "min_len": min_len, "max_len": max_len,
        "seed": seed, "minutes": round(minutes, 2), "threads": torch.get_num_threads(),
        "final_loss": sum(losses[-50:]) / len(losses[-50:]), "accuracy": accuracy,
        "mean_accuracy": sum(accuracy.values()) / len(accuracy),
        "params": sum(p.numel() for p in model.parameters()),
        "config": {"hidden_size": hidden_size, "num_layers": num_layers, "num_heads": num_heads,
                   "intermediate_size": intermediate_size},
        "command": command,
    }
    if out_dir is not None:
        save_tiny_lm(model, tokenizer, out_dir, facts)
    return model, tokenizer, facts


def pretrain_broad_lm(
    out_dir: str | Path | None = BROAD_LM_DIR,
    tasks: Sequence[str] = tuple(DOMAIN_TASKS),
    steps: int = 1500,
    batch_size: int = 32,
    lr: float = 3e-3,
    weight_decay: float = 0.1,
    warmup: int = 100,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 256,
    per_task: int = 6000,
    test_size: int = 100,
    seed: int = 0,
    log_every: int = 100,
    command: str | None = None,
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """The broad base: a tiny LLaMA trained from scratch on the *inputs* of every domain task.

    The mixture (:func:`moram.data.domain_text.pretraining_examples`) is language modelling of each
    domain's text and copying spans of it; no task's answer is ever a training target. The card records
    the copy exact match per domain (the base reads and writes every format) and the greedy exact match
    of each continual task's test set zero-shot (it has not learnt the mappings).
    """
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = char_tokenizer(DEFAULT_ALPHABET + EXTRA_ALPHABET)
    config = tiny_llama_config(
        len(tokenizer), hidden_size, num_layers, num_heads, intermediate_size, tokenizer=tokenizer
    )
    model = LlamaForCausalLM(config)
    train = pretraining_examples(list(tasks), per_task, seed)
    held_out = pretraining_examples(list(tasks), 2 * test_size, seed + 1000)
    start = time.perf_counter()
    losses = train_steps(
        model, tokenizer, train, model.parameters(), steps, batch_size, lr, weight_decay, warmup, seed=seed,
        log_every=log_every,
    )
    minutes = (time.perf_counter() - start) / 60
    copies = [e for e in held_out if e["prompt"]]
    copy_accuracy = exact_match(model, tokenizer, copies, 40)
    with torch.no_grad():
        lm = [e for e in held_out if not e["prompt"]][: 4 * test_size]
        lm_loss = float(causal_loss(model, tokenizer, [e["prompt"] for e in lm], [e["answer"] for e in lm]))
    zero_shot = {}
    for name in tasks:
        _, test = domain_examples(name, 0, test_size, seed)
        zero_shot[name] = exact_match(model, tokenizer, [{"prompt": e.prompt, "answer": e.answer} for e in test], 32)
    facts: dict[str, Any] = {
        "mixture": "broad", "tasks": list(tasks), "steps": steps, "batch_size": batch_size, "lr": lr,
        "weight_decay": weight_decay, "warmup": warmup, "per_task": per_task, "test_size": test_size,
        "seed": seed, "minutes": round(minutes, 2), "threads": torch.get_num_threads(),
        "final_loss": sum(losses[-50:]) / len(losses[-50:]), "held_out_lm_loss": lm_loss,
        "copy_exact_match": copy_accuracy, "zero_shot_exact_match": zero_shot,
        "params": sum(p.numel() for p in model.parameters()),
        "config": {"hidden_size": hidden_size, "num_layers": num_layers, "num_heads": num_heads,
                   "intermediate_size": intermediate_size},
        "command": command,
    }
    if out_dir is not None:
        save_tiny_lm(model, tokenizer, out_dir, facts, card=_broad_card)
    return model, tokenizer, facts


def save_tiny_lm(
    model: Any, tokenizer: Any, out_dir: str | Path, facts: dict[str, Any], card: Any = None
) -> Path:
    """``save_pretrained`` model (fp32 safetensors) and tokenizer to ``out_dir``, then write ``README.md``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / "generation_config.json").unlink(missing_ok=True)  # greedy settings are passed explicitly
    for path in out.iterdir():
        path.chmod(0o644)  # package data
    weights = out / "model.safetensors"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    (out / "README.md").write_text((card or _card)(facts, sha, weights.stat().st_size))
    return out


def _card(f: dict[str, Any], sha: str, size: int) -> str:
    rows = "\n".join(f"| `{name}` | {100 * acc:.1f} % |" for name, acc in f["accuracy"].items())
    c = f["config"]
    command = f["command"] or "python -m recipes.pretrain_tiny_lm  (this export: run in-process)"
    return f"""# moram tiny LLaMA (`moram/assets/tiny_llama`)

A {f["params"]:,}-parameter LLaMA (`LlamaForCausalLM`: hidden {c["hidden_size"]}, {c["num_layers"]} layers,
{c["num_heads"]} heads, MLP {c["intermediate_size"]}, tied embeddings) with a character-level tokenizer
(`moram.backbones.lm.tiny.char_tokenizer`), trained from scratch by moram on generated digit tasks.
It is the frozen base of `configs/llm_cl_adversarial.yaml` (the offline LLM default until issue 22), which
teaches it *new* instructions (decrement, sort descending, rotate, swap pairs) with MoRAM atoms.

## File

| | |
|---|---|
| file | `model.safetensors` ({size / 1e6:.2f} MB, fp32) |
| SHA-256 | `{sha}` |

## Data

Generated by `moram.data.generated_text` (seed {f["seed"]}): `<instruction>: <digits> =` → answer digits,
digit strings of length {f["min_len"]}..{f["max_len"]}; {f["train_size"]:,} training examples per task of
{", ".join(f"`{t}`" for t in f["tasks"])}, mixed; {f["test_size"]} held-out test inputs per task.

## Recipe

| | |
|---|---|
| trained | all weights, from random initialisation (seed {f["seed"]}) |
| loss | causal LM cross-entropy on the answer tokens and eos (prompt masked; `encode_causal`) |
| steps | {f["steps"]}, batch {f["batch_size"]} |
| optimiser | AdamW (betas 0.9/0.95), peak lr {f["lr"]}, weight decay {f["weight_decay"]}, \
{f["warmup"]} warm-up steps, cosine to 0; grad-norm clip 1 |
| training time | {f["minutes"]} min on CPU, {f["threads"]} torch thread(s) |
| final loss | {f["final_loss"]:.4f} (mean of the last 50 steps) |

Command:

```
{command}
```

## Result

Greedy exact match on the held-out test inputs (mean **{100 * f["mean_accuracy"]:.1f} %**):

| task | exact match |
|---|---|
{rows}

## Use

```python
from moram.backbones.lm.tiny import load_tiny_lm

model, tokenizer = load_tiny_lm()  # verifies the SHA-256 above
```

Facts as JSON: `{json.dumps({k: v for k, v in f.items() if k != "command"})}`
"""


def _broad_card(f: dict[str, Any], sha: str, size: int) -> str:
    c = f["config"]
    command = f["command"] or "python -m recipes.pretrain_tiny_lm --mixture broad  (this export: run in-process)"
    rows = "\n".join(
        f"| `{name}` | {DOMAIN_TASKS[name][2]} | {100 * acc:.1f} % |"
        for name, acc in f["zero_shot_exact_match"].items()
    )
    return f"""# moram broad tiny LLaMA (`moram/assets/tiny_llama_broad`, `model: packaged-broad`)

A {f["params"]:,}-parameter LLaMA (`LlamaForCausalLM`: hidden {c["hidden_size"]}, {c["num_layers"]} layers,
{c["num_heads"]} heads, MLP {c["intermediate_size"]}, tied embeddings) with a character-level tokenizer
(`moram.backbones.lm.tiny.char_tokenizer` over the default alphabet plus upper case, brackets, `_ % ' ! ;`
and German umlauts), trained from scratch by moram on a broad generated mixture: the *inputs* of seven
domains (stance comments, monetary-policy statements, meeting transcripts, Python-like code, multiple-choice
science questions, arithmetic word problems, German sentences; `moram.data.domain_text`). It is the frozen
base of the offline continual-learning default `configs/llm_cl.yaml`, which teaches it each domain's task
(the mapping from input to answer, never seen in pretraining) with MoRAM atoms, the way a real pretrained
LM has read code, prose and numbers before it is fine-tuned.

## File

| | |
|---|---|
| file | `model.safetensors` ({size / 1e6:.2f} MB, fp32) |
| SHA-256 | `{sha}` |

## Data

`moram.data.domain_text.pretraining_examples` (seed {f["seed"]}, its own generators, so the exact inputs
differ from the continual tasks'): {f["per_task"]:,} examples per domain, half plain language modelling of
the domain's text (loss on every character), half `repeat: <span> =` → the span (a copy of 1-4 words).

## Recipe

| | |
|---|---|
| trained | all weights, from random initialisation (seed {f["seed"]}) |
| loss | causal LM cross-entropy on the answer tokens and eos (prompt masked; `encode_causal`) |
| steps | {f["steps"]}, batch {f["batch_size"]} |
| optimiser | AdamW (betas 0.9/0.95), peak lr {f["lr"]}, weight decay {f["weight_decay"]}, \
{f["warmup"]} warm-up steps, cosine to 0; grad-norm clip 1 |
| training time | {f["minutes"]} min on CPU, {f["threads"]} torch thread(s) |
| final loss | {f["final_loss"]:.4f} (mean of the last 50 steps) |
| held-out LM loss | {f["held_out_lm_loss"]:.4f} (per character, fresh domain text) |

Command:

```
{command}
```

## Result

Copy (`repeat:`) exact match on held-out spans: **{100 * f["copy_exact_match"]:.1f} %**. Greedy exact match of each
continual task's test set before any adaptation (the mappings are new to it):

| task | stands for (TRACE) | zero-shot exact match |
|---|---|---|
{rows}

## Use

```python
from moram.backbones.lm.tiny import BROAD_LM_DIR, load_tiny_lm

model, tokenizer = load_tiny_lm(BROAD_LM_DIR)  # verifies the SHA-256 above
```

Facts as JSON: `{json.dumps({k: v for k, v in f.items() if k != "command"})}`
"""


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mixture", choices=["broad", "digits"], default="broad",
        help="broad: the domains of configs/llm_cl.yaml (moram/assets/tiny_llama_broad); digits: the digit/letter "
        "primitives of configs/llm_cl_adversarial.yaml (moram/assets/tiny_llama)",
    )
    parser.add_argument("--out", default=None, help="output folder (default: the mixture's shipped asset)")
    parser.add_argument("--steps", type=int, default=None, help="default: 1500 (broad) / 2000 (digits)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 32 (broad) / 64 (digits)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 100 broad / 200 digits)")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--intermediate-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", default=None, help="the mixture's task names (default: all of it)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = shlex.join(["python", "-m", "recipes.pretrain_tiny_lm", *(sys.argv[1:] if argv is None else argv)])
    if args.mixture == "broad":
        unknown = [t for t in args.tasks or () if t not in DOMAIN_TASKS]
        if unknown:
            parser.error(f"--tasks: {unknown} are not domain tasks; known: {sorted(DOMAIN_TASKS)}")
        _, _, facts = pretrain_broad_lm(
            args.out or BROAD_LM_DIR, tasks=args.tasks or tuple(DOMAIN_TASKS), steps=args.steps or 1500,
            batch_size=args.batch_size or 32, lr=args.lr, warmup=100 if args.warmup is None else args.warmup,
            hidden_size=args.hidden_size, num_layers=args.num_layers,
            intermediate_size=args.intermediate_size, seed=args.seed, command=command,
        )
        print(json.dumps(facts["zero_shot_exact_match"]), f"copy {facts['copy_exact_match']:.3f}",
              f"lm loss {facts['held_out_lm_loss']:.3f}", f"{facts['minutes']} min")
        return
    _, _, facts = pretrain_tiny_lm(
        args.out or TINY_LM_DIR, tasks=args.tasks or PRETRAINING_MIXTURE, steps=args.steps or 2000,
        batch_size=args.batch_size or 64, lr=args.lr, warmup=200 if args.warmup is None else args.warmup,
        hidden_size=args.hidden_size, num_layers=args.num_layers,
        intermediate_size=args.intermediate_size, seed=args.seed, command=command,
    )
    print(json.dumps(facts["accuracy"]), f"mean {facts['mean_accuracy']:.3f}", f"{facts['minutes']} min")


if __name__ == "__main__":
    main()
