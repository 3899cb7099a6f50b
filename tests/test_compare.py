"""benchmarks/compare.py: tables and curves from per-seed records; finished runs are not fitted again."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("compare", ROOT / "benchmarks" / "compare.py")
assert spec is not None
assert spec.loader is not None
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def record(name, seed, last):
    return {
        "name": name, "seed": seed, "overrides": [], "seconds": 1.0,
        "metrics": {"last": last, "average": 50.0, "transfer": None, "acc": last, "bwt": -1.0, "forgetting": 1.0},
        "cost": {"trainable_per_task": 10, "stored": 20, "flops_per_token_per_layer": 3.5},
        "task_names": ["a", "b"], "zero_shot": [50.0, 50.0], "matrix": [[90.0, 50.0], [80.0, last]],
    }


def test_tables_and_curves(tmp_path):
    records = [record("moram", 0, 90.0), record("moram", 1, 94.0), record("lora", 0, 70.0)]
    records = [compare.with_derived(r, tmp_path / "no-run") for r in records]
    rows = compare.aggregate(records)
    assert rows[0]["last"] == pytest.approx((92.0, 2.0 ** 0.5 * 2.0))  # sample std of 90, 94
    assert rows[1]["last"] == (70.0, 0.0)
    assert rows[0]["transfer"] is None
    compare.write_tables(rows, records, tmp_path)
    compare.plot_curves(records, tmp_path)
    table = (tmp_path / "comparison.md").read_text()
    assert "| moram | 2 | 91.0 ± 1.4 | 92.0 ± 2.8 |" in table  # learning (diagonal 90, 90 / 94), then Last
    assert "| 10 | 20 | 4 |" in table
    assert (tmp_path / "comparison.csv").read_text().count("\n") == 1 + 2 + 3
    assert (tmp_path / "curves.png").is_file()


def test_finished_runs_are_read_back_not_refitted(tmp_path):
    done = tmp_path / "moram" / "seed3"
    done.mkdir(parents=True)
    (done / "result.json").write_text(json.dumps(record("moram", 3, 88.0)))
    got = compare.fit_one("no-such-config.yaml", "moram", [], 3, tmp_path, compare.SEED_FLAGS)
    assert got["metrics"]["last"] == 88.0
    rows = compare.compare("no-such-config.yaml", {"moram": [], "lora": []}, [3, 4], tmp_path, report_only=True)
    assert [(r["name"], r["seeds"]) for r in rows] == [("moram", [3])]  # unfinished pairs are left out
    assert (tmp_path / "comparison.md").is_file()


def test_run_syntax():
    assert compare.parse_run("lora=--model.method moram.baselines.SequentialLoRA --model.lr 5e-3") == (
        "lora", ["--model.method", "moram.baselines.SequentialLoRA", "--model.lr", "5e-3"])
    assert compare.parse_run("moram=") == ("moram", [])


def test_learning_and_leakage_are_derived_from_the_run(tmp_path):
    """Learning is the mean diagonal; leakage and delta-emptied come from AtomUsageCallback's summary file."""
    run_dir = tmp_path / "moram" / "seed0"
    log_dir = run_dir / "lightning_logs" / "version_0"
    (log_dir / "atom_usage").mkdir(parents=True)
    (log_dir / "continual_metrics.json").write_text("{}")
    tasks = [{"task": "a", "own_share": 0.5, "leakage": 0.4, "gate_empty_fraction": 0.1},
             {"task": "b", "own_share": 0.7, "leakage": 0.2, "gate_empty_fraction": 0.0},
             {"task": "c", "own_share": 1.0, "leakage": 0.0, "gate_empty_fraction": 0.2}]
    (log_dir / "atom_usage" / "summary.json").write_text(json.dumps({"row": "after_task3", "tasks": tasks}))
    rec = record("moram", 0, 60.0)
    rec["matrix"] = [[90.0, 10.0, 0.0], [70.0, 80.0, 5.0], [50.0, 40.0, 60.0]]
    (run_dir / "result.json").write_text(json.dumps(rec))  # a record from before these metrics existed
    got = compare.fit_one("no-such-config.yaml", "moram", [], 0, tmp_path, compare.SEED_FLAGS)
    assert got["metrics"]["learning"] == pytest.approx((90 + 80 + 60) / 3)
    assert got["metrics"]["leakage"] == pytest.approx(100 * (0.4 + 0.2) / 2)  # the last task has no newer block
    assert got["metrics"]["gate_empty"] == pytest.approx(100 * 0.3 / 3)
    lora = compare.with_derived(record("lora", 0, 70.0), tmp_path / "lora" / "seed0")  # no run folder at all
    assert lora["metrics"]["leakage"] is None
    assert lora["metrics"]["gate_empty"] is None
    rows = compare.aggregate([got, lora])
    compare.write_tables(rows, [got, lora], tmp_path)
    table = (tmp_path / "comparison.md").read_text()
    assert "| 30.0 ± 0.0 | 10.0 ± 0.0 |" in table  # leakage, delta-emptied of moram
    assert "| 1.0 ± 0.0 | - | - |" in table  # lora: forgetting, then no leakage columns
