"""benchmarks/gpu_check.py: the CPU dry run of the one-command GPU check (issue 16), and its wheel list."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
CUDA_ONLY = {"gpu-tests", "strategies", "resume-fsdp"}
FAST = "install,gpu-tests,strategies,resume-fsdp,layer,step-compile"  # orchestration + one tiny real step


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gpu_check = load()


def dry_run(tmp_path: Path, *extra: str, timeout: float) -> tuple[dict, str]:
    report = tmp_path / "out" / "report.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--report", str(report), *extra],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    assert report.exists(), proc.stderr[-4000:]
    data = json.loads(report.with_suffix(".json").read_text())
    return {"rc": proc.returncode, "steps": {s["name"]: s for s in data["steps"]}, "pending": data["pending"]}, \
        report.read_text()


def check_common(result: dict, text: str, names: list[str]) -> None:
    steps = result["steps"]
    assert list(steps) == names  # every chosen step, in order, with a status
    assert result["pending"] == []
    for name, step in steps.items():
        assert step["status"]
        assert f"| {name} | {step['status']} |" in text  # the summary row
        assert f"## {name}: {step['status']}" in text  # and its section
    assert steps["install"]["status"] == "skipped: dry run (no install)"
    for name in CUDA_ONLY & set(steps):
        assert steps[name]["status"].startswith("skipped: needs CUDA"), name
    layer = steps["layer"]
    assert layer["status"] == "ok", layer["tail"]
    assert layer["exit_code"] == 0
    assert layer["seconds"] > 0
    assert len(layer["tables"]) == 3  # fwd+bwd, inference, memory: verbatim in the report
    assert layer["tables"][0].startswith("**fwd+bwd**")
    for table in layer["tables"]:
        assert table in text
    assert any(line.startswith("| 32 | 16 |") for line in layer["tables"][0].splitlines())
    assert steps["step-compile"]["status"].startswith(("not covered", "ok"))


@pytest.mark.slow  # a subset of test_full_dry_run
def test_dry_run_orchestration_and_one_tiny_step(tmp_path):
    result, text = dry_run(tmp_path, "--steps", FAST, timeout=120)
    check_common(result, text, FAST.split(","))
    assert result["rc"] == 0


@pytest.mark.slow
def test_full_dry_run(tmp_path):
    # Every step: the resume checks run moram fit 4 times on CPU (minutes on a slow machine).
    result, text = dry_run(tmp_path, timeout=600)
    check_common(result, text, gpu_check.STEPS)
    steps = result["steps"]
    for name in ("resume-ddp", "resume-fsdp2", "step", "schedule"):
        assert steps[name]["status"] == "ok", f"{name}: {steps[name]['tail']}"
    for name in ("resume-ddp", "resume-fsdp2"):
        row = next(line for line in steps[name]["tables"][0].splitlines() if line.startswith(f"| {name[7:]} |"))
        assert row.endswith("| True | 0.00e+00 | True | True | True | True |")  # bitwise on CPU
    assert "target < 10 minutes on one H200" in steps["schedule"]["tail"]
    assert result["rc"] == 0


def test_unknown_steps_are_rejected(tmp_path):
    with pytest.raises(SystemExit, match="unknown step"):
        gpu_check.main(["--dry-run", "--steps", "layer,nope", "--report", str(tmp_path / "r.md")])


def test_gpu_plan_uses_cuda_and_the_issue_sizes(tmp_path):
    args = argparse.Namespace(dry_run=False, no_install=False)
    steps = {s.name: s for s in gpu_check.plan(args, tmp_path)}
    assert list(steps) == gpu_check.STEPS
    assert not any(s.skip for n, s in steps.items() if n != "step-compile")
    layer, step, schedule = (" ".join(steps[n].cmd) for n in ("layer", "step", "schedule"))
    assert "--device cuda --dims 768,3072 --atoms 16,160,640,1600" in layer
    assert "--device cuda" in step
    assert "--tasks 1,5,10" in step
    assert "--device cuda" in schedule
    assert "--schedule" in schedule
    assert steps["strategies"].cmd[-1] == "tests/test_distributed.py"  # its gpu cases: DDP, FSDP1, FSDP2
    assert "gpu" in steps["strategies"].cmd
    assert "--ignore=tests/test_distributed.py" in steps["gpu-tests"].cmd  # not run twice
    assert [steps[f"resume-{s}"].cmd[-3] for s in ("ddp", "fsdp", "fsdp2")] == ["gpu"] * 3


def test_markdown_tables_keep_their_titles():
    text = "x\n**a** (ms)\n\n| h |\n|---|\n| 1 |\ntext\n| b |\n"
    assert gpu_check.markdown_tables(text) == ["**a** (ms)\n\n| h |\n|---|\n| 1 |", "| b |"]


# ---------------------------------------------------------------------------------------- wheels
def test_wheel_list_is_pinned_names():
    reqs = [Requirement(w) for w in gpu_check.WHEELS]  # each a valid requirement
    names = [canonicalize_name(r.name) for r in reqs]
    assert len(set(names)) == len(names)  # one version of each: two stop the install
    assert all(len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==" for r in reqs)
    assert {"open-clip-torch", "jsonargparse", "docstring-parser", "typeshed-client", "ftfy", "wcwidth"} <= set(names)
    assert not set(names) & {canonicalize_name(n) for n in gpu_check.ON_GPU_IMAGE} - {"timm"}
    cmd = gpu_check.download_command(Path("/nowhere"))
    assert cmd[-len(gpu_check.WHEELS):] == gpu_check.WHEELS
    assert {"--no-deps", "--only-binary=:all:"} <= set(cmd)
    assert cmd[cmd.index("--python-version") + 1] == "3.12"


def test_wheel_list_covers_what_the_carried_packages_need():
    # Read from this environment's metadata: every requirement of a carried wheel (jsonargparse with
    # its signatures extras) is carried too or already on the GPU image.
    have = {canonicalize_name(Requirement(w).name) for w in gpu_check.WHEELS}
    have |= {canonicalize_name(n) for n in gpu_check.ON_GPU_IMAGE}
    extras = {"jsonargparse": {"", "signatures", "typing-extensions"}}
    for wheel in gpu_check.WHEELS:
        name = Requirement(wheel).name
        try:
            needs = requires(name) or []
        except PackageNotFoundError:
            pytest.skip(f"{name} not installed here")
        for line in needs:
            req = Requirement(line)
            wanted = extras.get(name, {""})
            if req.marker and not any(req.marker.evaluate({"extra": e, "python_version": "3.12"}) for e in wanted):
                continue
            assert canonicalize_name(req.name) in have, f"{name} needs {line}"
