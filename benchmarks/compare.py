"""Seeded comparison of methods on one protocol: ``moram fit`` per (run, seed), then one table.

Each run is ``NAME=OVERRIDES`` (command-line overrides of the config, shell-quoted); every run is
fitted once per seed in its own subprocess, sequentially, into ``OUT/NAME/seedS``. A finished
(run, seed) is not fitted again, so an interrupted comparison resumes where it stopped. Then::

    OUT/comparison.md    mean ± std over seeds of learning (the diagonal), Last / Average / Transfer,
                         ACC / BWT / forgetting, routing leakage and delta-emptied tokens (when the run
                         has AtomUsageCallback, see :func:`with_derived`), and the accounting columns
                         (moram.accounting, from the run's adapter_cost.json)
    OUT/comparison.csv   the same, one row per run, plus one row per (run, seed)
    OUT/curves.png       per-task accuracy after each task (mean over seeds, ± std shaded)

Example (the offline default protocol, five methods, three seeds)::

    python benchmarks/compare.py --config configs/clip_cl.yaml --seeds 0 1 2 --out runs/compare \\
        --run moram= \\
        --run zero_shot="--model.method moram.baselines.ZeroShot" \\
        --run seq_lora="--model.method moram.baselines.SequentialLoRA --model.method.rank 8" \\
        --run moe_lora="--model.method moram.baselines.MoELoRA --model.method.rank 8" \\
        --run rank_r_experts="--model.method moram.baselines.RankRExperts --model.method.rank 8"

A seed ``S`` sets ``--seed_everything S --model.seed S --data.seed S`` (global RNG, adapter
initialisation, task data order); change with ``--seed-flags``. :func:`compare` is the function a
``moram compare`` subcommand can call.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SUMMARY = ("last", "average", "transfer", "acc", "bwt", "forgetting")  # from continual_metrics.json
METRICS = ("learning", *SUMMARY, "leakage", "gate_empty")
HEADERS = ("Learning", "Last", "Average", "Transfer", "ACC", "BWT", "Forgetting", "Leakage", "δ-emptied")
COST = ("trainable_per_task", "stored", "flops_per_token_per_layer")
SEED_FLAGS = ("--seed_everything", "--model.seed", "--data.seed")


def _scalar(summary: dict[str, Any], name: str) -> float | None:
    value = summary.get(name)
    if isinstance(value, dict):
        value = value.get("mean")
    return None if value is None else float(value)


def latest_log_dir(root: Path) -> Path:
    """The newest ``lightning_logs/version_N`` under ``root`` that holds ``continual_metrics.json``."""
    found = sorted(root.glob("lightning_logs/version_*/continual_metrics.json"), key=lambda p: int(p.parent.name[8:]))
    if not found:
        raise FileNotFoundError(f"no lightning_logs/version_*/continual_metrics.json under {root}")
    return found[-1].parent


def fit_one(config: str, name: str, overrides: list[str], seed: int, out: Path, seed_flags: tuple[str, ...]) -> dict:
    """Fit one (run, seed) in a subprocess unless done; returns its result record."""
    run_dir = out / name / f"seed{seed}"
    done = run_dir / "result.json"
    if done.is_file():
        return with_derived(json.loads(done.read_text()), run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "moram.cli", "fit", "--config", config,
           *[arg for flag in seed_flags for arg in (flag, str(seed))],
           "--trainer.default_root_dir", str(run_dir), "--trainer.enable_progress_bar", "false", *overrides]
    start = time.time()
    with open(run_dir / "fit.log", "w") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"run '{name}' seed {seed} failed (exit {code}); see {run_dir / 'fit.log'}")
    log_dir = latest_log_dir(run_dir)
    summary = json.loads((log_dir / "continual_metrics.json").read_text())
    cost_file = log_dir / "adapter_cost.json"
    cost = json.loads(cost_file.read_text()) if cost_file.is_file() else {}
    record = {
        "name": name, "seed": seed, "overrides": overrides, "seconds": round(time.time() - start, 1),
        "metrics": {m: _scalar(summary, m) for m in SUMMARY},
        "cost": {c: cost.get(c) for c in COST},
        "task_names": summary["task_names"], "zero_shot": summary["zero_shot"], "matrix": summary["matrix"],
    }
    record = with_derived(record, run_dir)
    done.write_text(json.dumps(record, indent=1) + "\n")
    return record


def with_derived(record: dict, run_dir: Path) -> dict:
    """Fill the metrics a record may lack (records written before they existed are read the same way).

    * ``learning``: mean of the diagonal ``R[j, j]`` (each task right after training it);
    * ``leakage``: from ``AtomUsageCallback``'s ``atom_usage/summary.json`` (final row) when the run wrote one:
      the mean over the tasks that have a newer block (all but the last) of the share of their routing
      weight taken by newer tasks' blocks, in %;
    * ``gate_empty``: from the same file, the mean over tasks of the fraction of tokens whose routing
      weights the delta gate emptied, in %.

    Methods without routed blocks (LoRA variants, zero-shot) have no usage file: their leakage is None.
    """
    metrics = record["metrics"]
    matrix = record["matrix"]
    if metrics.get("learning") is None and matrix:
        metrics["learning"] = sum(matrix[j][j] for j in range(len(matrix))) / len(matrix)
    if metrics.get("leakage") is None and metrics.get("gate_empty") is None:
        metrics["leakage"] = metrics["gate_empty"] = None
        try:
            usage_file = latest_log_dir(run_dir) / "atom_usage" / "summary.json"
        except FileNotFoundError:
            usage_file = None
        if usage_file is not None and usage_file.is_file():
            tasks = json.loads(usage_file.read_text())["tasks"]
            older = tasks[:-1]  # the last task has no newer block
            if older:
                metrics["leakage"] = 100 * sum(t["leakage"] for t in older) / len(older)
            metrics["gate_empty"] = 100 * sum(t["gate_empty_fraction"] for t in tasks) / len(tasks)
    return record


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def aggregate(records: list[dict]) -> list[dict]:
    """One row per run: mean and std over its seeds of every metric, its cost, and its seeds."""
    rows = []
    for name in dict.fromkeys(r["name"] for r in records):
        mine = [r for r in records if r["name"] == name]
        row: dict[str, Any] = {"name": name, "seeds": [r["seed"] for r in mine]}
        for m in METRICS:
            vals = [r["metrics"][m] for r in mine if r["metrics"].get(m) is not None]
            row[m] = _mean_std(vals) if vals else None
        row.update({c: mine[0]["cost"].get(c) for c in COST})
        rows.append(row)
    return rows


def write_tables(rows: list[dict], records: list[dict], out: Path) -> None:
    """``comparison.md`` and ``comparison.csv`` (aggregate rows, then per-seed rows)."""
    head = ["method", "seeds", *HEADERS, "trainable/task", "stored", "FLOPs/token/layer"]

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v[0]:.1f} ± {v[1]:.1f}"

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], str(len(r["seeds"])), *[fmt(r[m]) for m in METRICS],
                 *[("-" if r[c] is None else f"{r[c]:,.0f}") for c in COST]]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    with open(out / "comparison.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "seed", *[x for m in METRICS for x in (m, f"{m}_std")], *COST])
        for r in rows:
            w.writerow([r["name"], "mean", *[x for m in METRICS for x in (r[m] or (None, None))],
                        *[r[c] for c in COST]])
        for rec in records:
            w.writerow([rec["name"], rec["seed"], *[x for m in METRICS for x in (rec["metrics"].get(m), 0.0)],
                        *[rec["cost"].get(c) for c in COST]])


def plot_curves(records: list[dict], out: Path) -> None:
    """``curves.png``: accuracy on each task (one panel per task) after each training task, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = records[0]["task_names"]
    fig, axes = plt.subplots(1, len(names), figsize=(3 * len(names), 3), sharey=True, squeeze=False)
    for method in dict.fromkeys(r["name"] for r in records):
        runs = np.array([[r["zero_shot"], *r["matrix"]] for r in records if r["name"] == method])  # (S, T+1, T)
        mean, std = runs.mean(0), runs.std(0)
        x = np.arange(runs.shape[1])
        for j, ax in enumerate(axes[0]):
            (line,) = ax.plot(x, mean[:, j], marker="o", ms=3, label=method)
            ax.fill_between(x, mean[:, j] - std[:, j], mean[:, j] + std[:, j], alpha=0.15, color=line.get_color())
    for j, ax in enumerate(axes[0]):
        ax.set_title(names[j], fontsize=9)
        ax.set_xticks(range(len(names) + 1), ["0", *[str(i + 1) for i in range(len(names))]])
        ax.set_xlabel("after task")
        ax.axvline(j + 1, color="grey", lw=0.5, ls=":")  # the task is trained here
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)


def compare(
    config: str, runs: dict[str, list[str]], seeds: list[int], out: str | Path,
    seed_flags: tuple[str, ...] = SEED_FLAGS, report_only: bool = False,
) -> list[dict]:
    """Fit every run over every seed (seed-major, so each seed completes a comparison) and write the outputs.

    ``report_only``: fit nothing; tabulate the (run, seed) pairs already finished under ``out``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for seed in seeds:
        for name, overrides in runs.items():
            if report_only and not (out / name / f"seed{seed}" / "result.json").is_file():
                continue
            records.append(fit_one(config, name, overrides, seed, out, seed_flags))
            print(f"[compare] {name} seed {seed}: {records[-1]['metrics']}", flush=True)
    records.sort(key=lambda r: (list(runs).index(r["name"]), r["seed"]))
    rows = aggregate(records)
    write_tables(rows, records, out)
    plot_curves(records, out)
    return rows


def parse_run(text: str) -> tuple[str, list[str]]:
    """``NAME=OVERRIDES`` -> (name, shell-split overrides)."""
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--run must be NAME=OVERRIDES (overrides may be empty), got {text!r}")
    return name, shlex.split(rest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/clip_cl.yaml")
    parser.add_argument("--run", action="append", type=parse_run, required=True, help="NAME=OVERRIDES, repeatable")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--seed-flags", nargs="*", default=list(SEED_FLAGS))
    parser.add_argument("--report-only", action="store_true", help="tabulate finished runs, fit nothing")
    args = parser.parse_args(argv)
    rows = compare(args.config, dict(args.run), args.seeds, args.out, tuple(args.seed_flags), args.report_only)
    print((Path(args.out) / "comparison.md").read_text(), end="")
    del rows


if __name__ == "__main__":
    main()
