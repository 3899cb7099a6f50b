"""Does key-subspace protection (moram.callbacks.KeySubspaceCallback) help? Baseline vs remedy, seeded.

Fits ``moram fit --config CONFIG`` per (arm, seed) in its own subprocess (through
:func:`benchmarks.compare.fit_one`: seed ``S`` sets ``--seed_everything S --model.atoms.seed S
--data.seed S``; a finished (arm, seed) is not fitted again), both arms with
``AtomUsageCallback`` (routing leakage), the remedy arm adding ``KeySubspaceCallback``. Prints and
writes ``OUT/key_subspace.json`` and ``OUT/key_subspace.md``: per arm and seed the diagonal
(learning: mean of ``R[j, j]``), Last, BWT, ACC and the mean leakage of the final row over the tasks
that have a newer block; then mean ± std over seeds.

``--timing`` instead measures, in one process, the median time of a training step in task 2 (the
projection is active there) with and without the callback, arms alternated, plus the bytes it holds.

    nice -n 19 python benchmarks/key_subspace.py --config configs/clip_cl.yaml --seeds 0 1 2 \\
        --out runs/key_subspace/clip_cl
    nice -n 19 python benchmarks/key_subspace.py --config configs/llm_cl.yaml --seeds 0 --out runs/key_subspace/llm_cl
    nice -n 19 python benchmarks/key_subspace.py --config configs/clip_cl.yaml --timing --steps 20
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import SEED_FLAGS, fit_one, latest_log_dir  # noqa: E402

USAGE = ["--trainer.callbacks+=moram.callbacks.AtomUsageCallback", "--trainer.callbacks.save_plots", "false"]
REMEDY = ["--trainer.callbacks+=moram.callbacks.KeySubspaceCallback"]


def arms(extra: list[str]) -> dict[str, list[str]]:
    return {"baseline": [*USAGE], "key_subspace": [*USAGE, *REMEDY, *extra]}


def record(out: Path, name: str, seed: int, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` (compare's record) plus the diagonal and the final row's leakage."""
    log_dir = latest_log_dir(out / name / f"seed{seed}")
    usage = json.loads((log_dir / "atom_usage" / "summary.json").read_text())
    matrix = base["matrix"]
    leak = [r["leakage"] for r in usage["tasks"][:-1]]  # the last task has no newer block
    return {
        "arm": name, "seed": seed, "seconds": base["seconds"],
        "diagonal": sum(matrix[j][j] for j in range(len(matrix))) / len(matrix),
        "last": base["metrics"]["last"], "acc": base["metrics"]["acc"], "bwt": base["metrics"]["bwt"],
        "forgetting": base["metrics"]["forgetting"],
        "leakage": 100 * sum(leak) / len(leak), "leakage_per_task": [100 * v for v in leak],
        "matrix": matrix, "task_names": base["task_names"],
    }


def table(records: list[dict[str, Any]]) -> str:
    cols = ("diagonal", "last", "acc", "bwt", "forgetting", "leakage")
    lines = ["| arm | seed | learning (diag) | Last | ACC | BWT | forgetting | leakage % |", "|" + "---|" * 8]
    for r in records:
        lines.append(f"| {r['arm']} | {r['seed']} | " + " | ".join(f"{r[c]:.1f}" for c in cols) + " |")
    for arm in dict.fromkeys(r["arm"] for r in records):
        mine = [r for r in records if r["arm"] == arm]
        cells = []
        for c in cols:
            vals = [r[c] for r in mine]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.1f} ± {sd:.1f}")
        lines.append(f"| **{arm}** | {len(mine)} seeds | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare_arms(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for seed in args.seeds:
        for name, overrides in arms(args.remedy_args).items():
            if args.arms and name not in args.arms:
                continue
            base = fit_one(args.config, name, [*overrides, *args.overrides], seed, out, SEED_FLAGS)
            r = record(out, name, seed, base)
            records.append(r)
            print(f"[key_subspace] {name} seed {seed}: diag {r['diagonal']:.1f} last {r['last']:.1f} "
                  f"bwt {r['bwt']:.1f} leakage {r['leakage']:.1f} ({base['seconds']} s)", flush=True)
    records.sort(key=lambda r: (r["arm"] != "baseline", r["seed"]))
    text = table(records)
    (out / "key_subspace.md").write_text(text)
    (out / "key_subspace.json").write_text(json.dumps({"config": args.config, "records": records}, indent=1) + "\n")
    print(text, end="")


def timing(args: argparse.Namespace) -> None:  # noqa: C901 - one measurement, read top to bottom
    """Median step time of task 2 with and without the callback, in this process (arms alternated)."""
    import lightning.pytorch as pl
    import torch

    from moram.callbacks import KeySubspaceCallback
    from moram.cli import main

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._t = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
            self._t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
            if trainer.current_epoch == 1:
                self.times.append(time.perf_counter() - self._t)

    result: dict[str, Any] = {"config": args.config, "steps_per_task": args.steps, "threads": torch.get_num_threads()}
    samples: dict[str, list[float]] = {"baseline": [], "key_subspace": []}
    for rep in range(args.repeats):
        for arm in ("baseline", "key_subspace"):
            cli = main(["--config", args.config, "--data.steps_per_task", str(args.steps),
                        "--trainer.max_steps", str(2 * args.steps), "--trainer.limit_val_batches", "1",
                        "--trainer.callbacks.every_n_train_steps", "1000000", "--trainer.logger", "false",
                        "--trainer.enable_progress_bar", "false",
                        "--trainer.default_root_dir", str(Path(args.out) / "timing"), *args.overrides], run=False)
            timer = StepTimer()
            cli.trainer.callbacks.append(timer)
            remedy = KeySubspaceCallback() if arm == "key_subspace" else None
            if remedy is not None:
                cli.trainer.callbacks.append(remedy)
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
            samples[arm].extend(timer.times[1:])  # the first step of the task warms up
            if remedy is not None:
                result["memory_bytes"] = remedy.memory_bytes()
                result["basis_dims"] = {k: int(v.shape[1]) for k, v in remedy.bases.items()}
            print(f"[timing] rep {rep} {arm}: median {statistics.median(timer.times[1:]) * 1e3:.1f} ms", flush=True)
    for arm, vals in samples.items():
        result[f"{arm}_median_step_s"] = statistics.median(vals)
    result["ratio"] = result["key_subspace_median_step_s"] / result["baseline_median_step_s"]
    dims = list(result.get("basis_dims", {}).values())
    result["basis_dims_mean"] = sum(dims) / len(dims) if dims else math.nan
    print(json.dumps({k: v for k, v in result.items() if k != "basis_dims"}, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/clip_cl.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="runs/key_subspace")
    p.add_argument("--remedy-args", type=shlex.split, default=[], help="overrides of the remedy arm only (one string)")
    p.add_argument("--overrides", type=shlex.split, default=[], help="extra overrides of both arms (one string)")
    p.add_argument("--arms", nargs="*", default=[], help="fit only these arms (default both: baseline key_subspace)")
    p.add_argument("--timing", action="store_true", help="measure the step time ratio in-process instead")
    p.add_argument("--steps", type=int, default=20, help="--timing: steps per task")
    p.add_argument("--repeats", type=int, default=2, help="--timing: alternations of the two arms")
    p.add_argument("--json", default=None, help="--timing: write the result here")
    args = p.parse_args()
    timing(args) if args.timing else compare_arms(args)


if __name__ == "__main__":
    main()
