"""Per-layer routing leakage of finished runs beside the per-layer task-identity probe of the frozen base.

Reads ``atom_usage/after_taskT.json`` (``AtomUsageCallback``, the final row) of every run under
``--runs`` (``METHOD/seedS/lightning_logs/version_N``) and the probe's JSON (``llm_task_probe.py``), and
writes one markdown table: for each adapted layer, the leakage (share of an earlier task's routing weight
taken by later tasks' blocks, mean over the first T-1 tasks, then over seeds) and the probe's accuracy on
that layer's input.

    python benchmarks/llm_layer_leakage.py --runs runs/llm_domains/project --methods moram rank_r_experts \\
        --probe benchmarks/results/llm_domains/probe.json --out benchmarks/results/llm_domains/layer_leakage.md
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def final_usage(run: Path) -> dict | None:
    """The last ``after_taskT.json`` of a finished run (``compare.py`` writes ``result.json`` when it ends)."""
    if not (run / "result.json").is_file():
        return None
    versions = sorted(run.glob("lightning_logs/version_*/atom_usage"), key=lambda p: int(p.parent.name[8:]))
    if not versions:
        return None
    finals = sorted(versions[-1].glob("after_task*.json"), key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))
    return json.loads(finals[-1].read_text()) if finals else None


def layer_leakage(matrix: list[list[float]]) -> float:
    """Mean over tasks j < T of the share of task j's routing weight on blocks born after j (rows: blocks)."""
    tasks = len(matrix[0])
    shares = []
    for j in range(tasks - 1):
        column = [row[j] for row in matrix]
        total = sum(column)
        shares.append(sum(column[j + 1 :]) / total if total else 0.0)
    return 100 * sum(shares) / len(shares)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True)
    parser.add_argument("--methods", nargs="+", default=["moram"])
    parser.add_argument("--probe", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    probe = {row["layer_input"]: row for row in json.loads(Path(args.probe).read_text())["rows"]}
    table: dict[str, dict[str, list[float]]] = {}
    seeds: dict[str, int] = {}
    for method in args.methods:
        for run in sorted(Path(args.runs, method).glob("seed*")):
            usage = final_usage(run)
            if usage is None:
                continue
            seeds[method] = seeds.get(method, 0) + 1
            for layer, entry in usage["layers"].items():
                table.setdefault(layer, {}).setdefault(method, []).append(layer_leakage(entry["routing_matrix"]))
    head = ["adapted layer", *(f"{m} leakage ({seeds.get(m, 0)} seeds)" for m in args.methods),
            "probe of its input: NCM", "logistic"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for layer, per in table.items():
        index, kind = re.search(r"layers\.(\d+)\.\w+\.(\w)_proj", layer).groups()  # type: ignore[union-attr]
        row = probe[f"layers.{index}.{'o' if kind == 'o' else 'qkv'}"]
        cells = [layer.removeprefix("model."), *(f"{sum(v) / len(v):.1f} %" if (v := per.get(m)) else "–"
                                                  for m in args.methods),
                 f"{100 * row['ncm']:.1f} %", f"{100 * row['logistic']:.1f} %"]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
