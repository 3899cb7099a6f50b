"""The δ gate after the fact: a finished run's final model scored on every task at several thresholds.

δ (``model.method.threshold``) acts at inference only, so it needs no retraining: for each finished run
under ``--runs`` (``NAME/seedS/lightning_logs/version_N``) and each δ, ``moram validate`` scores every
task with the run's last checkpoint and ``--model.method.threshold δ`` (``-1`` keeps every selected atom:
normalised scores are never below −1, so it is "no gate"). Writes a markdown table of the final row's mean
(Last) and per-task scores per δ, mean over the runs found, beside the learning (diagonal) the run itself
measured at its own δ.

    python benchmarks/llm_gate_sweep.py --runs runs/llm_domains/project/moram \\
        --thresholds -1 0 0.1 0.2 0.3 0.5 --out benchmarks/results/llm_domains/gate_sweep.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

SCORE = re.compile(r"eval/score/(\S+)\s*│\s*(-?[\d.]+(?:e-?\d+)?)")


def finished_versions(runs: Path) -> list[Path]:
    """The newest ``lightning_logs/version_N`` with a finished ``continual_metrics.json`` of each seed folder."""
    out = []
    for seed in sorted(runs.glob("seed*")):
        versions = sorted(seed.glob("lightning_logs/version_*"), key=lambda p: int(p.name[8:]))
        for version in reversed(versions):
            metrics = version / "continual_metrics.json"
            if metrics.is_file() and json.loads(metrics.read_text()).get("finished"):
                out.append(version)
                break
    if not out:
        raise SystemExit(
            f"--runs: no finished run (seedS/lightning_logs/version_N/continual_metrics.json) under '{runs}'"
        )
    return out


def scores_at(version: Path, threshold: float) -> dict[str, float]:
    """Every task's score of ``version``'s last checkpoint at ``threshold``, from ``moram validate``'s table."""
    command = [
        sys.executable, "-m", "moram.cli", "validate", "--config", str(version / "config.yaml"),
        "--ckpt_path", str(version / "checkpoints" / "last.ckpt"), "--model.method.threshold", str(threshold),
        "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
        "--trainer.default_root_dir", str(version / "gate_sweep"),
    ]
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise SystemExit(f"moram validate failed on {version} at threshold {threshold}:\n{done.stderr[-2000:]}")
    scores: dict[str, float] = {}
    for task, value in SCORE.findall(done.stdout):
        scores.setdefault(task, float(value))
    return scores


def sweep(runs: Path, thresholds: list[float]) -> dict[str, Any]:
    versions = finished_versions(runs)
    records = []
    for version in versions:
        metrics = json.loads((version / "continual_metrics.json").read_text())
        tasks = metrics["task_names"]
        matrix = metrics["matrix"]  # row i: after task i (the zero-shot row is metrics["zero_shot"])
        learning = [matrix[j][j] for j in range(len(tasks))]
        rows = {str(t): scores_at(version, t) for t in thresholds}
        records.append({"version": str(version), "tasks": tasks, "learning": learning, "final_row": rows})
    return {"runs": str(runs), "thresholds": thresholds, "records": records}


def markdown(result: dict[str, Any], command: str) -> str:
    records = result["records"]
    tasks = records[0]["tasks"]
    n = len(records)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    learning = mean([mean(r["learning"]) for r in records])
    lines = [
        f"# The δ gate after the fact: `{result['runs']}` ({n} run{'s' if n > 1 else ''})",
        "",
        f"Each run's final model scored at each δ (`moram validate`, `--model.method.threshold`; −1 = no gate). "
        f"Learning (the diagonal, measured during the run at its own δ): {learning:.1f}. Mean over runs.",
        "",
        "| δ | Last | " + " | ".join(tasks) + " |",
        "|---|---|" + "---|" * len(tasks),
    ]
    for t in result["thresholds"]:
        per_task = [mean([r["final_row"][str(t)].get(task, float("nan")) for r in records]) for task in tasks]
        lines.append(f"| {t:g} | {mean(per_task):.1f} | " + " | ".join(f"{v:.1f}" for v in per_task) + " |")
    lines += ["", "Command:", "", "```", command, "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="a method's folder of seedS runs (compare.py's OUT/NAME)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[-1.0, 0.0, 0.1, 0.2, 0.3, 0.5])
    parser.add_argument("--out", required=True, help="markdown output; a .json beside it")
    args = parser.parse_args(argv)
    result = sweep(Path(args.runs), args.thresholds)
    command = " ".join(["python", "benchmarks/llm_gate_sweep.py", *(sys.argv[1:] if argv is None else argv)])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(result, command))
    out.with_suffix(".json").write_text(json.dumps({**result, "command": command}, indent=1))
    print(markdown(result, command))


if __name__ == "__main__":
    main()
