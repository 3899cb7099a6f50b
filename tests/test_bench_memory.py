"""benchmarks/bench_memory.py on the tiny CLIP and bench_layer.py's arithmetic floor."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench_memory = load("bench_memory")
bench_layer = load("bench_layer")


def test_floor_is_the_issue_formula():
    d, n, k = 768, 160, 16
    assert bench_layer.floor_ratio(d, n, "fwd+bwd") == pytest.approx(
        (2 * d * d + 2 * d * n + 2 * d * k + 2 * d * k) / (2 * d * d + 6 * d * n))
    assert bench_layer.floor_ratio(768, 160, "fwd+bwd") == pytest.approx(0.769, abs=1e-3)
    assert bench_layer.floor_ratio(768, 640, "fwd+bwd") == pytest.approx(0.536, abs=1e-3)
    assert bench_layer.floor_ratio(768, 160, "inference") == pytest.approx(0.868, abs=1e-3)


def test_layer_table_shows_the_floor_and_the_profile(capsys, one_thread):
    results = bench_layer.main(["--dims", "24", "--atoms", "32", "--tokens", "2x3", "--repeats", "1",
                                "--warmup", "0", "--clock", "wall", "--no-peft", "--profile"])
    out = capsys.readouterr().out
    row = bench_layer.ratio_rows(results, "fwd+bwd")[0]
    assert row["x floor"] == pytest.approx(row["routed/LoRA-N"] / bench_layer.floor_ratio(24, 32, "fwd+bwd"))
    assert "÷ floor" in out
    assert "matrix products" in out
    assert sum(results[24, 32]["profile"].values()) > 0


@pytest.mark.parametrize("phase", ["train", "eval"])
def test_child_measures_the_split_and_checkpointing_saves_less(one_thread, phase):
    plain = bench_memory.run_child(f"{phase}-fp32", 1.0, 2, tiny=True)
    assert plain["weights"] > 0
    assert plain["atoms"] > 0
    assert plain["rss_peak"] >= plain["rss_before"] > 0
    if phase == "eval":
        assert plain["grads"] == plain["optimizer"] == plain["saved_for_backward"] == 0
        return
    assert plain["optimizer"] == 2 * plain["grads"] > 0  # AdamW: two moments per trainable tensor
    # 24 routed layers of width 32 (two blocks per tower, six linears, MLP 4x): 10 tasks x 16 atoms each
    widths = 2 * 2 * (4 * (32 + 32) + (32 + 128) + (128 + 32))
    assert plain["atoms"] >= 160 * widths * 4
    assert plain["grads"] == 16 * widths * 4  # only the current task's atoms train
    ckpt = bench_memory.run_child("train-fp32-ckpt", 1.0, 2, tiny=True)
    chunked = bench_memory.run_child("train-fp32-chunk", 1.0, 2, tiny=True)
    assert ckpt["saved_for_backward"] < 0.7 * plain["saved_for_backward"]
    assert chunked["saved_for_backward"] < plain["saved_for_backward"]
    assert ckpt["loss"] == pytest.approx(plain["loss"], rel=1e-6)
    assert chunked["loss"] == pytest.approx(plain["loss"], rel=1e-6)


def test_table_marks_killed_runs_and_ratios():
    base = {"phase": "train", "dtype": "fp32", "ckpt": False, "chunk": False, "images": 64, "prompts": 397,
            "prompt_chunk": None, "weights": 2**30, "atoms": 2**28, "grads": 2**20, "optimizer": 2**21,
            "saved_for_backward": 2**33, "activations_rss": 2**34, "rss_peak": 2**35, "cpu_s": 100.0}
    ckpt = {**base, "config": "train-fp32-ckpt", "ckpt": True, "activations_rss": 2**32, "cpu_s": 130.0}
    killed = {**base, "config": "train-bf16", "dtype": "bf16", "killed": True, "limit": 13 * 2**30}
    text = bench_memory.table([{**base, "config": "train-fp32"}, ckpt, killed])
    assert "| train-fp32-ckpt | 64 × 397 | 1.00 | 0.25 | 0.00 | 8.00 | 4.00 | 32.00 | 130.0 | 1.30 | 0.25 |" in text
    assert "> 13.00 (killed)" in text


def test_bad_configuration_is_refused():
    with pytest.raises(SystemExit):
        bench_memory.main(["--configs", "train-fp16"])
    with pytest.raises(ValueError, match="unknown configuration"):
        bench_memory.parse_config("train-fp32-ckpt-twice")


def test_extrapolation_fits_a_line_per_configuration_and_checks_it():
    base = {"config": "train-fp32", "phase": "train", "dtype": "fp32", "ckpt": False, "chunk": False,
            "prompt_chunk": None, "weights": 10, "atoms": 5, "grads": 1, "optimizer": 2, "rss_before": 100}
    records = [{**base, "scale": s, "images": round(64 * s), "prompts": round(397 * s),
                "activations_rss": 7 + 40 * s + (1 if s == 0.5 else 0), "saved_for_backward": 3 + 30 * s,
                "cpu_s": 80 * s, "rss_peak": 0} for s in (0.125, 0.25, 0.5)]
    records.append({**base, "config": "train-fp32-ckpt", "ckpt": True, "scale": 0.25, "images": 16, "prompts": 99,
                    "activations_rss": 1, "saved_for_backward": 1, "cpu_s": 1, "rss_peak": 0})  # one scale: no fit
    [fitted] = bench_memory.extrapolate(records)
    assert fitted["config"] == "train-fp32"
    assert (fitted["images"], fitted["prompts"], fitted["scales"]) == (64, 397, [0.125, 0.25, 0.5])
    assert fitted["saved_for_backward"] == pytest.approx(33)
    assert fitted["cpu_s"] == pytest.approx(80)
    assert fitted["rss_peak"] == 100 + fitted["activations_rss"]
    assert fitted["check"] == pytest.approx((7 + 40 * 0.5) / (7 + 40 * 0.5 + 1) - 1)  # 0.5 from 0.125 and 0.25
    assert bench_memory.gpu_estimate(fitted) == 10 + 5 + 2 + fitted["activations_rss"]
