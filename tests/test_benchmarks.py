"""benchmarks/bench_layer.py and benchmarks/bench_step.py on tiny sizes: tables, ratios, models, memory."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up; bench_step imports bench_layer by name
    spec.loader.exec_module(module)
    return module


bench_layer = load("bench_layer")
bench_step = load("bench_step")


def table_rows(text, first_cell):
    """Cells of the markdown rows of ``text`` whose first cell is ``first_cell``."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            rows.append(cells)
    return rows


# ---------------------------------------------------------------------------- the layer benchmark
def test_targets_follow_the_issue():
    assert bench_layer.target(16) == 1.1
    assert bench_layer.target(64) is None
    assert bench_layer.target(160) == bench_layer.target(1600) == 0.8


def test_routed_layer_holds_n_atoms_and_routes_them_all():
    layer = bench_layer.routed_layer(8, 48)
    assert layer.keys.shape == (48, 8)
    layer.eval()
    assert bench_layer.routed_count(layer, torch.randn(2, 8)) == 48  # the current atoms route at inference


def test_layer_tables_and_ratios(capsys, one_thread):
    results = bench_layer.main(["--dims", "24", "--atoms", "16,32", "--tokens", "2x3", "--repeats", "1",
                                "--warmup", "0", "--clock", "wall"])
    out = capsys.readouterr().out
    assert set(results) == {(24, 16), (24, 32)}
    printed = table_rows(out, "24")
    assert len(printed) == 6  # fwd+bwd, inference and memory: one row per N each
    header = next(line for line in out.splitlines() if line.startswith("| d | N |"))
    columns = [c.strip() for c in header.strip().strip("|").split("|")]
    for mode, rows in zip(("fwd+bwd", "inference"), (printed[:2], printed[2:4]), strict=True):
        assert [r["N"] for r in bench_layer.ratio_rows(results, mode)] == [16, 32]
        for cells, n in zip(rows, (16, 32), strict=True):
            t = results[24, n][mode]
            assert set(t) == {"routed", "lora_n", "peft_n", "lora_r", "frozen"}
            assert all(v > 0 for v in t.values())
            cell = dict(zip(columns, cells, strict=True))
            assert cell["routed (ms)"] == f"{t['routed']:.2f}"
            assert cell["routed/LoRA-N"] == f"{t['routed'] / t['lora_n']:.2f}"  # ratios of the printed medians
            assert cell["routed/LoRA-r"] == f"{t['routed'] / t['lora_r']:.2f}"
            assert cell["routed/frozen"] == f"{t['routed'] / t['frozen']:.2f}"
            assert cell["target"] == ("≤ 1.1" if n == 16 else "—")
    memory = {n: results[24, n]["memory"] for n in (16, 32)}
    assert memory[16]["routed"] > 0
    assert memory[32]["routed"] > memory[16]["routed"]  # more atoms, more saved responses
    assert memory[32]["lora_n"] > memory[16]["lora_n"]
    assert memory[16]["frozen"] == 0  # a frozen linear saves nothing beyond its weight


def test_saved_bytes_counts_each_storage_once_and_skips_parameters():
    w = torch.nn.Parameter(torch.randn(4, 4))
    x = torch.randn(3, 4, requires_grad=True)
    with bench_layer.count_saved_bytes([w]) as saved:
        y = (x @ w).relu()  # saves x (and w, excluded) for the matmul, the output for relu
    assert saved[0] == 2 * 3 * 4 * 4
    y.sum().backward()


def test_bad_options_are_rejected():
    with pytest.raises(SystemExit):
        bench_layer.main(["--atoms", "20"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_without_a_gpu_fails_clearly():
    with pytest.raises(SystemExit, match="CUDA is not available"):
        bench_layer.main(["--device", "cuda", "--dims", "8", "--atoms", "16"])
    with pytest.raises(SystemExit, match="CUDA is not available"):
        bench_step.main(["--device", "cuda", "--model-config", "nothing.json"])


# ---------------------------------------------------------------------------- the step benchmark
def test_step_models_have_the_right_ranks_and_share_the_backbone(tiny_config, one_thread):
    pytest.importorskip("peft")
    base, _ = bench_step.build_base(None, str(tiny_config), "cpu")
    rank = 2
    for tasks in (1, 3):
        routed = bench_step.routed_model(base, tasks, 3, rank)
        atoms = bench_step.atoms_per_layer(routed)
        assert atoms == [tasks * rank] * 12  # 1 block x (q, k, v, out, c_fc, c_proj) x 2 towers
        lora = bench_step.peft_model(base, tasks * rank)
        assert bench_step.lora_ranks(lora) == atoms  # equal total rank, layer by layer
        trainable = [n for n, p in routed.named_parameters() if p.requires_grad]
        assert trainable
        assert all(n.endswith(("current_keys", "current_values")) for n in trainable)
    shared = dict(routed.named_parameters())["visual.transformer.resblocks.0.mlp.c_fc.base.weight"]
    assert shared is dict(base.named_parameters())["visual.transformer.resblocks.0.mlp.c_fc.weight"]
    frozen = bench_step.frozen_model(base)
    assert sorted(n for n, p in frozen.named_parameters() if p.requires_grad) == sorted(bench_step.POSITIONAL)
    assert not any(p.requires_grad for p in base.parameters())  # the shared backbone stays frozen


def test_step_benchmark_tables_memory_and_schedule(tiny_config, capsys, one_thread):
    pytest.importorskip("peft")
    result = bench_step.main(["--model-config", str(tiny_config), "--tasks", "1,3", "--rank", "2", "--batch", "2",
                              "--classes", "3", "--repeats", "1", "--warmup", "0", "--clock", "wall",
                              "--schedule", "--schedule-tasks", "2", "--steps-per-task", "2"])
    out = capsys.readouterr().out
    v = result["steps"]["variants"]
    assert list(v) == ["routed-t1", "routed-t3", "peft-2", "peft-6", "frozen fwd+bwd", "frozen fwd"]
    assert v["routed-t3"]["atoms"] == [6] * 12
    assert v["peft-6"]["ranks"] == [6] * 12
    assert v["routed-t1"]["trainable"] == v["routed-t3"]["trainable"]  # only the current atoms train
    assert v["peft-6"]["trainable"] == 3 * v["peft-2"]["trainable"]
    assert 0 < v["routed-t1"]["memory"] < v["routed-t3"]["memory"]
    assert 0 < v["peft-2"]["memory"] < v["peft-6"]["memory"]
    assert v["frozen fwd+bwd"]["memory"] > 0
    ratios = result["ratios"]
    assert ratios["step(t_max)/step(t_min)"] == v["routed-t3"]["ms"] / v["routed-t1"]["ms"]
    assert ratios["routed-t3/peft-6"] == v["routed-t3"]["ms"] / v["peft-6"]["ms"]
    assert ratios["flop_ratio"] > 1.0  # more atoms, more FLOPs
    assert v["routed-t3"]["counted_flops"] > v["routed-t1"]["counted_flops"] > v["frozen fwd+bwd"]["counted_flops"]
    for name in v:
        assert len(table_rows(out, name)) == 1
    assert re.search(r"routed step\(3 tasks\) / step\(1 task\) \| \d+\.\d\d \| ≤ ", out)
    sched = result["schedule"]
    assert len(sched["step_s"]) == 2
    assert sched["estimated_s"] == pytest.approx(500 * sum(sched["step_s"]))
    assert "target < 10 minutes on one H200" in out


# ---------------------------------------------------------------------------- the task-identity probe

llm_task_probe = load("llm_task_probe")


def test_positive_only_routing_columns_on_hand_computed_tokens():
    """Mean direction, own subspace and task-mean cosine of the probe, on tokens small enough to do by hand."""
    y = torch.tensor([0, 0, 1, 1])
    # means m0 = (2, 0.5), m1 = (0.5, 3): cos = 2.5 / (sqrt(4.25) sqrt(9.25)) = 0.3987
    x = torch.tensor([[2.0, 0.0], [2.0, 1.0], [0.0, 3.0], [1.0, 3.0]])
    assert llm_task_probe.mean_cosine_between_tasks(x, y, 2) == pytest.approx(2.5 / (4.25**0.5 * 9.25**0.5), abs=1e-6)
    # (1, 1): cosines 2.5 / 2.062 = 1.213 (task 0) vs 3.5 / 3.041 = 1.151 -> task 0;
    # (1, 2): 3.0 / 2.062 = 1.455 vs 6.5 / 3.041 = 2.137 -> task 1 (labelled 0 here: wrong)
    xt = torch.tensor([[1.0, 1.0], [1.0, 2.0]])
    assert llm_task_probe.mean_direction_accuracy(x, y, xt, torch.tensor([0, 0]), 2) == 0.5
    # sign-symmetric tasks (zero means): task 0 spans e1 (E[x xT] = diag(9, 0)), task 1 spans e2
    x = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    xt = torch.tensor([[1.0, 0.5], [-0.5, -1.0], [-2.0, 0.1]])
    assert llm_task_probe.subspace_accuracy(x, y, xt, torch.tensor([0, 1, 0]), 2, 1) == 1.0
    assert llm_task_probe.subspace_accuracy(x, y, xt, torch.tensor([1, 0, 0]), 2, 1) == pytest.approx(1 / 3)


def test_key_routing_leakage_is_the_later_blocks_share_per_earlier_task():
    llm_key_routing = load("llm_key_routing")
    # 3 tasks x rank 2 atoms; two tokens of task 0, one of task 1, one of task 2
    w = torch.tensor([
        [0.5, 0.1, 0.2, 0.0, 0.2, 0.0],  # task 0: later blocks take 0.2 + 0.2 of 1.0
        [0.3, 0.3, 0.0, 0.0, 0.0, 0.0],  # task 0: none (0.6 in all: shares are of the task's total weight)
        [0.0, 0.0, 0.25, 0.25, 0.5, 0.0],  # task 1: block 2 takes 0.5 of 1.0
        [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],  # task 2: the last task has no later block: not reported
    ])
    y = torch.tensor([0, 0, 1, 2])
    assert llm_key_routing.leakage_of(w, y, rank=2, tasks=3) == pytest.approx([0.4 / 1.6, 0.5])
