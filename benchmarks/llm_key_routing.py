"""Did MoRAM's keys learn to route? Trained keys against the random keys they started from, per layer.

Loads the final adapter export of a finished MoRAM run (``RUN/lightning_logs/version_N/adapters/<last
task>``) onto the run's frozen base, feeds the test examples of every task of the run's stream (teacher
forced, every real token but bos) and, in every adapted layer, routes each token exactly as the layer does
at inference (its top-k, temperature, δ gate) with two sets of keys:

* the trained keys (what the run ended with);
* the keys each task's atoms were *initialised* with (re-drawn from the layer's per-task generator:
  ``ContinualLinear.kaiming_rows``; the same numbers the run started every task from).

For every task ``j`` before the last, it reports the share of ``j``'s routing weight that goes to atoms of
*later* tasks (leakage; the ``AtomUsageCallback`` definition) under each set of keys, and how far the keys
moved, ``‖A_t − A_t⁰‖ / ‖A_t⁰‖``, and how much their norm grew, ``‖A_t‖ / ‖A_t⁰‖``, mean over tasks. A third
routing column keeps each trained key's direction but gives it its initial norm: the routing the trained
keys would give without their growth in norm. Routing weights depend on the keys only (the values
scale the output, not the weights), so the init-key column is what routing would be had the keys never
been trained: random keys over the same tokens.

    python benchmarks/llm_key_routing.py --run runs/llm_domains/project/moram/seed0 \\
        --out benchmarks/results/llm_domains/key_routing.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm_task_probe import layer_inputs_by_name, stream_from_config  # noqa: E402


def last_export(run: Path) -> tuple[Path, Path]:
    """``(config.yaml, last task's adapter folder)`` of the newest version of a finished run."""
    versions = sorted(run.glob("lightning_logs/version_*"), key=lambda p: int(p.name[8:]))
    for version in reversed(versions):
        folders = sorted((version / "adapters").glob("task*"), key=lambda p: int(p.name[4:].split("-")[0]))
        if folders and (version / "config.yaml").is_file():
            return version / "config.yaml", folders[-1]
    raise SystemExit(f"--run: no lightning_logs/version_N/adapters/task* with a config.yaml under '{run}'")


def leakage_of(weights: Tensor, labels: Tensor, rank: int, tasks: int) -> list[float]:
    """Per task ``j < tasks - 1``: the share of its tokens' routing weight on atoms of tasks after ``j``.

    ``weights``: ``(tokens, tasks · rank)`` routing weights, atoms in task order; ``labels``: each token's task.
    """
    per_block = weights.reshape(len(weights), tasks, rank).sum(-1)  # (tokens, tasks)
    out = []
    for j in range(tasks - 1):
        block = per_block[labels == j]
        total = float(block.sum())
        out.append(float(block[:, j + 1 :].sum()) / total if total else 0.0)
    return out


@torch.no_grad()
def key_routing(run: Path, examples: int) -> dict[str, Any]:
    from moram.adapters.files import load_adapters
    from moram.atoms.routing import normalized_topk_weights

    config, folder = last_export(run)
    model, tokenizer, stream = stream_from_config(str(config))
    names = load_adapters(model, folder)
    model.eval()
    layers = {name: model.get_submodule(name) for name in names}
    tasks = len(stream)
    inputs: dict[str, list[Tensor]] = {}
    labels = []
    for j, task in enumerate(stream):
        feats = layer_inputs_by_name(model, tokenizer, [task.test[i] for i in range(min(examples, len(task.test)))],
                                     list(layers))
        for name, x in feats.items():
            inputs.setdefault(name, []).append(x)
        labels.append(torch.full((len(next(iter(feats.values()))),), j))
    y = torch.cat(labels)
    rows = []
    for name, layer in layers.items():
        x = torch.cat(inputs[name])
        rank = layer.rank
        if layer.num_atoms != tasks * rank:
            raise SystemExit(f"{name}: {layer.num_atoms} atoms, expected {tasks} tasks × {rank}: is the run finished?")
        trained = layer.keys.float()
        initial = torch.cat([layer.kaiming_rows(rank, t) for t in range(tasks)])
        # the trained directions at the initial keys' norms: what routing would be without the norm growth
        rescaled = torch.nn.functional.normalize(trained, dim=1) * initial.norm(dim=1, keepdim=True)
        row: dict[str, Any] = {"layer": name}
        for label, keys in (("trained", trained), ("initial", initial), ("rescaled", rescaled)):
            w = normalized_topk_weights(x @ keys.T, top_k=layer.top_k, temperature=layer.temperature, eps=layer.eps,
                                        threshold=layer.threshold, signed=layer.signed_scores)
            row[f"leakage_{label}"] = leakage_of(w, y, rank, tasks)
        moved = [float((trained[t * rank:(t + 1) * rank] - initial[t * rank:(t + 1) * rank]).norm()
                       / initial[t * rank:(t + 1) * rank].norm()) for t in range(tasks)]
        row["key_movement"] = moved
        row["norm_growth"] = [float(trained[t * rank:(t + 1) * rank].norm() / initial[t * rank:(t + 1) * rank].norm())
                              for t in range(tasks)]
        rows.append(row)
    return {"run": str(run), "adapters": str(folder), "tasks": [t.name for t in stream], "examples": examples,
            "tokens": len(y), "rows": rows}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [
        f"# Did the keys learn to route? `{result['run']}`",
        "",
        f"Tasks {', '.join(result['tasks'])}; {result['examples']} test examples per task ({result['tokens']} "
        "tokens). Leakage: share of an earlier task's routing weight (inference routing, δ applied) on later "
        "tasks' atoms, mean over the first T − 1 tasks, with the keys the run ended with and with the random "
        "keys each task started from, and with the trained keys' directions at the initial keys' norms; key "
        "movement ‖A_t − A_t⁰‖ / ‖A_t⁰‖ and norm growth ‖A_t‖ / ‖A_t⁰‖, mean over tasks.",
        "",
        "| adapted layer | leakage, trained keys | leakage, initial (random) keys | leakage, trained directions "
        "at initial norms | key movement | key norm growth |",
        "|---|---|---|---|---|---|",
    ]
    rows = result["rows"]
    for row in [*rows, None]:
        def pick(key: str, row: dict[str, Any] | None = row) -> float:
            return _mean(row[key]) if row else _mean([_mean(r[key]) for r in rows])

        lines.append(
            f"| {row['layer'] if row else '**mean**'} | {100 * pick('leakage_trained'):.1f} % | "
            f"{100 * pick('leakage_initial'):.1f} % | {100 * pick('leakage_rescaled'):.1f} % | "
            f"{pick('key_movement'):.2f} | {pick('norm_growth'):.2f} |"
        )
    lines += ["", "Command:", "", "```", command, "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished MoRAM run folder (holds lightning_logs/)")
    parser.add_argument("--out", required=True, help="markdown output; a .json beside it")
    parser.add_argument("--examples", type=int, default=50, help="test examples per task")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = key_routing(Path(args.run), args.examples)
    command = " ".join(["python", "benchmarks/llm_key_routing.py", *(sys.argv[1:] if argv is None else argv)])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(result, command))
    out.with_suffix(".json").write_text(json.dumps({**result, "command": command}, indent=1))
    print(markdown(result, command))


if __name__ == "__main__":
    main()
