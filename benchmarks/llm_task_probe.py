"""Does the frozen base tell the tasks apart before anything is trained? A per-layer task-identity probe.

For every adapted linear layer of the LM (attention q, k, v, o of each layer: q, k and v read the same
input, so each layer has two inputs, ``qkv`` and ``o``), collect that layer's input at every token of
``prompt answer`` (teacher-forced, padding and bos excluded) for examples of each task of a stream, with
the frozen base and no adapter. Fit two probes of task identity on the tokens of ``--fit`` training
examples per task and score them on the tokens of ``--eval`` *test* examples per task (disjoint inputs):

* nearest class mean (Euclidean, on features standardised with the fit tokens' mean and std);
* multinomial logistic regression (full-batch L-BFGS on the standardised features, L2 ``--l2``).

Both probes are *discriminative*: they are fitted with every task's tokens, negatives included. A MoRAM key
never sees another task's tokens: it is trained only on its own task's, to respond strongly there. Two more
columns therefore ask how well tokens are told apart by directions that such positive-only training can
find, on the raw input the keys read (not standardised):

* mean direction: each token goes to the task whose mean input direction it is most aligned with
  (largest cosine ``x · m_t / ‖m_t‖``);
* own subspace (rank ``--rank``): each task's ``r`` leading directions of its uncentred second moment
  ``E[x xᵀ]`` (what ``r`` keys maximising their squared responses on that task span); a token goes to the
  task whose subspace holds most of its energy ``‖U_tᵀ x‖²``;

and, per layer input, the mean cosine between the mean inputs of two different tasks (1: every task's
tokens lean the same way, so a key that grows along its own task's mean responds to all of them).

Chance is 1 / number of tasks. An input-routed memory (MoRAM's atoms score their own relevance from this
input) can keep tasks apart only as far as their tokens are separable here.

    python benchmarks/llm_task_probe.py --config configs/llm_cl.yaml --out benchmarks/results/llm_domains/probe
    python benchmarks/llm_task_probe.py --config configs/llm_cl_adversarial.yaml --out .../probe_adversarial

writes ``OUT.json`` and ``OUT.md`` (one row per layer input).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor


def stream_from_config(path: str) -> tuple[Any, Any, list[Any]]:
    """(model, tokenizer, tasks) of an LLM config: its backbone weights and its data source, built directly."""
    import importlib

    from moram.backbones.lm.build import load_lm

    config = yaml.safe_load(Path(path).read_text())
    backbone = config["model"]["init_args"]["backbone"]["init_args"]
    model, tokenizer = load_lm(backbone.get("model"), backbone.get("config"), backbone.get("tokenizer"))
    source_spec = config["data"]["init_args"]["source"]
    module, _, name = source_spec["class_path"].rpartition(".")
    source = getattr(importlib.import_module(module), name)(**source_spec.get("init_args", {}))
    return model.eval(), tokenizer, source.build()


@torch.no_grad()
def layer_inputs_by_name(
    model: Any, tokenizer: Any, examples: list[dict[str, str]], names: list[str], batch: int = 50
) -> dict[str, Tensor]:
    """``{name: (tokens, width)}``: the input of each named submodule at every real token (bos excluded)."""
    from moram.backbones.lm.batch import encode_causal

    captured: dict[str, list[Tensor]] = {}
    mask_now: list[Tensor] = []
    hooks = []
    for name in names:
        def hook(_module: Any, args: tuple[Tensor, ...], key: str = name) -> None:
            captured.setdefault(key, []).append(args[0][mask_now[0]].float())
        hooks.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        for start in range(0, len(examples), batch):
            chunk = examples[start : start + batch]
            enc = encode_causal(tokenizer, [e["prompt"] for e in chunk], [e["answer"] for e in chunk])
            real = enc["attention_mask"].bool()
            real[:, 0] = False  # bos: the same token for every task
            mask_now[:] = [real]
            model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.cat(v) for k, v in captured.items()}


def layer_inputs(model: Any, tokenizer: Any, examples: list[dict[str, str]], batch: int = 50) -> dict[str, Tensor]:
    """``{"layers.L.qkv" | "layers.L.o": (tokens, width)}``: each adapted layer's input at every real token."""
    names = {}
    for i in range(len(model.model.layers)):
        names[f"model.layers.{i}.self_attn.q_proj"] = f"layers.{i}.qkv"
        names[f"model.layers.{i}.self_attn.o_proj"] = f"layers.{i}.o"
    feats = layer_inputs_by_name(model, tokenizer, examples, list(names), batch)
    return {names[k]: v for k, v in feats.items()}


def ncm_accuracy(x: Tensor, y: Tensor, xt: Tensor, yt: Tensor, classes: int) -> float:
    means = torch.stack([x[y == c].mean(0) for c in range(classes)])
    return float((torch.cdist(xt, means).argmin(1) == yt).float().mean())


def logistic_accuracy(x: Tensor, y: Tensor, xt: Tensor, yt: Tensor, classes: int, l2: float, seed: int) -> float:
    torch.manual_seed(seed)
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((xt @ w + b).argmax(1) == yt).float().mean())


def mean_direction_accuracy(x: Tensor, y: Tensor, xt: Tensor, yt: Tensor, classes: int) -> float:
    """Each held-out token to the task whose (fit) mean input direction it has the largest cosine with."""
    means = torch.nn.functional.normalize(torch.stack([x[y == c].mean(0) for c in range(classes)]), dim=1)
    return float(((xt @ means.T).argmax(1) == yt).float().mean())


def subspace_accuracy(x: Tensor, y: Tensor, xt: Tensor, yt: Tensor, classes: int, rank: int) -> float:
    """Each held-out token to the task whose rank-``rank`` leading uncentred subspace holds most of its energy."""
    energy = []
    for c in range(classes):
        xc = x[y == c].double()
        _, vectors = torch.linalg.eigh(xc.T @ xc / len(xc))  # ascending eigenvalues
        basis = vectors[:, -rank:].to(xt.dtype)  # (d, rank)
        energy.append(((xt @ basis) ** 2).sum(1))
    return float((torch.stack(energy, 1).argmax(1) == yt).float().mean())


def mean_cosine_between_tasks(x: Tensor, y: Tensor, classes: int) -> float:
    """Mean cosine between the mean inputs of two different tasks."""
    means = torch.nn.functional.normalize(torch.stack([x[y == c].mean(0) for c in range(classes)]), dim=1)
    cos = means @ means.T
    off = ~torch.eye(classes, dtype=torch.bool)
    return float(cos[off].mean())


def probe(
    config: str, n_fit: int, n_eval: int, l2: float, seed: int, max_tokens: int, rank: int = 8
) -> dict[str, Any]:
    torch.manual_seed(seed)
    model, tokenizer, tasks = stream_from_config(config)
    rng = random.Random(seed)
    fit: dict[str, list[Tensor]] = {}
    held: dict[str, list[Tensor]] = {}
    fit_y: list[Tensor] = []
    held_y: list[Tensor] = []
    for c, task in enumerate(tasks):
        train = [task.train[i] for i in rng.sample(range(len(task.train)), min(n_fit, len(task.train)))]
        test = [task.test[i] for i in range(min(n_eval, len(task.test)))]
        for examples, store, labels in ((train, fit, fit_y), (test, held, held_y)):
            feats = layer_inputs(model, tokenizer, examples)
            count = None
            for key, value in feats.items():
                if len(value) > max_tokens:  # the same token subset for every layer of this task
                    keep = torch.randperm(len(value), generator=torch.Generator().manual_seed(seed + c))[:max_tokens]
                    value = value[keep]
                store.setdefault(key, []).append(value)
                count = len(value)
            labels.append(torch.full((count or 0,), c))
    y, yt = torch.cat(fit_y), torch.cat(held_y)
    rows = []
    for key in fit:
        raw, raw_t = torch.cat(fit[key]), torch.cat(held[key])
        mean, std = raw.mean(0), raw.std(0).clamp(min=1e-6)
        x, xt = (raw - mean) / std, (raw_t - mean) / std
        rows.append({
            "layer_input": key,
            "ncm": ncm_accuracy(x, y, xt, yt, len(tasks)),
            "logistic": logistic_accuracy(x, y, xt, yt, len(tasks), l2, seed),
            "mean_direction": mean_direction_accuracy(raw, y, raw_t, yt, len(tasks)),
            "subspace": subspace_accuracy(raw, y, raw_t, yt, len(tasks), rank),
            "task_mean_cosine": mean_cosine_between_tasks(raw, y, len(tasks)),
        })
    return {
        "config": config, "tasks": [t.name for t in tasks], "chance": 1 / len(tasks), "fit_examples": n_fit,
        "eval_examples": n_eval, "fit_tokens": len(y), "eval_tokens": len(yt), "l2": l2, "rank": rank,
        "seed": seed, "rows": rows,
    }


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [
        f"# Task-identity probe of the frozen base: `{result['config']}`",
        "",
        f"Tasks: {', '.join(result['tasks'])} (chance {100 * result['chance']:.1f} %). Probes fitted on the tokens of "
        f"{result['fit_examples']} training examples per task ({result['fit_tokens']} tokens), scored on the tokens of "
        f"{result['eval_examples']} test examples per task ({result['eval_tokens']} tokens); frozen base, no adapter.",
        "",
        "Discriminative probes (fitted with every task's tokens) beside positive-only routing on the raw input "
        f"(each task's own mean direction; its own rank-{result.get('rank', 8)} uncentred subspace) and the mean "
        "cosine between two tasks' mean inputs.",
        "",
        "| layer input (adapted linears) | nearest class mean | logistic regression | mean direction "
        "| own subspace | task-mean cosine |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        layer, _, which = row["layer_input"].rpartition(".")
        name = f"{layer} {'q, k, v' if which == 'qkv' else 'o'}"
        extra = (
            f" {100 * row['mean_direction']:.1f} % | {100 * row['subspace']:.1f} % | {row['task_mean_cosine']:.2f} |"
            if "subspace" in row else " – | – | – |"
        )
        lines.append(f"| {name} | {100 * row['ncm']:.1f} % | {100 * row['logistic']:.1f} % |{extra}")
    lines += ["", "Command:", "", "```", command, "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/llm_cl.yaml")
    parser.add_argument("--out", required=True, help="output path without suffix (writes .json and .md)")
    parser.add_argument("--fit", type=int, default=100, help="training examples per task to fit the probes on")
    parser.add_argument("--eval", type=int, default=100, help="test examples per task to score them on")
    parser.add_argument("--max-tokens", type=int, default=3000, help="tokens per task and split kept (a seeded subset)")
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=8, help="atoms per task: the own-subspace column's rank")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    result = probe(args.config, args.fit, args.eval, args.l2, args.seed, args.max_tokens, args.rank)
    result["seconds"] = round(time.perf_counter() - start, 1)
    command = " ".join(["python", "benchmarks/llm_task_probe.py", *(sys.argv[1:] if argv is None else argv)])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({**result, "command": command}, indent=1))
    out.with_suffix(".md").write_text(markdown(result, command))
    print(markdown(result, command))


if __name__ == "__main__":
    main()
