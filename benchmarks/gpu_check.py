"""Prove and time moram's CUDA path on one GPU in one command (issue 16): a report of every step.

Steps (``--steps`` picks some, comma-separated; each is a subprocess with its own timeout, a failure
is recorded and the next step runs; the report is rewritten after every step):

  install        pip install the carried wheels (``--wheels``, default ``.whl``) with ``--no-index``,
                 then the project itself (``--no-deps --no-build-isolation -e .``)
  gpu-tests      ``pytest -m gpu tests`` but tests/test_distributed.py (exit 5, "no tests marked gpu", is
                 recorded as such)
  strategies     ``pytest -m gpu tests/test_distributed.py``: a one-GPU reference run against DDP (NCCL),
                 FSDP1, FSDP2 on every GPU present (here one)
  resume-ddp     per strategy (``resume-fsdp``, ``resume-fsdp2`` too): two tasks x 3 steps with a
                 consolidation between, a checkpoint every step; the frozen atoms must stay
                 bit-identical through the second task, and a run resumed from the mid-task
                 checkpoint (step 4) must end with the atoms and the accuracy matrix of the full run
  layer          ``bench_layer.py --device cuda`` (bf16) at d = 768, 3072 and N = 16, 160, 640, 1600
  step           ``bench_step.py --device cuda``: 1/5/10 tasks against peft and the frozen floor
  step-compile   the same with ``--compile``, when bench_step.py has that flag (else "not covered")
  schedule       ``bench_step.py --device cuda --no-steps --schedule``: the X-TAIL schedule timing

The report (``--report``, default ``benchmarks/results/gpu_check/report.md``, and ``report.json``
beside it) holds per step the command, exit code, wall seconds, the markdown tables it printed
(verbatim) and the tail of its output. ``--budget`` (seconds, default 450) caps the whole run: a
step never gets more than what is left, and steps that find too little left are recorded as skipped.

``--dry-run`` (CPU, no GPU needed): the same steps at tiny sizes on CPU, no install; what needs CUDA
(``gpu-tests``, ``strategies`` (NCCL, FSDP1), ``resume-fsdp``) is recorded "skipped: needs CUDA";
``resume-ddp`` and ``resume-fsdp2`` run on one CPU process (gloo); the benchmarks run on a tiny CLIP.

``--download-wheels DIR`` (on a machine with the package registries): ``pip download`` the wheels
of :data:`WHEELS` for the GPU machine's Python 3.12, x86-64, so that it can install them offline.

On a GPU machine lent through the device tool (see benchmarks/README.md)::

    python benchmarks/gpu_check.py --download-wheels .whl          # here, once (adds /.whl/ to .git/info/exclude)
    python3 benchmarks/gpu_check.py --wheels .whl --report $OUT/report.md     # there; carry: [".whl"]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
TESTS = ROOT / "tests"
DISTRIBUTED = "tests/test_distributed.py"  # its gpu cases: the strategies step
DEFAULT_REPORT = BENCH / "results" / "gpu_check" / "report.md"
DEFAULT_WHEELS = ROOT / ".whl"

# What open_clip_torch and jsonargparse[signatures] need that a torch + lightning + transformers + peft
# machine may lack (pinned to the versions this project is tested with). The H200 image (device
# KINDS.md) already holds torch, torchvision, regex, tqdm, safetensors, pyyaml, typing-extensions and
# huggingface-hub (1.x; carrying 2.x would drag httpx2, hf-xet and click along): those stay out.
# timm is there too, but open_clip 3.x needs timm >= 1.0.17, so a recent one travels in case.
WHEELS = [
    "open_clip_torch==3.3.0",  # needs ftfy, timm (+ torch, torchvision, regex, tqdm, huggingface-hub, safetensors)
    "jsonargparse==4.53.0",  # needs PyYAML
    "docstring-parser==0.18.0",  # jsonargparse[signatures]
    "typeshed-client==2.15.0",  # jsonargparse[signatures]; needs typing-extensions >= 4.5
    "ftfy==6.3.1",  # needs wcwidth
    "wcwidth==0.9.4",
    "timm==1.0.31",
]
# Already on the H200 image (device KINDS.md, 'Python packages already there'): not carried.
ON_GPU_IMAGE = ["torch", "torchvision", "lightning", "transformers", "peft", "regex", "tqdm", "huggingface-hub",
                "safetensors", "pyyaml", "typing-extensions", "timm", "setuptools", "pytest"]
# What the install step asks pip for, resolving with --no-index against the carried wheels.
INSTALL = ["open_clip_torch", "jsonargparse[signatures]"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
STEPS = ["install", "gpu-tests", "strategies", "resume-ddp", "resume-fsdp", "resume-fsdp2", "layer", "step",
         "step-compile", "schedule"]
TAIL_LINES = 40
MID_TASK_STEP = 4  # 3 steps per task: the checkpoint after step 4 lies inside the second task


@dataclass
class Step:
    name: str
    what: str
    cmd: list[str] | None = None
    timeout: float = 120.0
    skip: str | None = None  # a reason: the step is recorded, not run
    ok_codes: dict[int, str] = field(default_factory=dict)  # exit codes that are not failures, with a status


@dataclass
class Result:
    name: str
    what: str
    command: str
    status: str
    exit_code: int | None = None
    seconds: float | None = None
    tables: list[str] = field(default_factory=list)
    tail: str = ""


# ---------------------------------------------------------------------------------------- the steps
def has_flag(script: Path, flag: str) -> bool:
    return f'"{flag}"' in script.read_text()


def plan(args: argparse.Namespace, scratch: Path) -> list[Step]:
    """The steps, in order; ``args.dry_run`` gives tiny CPU versions and skips what needs CUDA."""
    py, dry = sys.executable, args.dry_run
    needs_cuda = "skipped: needs CUDA" if dry else None
    steps = [
        Step("install", "carried wheels + the project (editable)", None, 180,
             "skipped: dry run (no install)" if dry else ("skipped: --no-install" if args.no_install else None)),
        Step("gpu-tests", "tests marked gpu (but the strategies)",
             [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests", f"--ignore={DISTRIBUTED}"],
             150, needs_cuda, {5: "ok: no tests marked gpu"}),
        Step("strategies", "reference vs DDP (NCCL), FSDP1, FSDP2 on the GPUs (tests/test_distributed.py, gpu)",
             [py, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider", "--durations=0", DISTRIBUTED], 180,
             "skipped: needs CUDA (NCCL, FSDP1)" if dry else None),
    ]
    for strategy in ("ddp", "fsdp", "fsdp2"):
        cmd = [py, str(Path(__file__).resolve()), "--strategy-check", strategy,
               "--accelerator", "cpu" if dry else "gpu", "--work", str(scratch / f"resume-{strategy}")]
        skip = "skipped: needs CUDA (FSDP1)" if dry and strategy == "fsdp" else None
        steps.append(Step(f"resume-{strategy}", f"{strategy}: two tasks, frozen atoms fixed, mid-task resume", cmd,
                          120 if not dry else 240, skip))
    layer = [py, str(BENCH / "bench_layer.py")]
    step = [py, str(BENCH / "bench_step.py")]
    if dry:
        layer += ["--dims", "32", "--atoms", "16", "--repeats", "1", "--warmup", "0", "--no-peft", "--tokens", "2x3",
                  "--threads", "1", "--clock", "wall"]
        step += ["--model-config", str(tiny_config(scratch)), "--tasks", "1,2", "--rank", "2", "--batch", "2",
                 "--classes", "3", "--threads", "1", "--clock", "wall"]
        sizes = ["--repeats", "1", "--warmup", "0", "--no-flops", "--no-peft"]
        schedule = ["--schedule-tasks", "2", "--steps-per-task", "2"]
    else:
        layer += ["--device", "cuda", "--dims", "768,3072", "--atoms", "16,160,640,1600"]
        step += ["--device", "cuda"]
        sizes, schedule = ["--tasks", "1,5,10"], []
    compiled = has_flag(BENCH / "bench_step.py", "--compile")
    steps += [
        Step("layer", "one routed layer vs LoRA-N, peft, LoRA-r, frozen" + ("" if dry else " (bf16)"), layer, 150),
        Step("step", "whole CLIP step: routed 1/5/10 tasks vs peft, frozen floor", step + sizes, 200),
        Step("step-compile", "the same under torch.compile", step + sizes + ["--compile"], 240,
             None if compiled else "not covered: bench_step.py has no --compile flag"),
        Step("schedule", "X-TAIL schedule: 10 tasks x 50 steps, extrapolated to 500 steps/task",
             step + ["--no-steps", "--schedule", *schedule], 200),
    ]
    return steps


def tiny_config(scratch: Path) -> Path:
    """The tests' tiny random-weight CLIP (tests/helpers.py), read from its source (importing it costs lightning)."""
    tree = ast.parse((TESTS / "helpers.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "TINY")
    path = scratch / "tiny_clip.json"
    path.write_text(json.dumps(ast.literal_eval(node.value)))
    return path


# ------------------------------------------------------------------------------------- running them
def markdown_tables(text: str) -> list[str]:
    """Each block of ``|``-lines of ``text``, with the bold title line just above it when there is one."""
    blocks, block, title = [], [], ""
    for line in text.splitlines():
        if line.startswith("|"):
            block.append(line)
            continue
        if block:
            blocks.append("\n".join([title, "", *block] if title else block))
            block, title = [], ""
        if line.startswith("**"):
            title = line
        elif line.strip():
            title = ""
    if block:
        blocks.append("\n".join([title, "", *block] if title else block))
    return blocks


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_step(step: Step, time_left: float, env: dict[str, str]) -> Result:
    command = " ".join(step.cmd) if step.cmd else "(pip install, see the tail)"
    if step.skip:
        return Result(step.name, step.what, command, step.skip)
    if time_left < 15:
        return Result(step.name, step.what, command, "skipped: out of the time budget")
    timeout = min(step.timeout, time_left)
    start = time.perf_counter()
    try:
        proc = subprocess.run(step.cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        code, out = proc.returncode, proc.stdout + ("\n" + proc.stderr if proc.stderr.strip() else "")
        status = "ok" if code == 0 else step.ok_codes.get(code, f"failed (exit {code})")
    except subprocess.TimeoutExpired as err:
        code, status = None, f"timeout after {timeout:.0f} s"
        parts = (err.stdout, err.stderr)
        out = "".join(s.decode(errors="replace") if isinstance(s, bytes) else (s or "") for s in parts)
    seconds = time.perf_counter() - start
    return Result(step.name, step.what, command, status, code, seconds, markdown_tables(out), tail(out))


def install(args: argparse.Namespace, env: dict[str, str]) -> Result:
    """Install the carried wheels, then the project; two pip calls in one recorded step."""
    what = "carried wheels + the project (editable)"
    wheels = Path(args.wheels)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-cache-dir"]
    cmds = [pip + ["--no-index", "--find-links", str(wheels), *INSTALL],
            pip + ["--no-deps", "--no-build-isolation", "-e", str(ROOT)]]
    command = " && ".join(" ".join(c) for c in cmds)
    start, out, code = time.perf_counter(), "", 0
    for cmd in cmds:
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
            out += f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
            code = proc.returncode
        except subprocess.TimeoutExpired:
            out, code = out + f"$ {' '.join(cmd)}\ntimeout after 180 s\n", -1
        if code:
            break
    versions = subprocess.run([sys.executable, "-m", "pip", "list", "--format", "freeze"], capture_output=True,
                              text=True, env=env).stdout
    wanted = ("open_clip_torch", "open-clip-torch", "jsonargparse", "timm", "torch", "lightning", "transformers",
              "peft", "moram", "huggingface")
    out += "\n" + "\n".join(v for v in versions.splitlines() if v.lower().startswith(wanted))
    status = "ok" if code == 0 else f"failed (exit {code})"
    return Result("install", what, command, status, code, time.perf_counter() - start, [], tail(out))


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(BENCH), str(TESTS), env.get("PYTHONPATH", "")] if p)
    return env


def header(args: argparse.Namespace) -> dict[str, str]:
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(), "python": platform.python_version(),
            "mode": "dry run (CPU, tiny sizes)" if args.dry_run else "GPU"}
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True).stdout.strip() or "?"
    except OSError:
        info["commit"] = "?"
    probe = ("import torch; print(torch.__version__, '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() "
             "else 'no CUDA')")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()
    info["torch | device"] = out or "?"
    return info


def write_report(path: Path, info: dict[str, str], results: list[Result], pending: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# GPU check (benchmarks/gpu_check.py)", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", "| step | status | exit | seconds | what |", "|---|---|---:|---:|---|"]
    for r in results:
        seconds = "" if r.seconds is None else f"{r.seconds:.1f}"
        exit_code = "" if r.exit_code is None else str(r.exit_code)
        lines.append(f"| {r.name} | {r.status} | {exit_code} | {seconds} | {r.what} |")
    lines += [f"| {name} | pending | | | |" for name in pending]
    for r in results:
        lines += ["", f"## {r.name}: {r.status}", "", r.what, "", "```", r.command, "```"]
        if r.tables:
            lines += ["", *("\n" + t + "\n" for t in r.tables)]
        if r.tail:
            lines += ["", f"Output (last {TAIL_LINES} lines):", "", "```", r.tail, "```"]
    path.write_text("\n".join(lines) + "\n")
    payload = {"info": info, "steps": [asdict(r) for r in results], "pending": pending}
    path.with_suffix(".json").write_text(json.dumps(payload, indent=1))


def orchestrate(args: argparse.Namespace) -> int:
    chosen = args.steps.split(",") if args.steps else STEPS
    unknown = [s for s in chosen if s not in STEPS]
    if unknown:
        raise SystemExit(f"unknown step(s) {unknown}; choose from {', '.join(STEPS)}")
    report, env = Path(args.report), environment()
    deadline = time.monotonic() + args.budget
    info = header(args)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        steps = [s for s in plan(args, Path(tmp)) if s.name in chosen]
        write_report(report, info, results, [s.name for s in steps])
        for i, step in enumerate(steps):
            print(f"[gpu_check] {step.name} ...", flush=True)
            if step.name == "install" and not step.skip:
                result = install(args, env)
            else:
                result = run_step(step, deadline - time.monotonic(), env)
            results.append(result)
            seconds = "" if result.seconds is None else f" ({result.seconds:.1f} s)"
            print(f"[gpu_check] {step.name}: {result.status}{seconds}", flush=True)
            write_report(report, info, results, [s.name for s in steps[i + 1:]])
    failed = [r.name for r in results if r.status.startswith(("failed", "timeout"))]
    print(f"[gpu_check] report: {report} and {report.with_suffix('.json')}")
    print(f"[gpu_check] failed: {', '.join(failed)}" if failed else "[gpu_check] no step failed")
    return 1 if failed else 0


# ------------------------------------------------------------------------------------- the wheels
def download_command(dest: Path) -> list[str]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "-d", str(dest)]
    for tag in PLATFORMS:
        cmd += ["--platform", tag]
    return cmd + WHEELS


def download_wheels(dest: Path) -> int:
    dest = dest.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    if dest.is_relative_to(ROOT):  # keep the wheels out of git; the device tool carries ignored paths by name
        exclude = ROOT / ".git" / "info" / "exclude"
        line = "/" + dest.relative_to(ROOT).as_posix() + "/"
        present = exclude.read_text(errors="replace").splitlines() if exclude.exists() else []
        if (ROOT / ".git").is_dir() and line not in present:
            exclude.parent.mkdir(exist_ok=True)
            with exclude.open("a") as f:
                f.write(line + "\n")
    code = subprocess.run(download_command(dest)).returncode
    shown = dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest
    print(f"wheels in {dest}: carry {shown} to the GPU machine and run gpu_check.py --wheels {shown}")
    return code


# ------------------------------------------------------------------------- one strategy's resume check
def fit_command(root: Path, tiny: Path, strategy: str, accelerator: str, *extra: str) -> list[str]:
    """``moram fit`` of the tests' tiny CLIP on one device, each rank's atoms written, a checkpoint every step.

    :class:`helpers.RankAtoms` (tests/helpers.py, loaded with ``PYTHONPATH=tests``) writes the frozen
    atoms after the first step of each task (``task<t>.rank<r>.pt``) and all atoms at the end (``end``).
    """
    from helpers import fit_args

    checks = [
        "--trainer.accelerator", accelerator, "--trainer.devices", "1", "--trainer.precision", "32-true",
        "--data.source.samples_per_class", "16",
        "--trainer.callbacks+=helpers.RankAtoms", "--trainer.callbacks.out", str(root / "atoms"),
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.dirpath", str(root / "ckpt"), "--trainer.callbacks.every_n_train_steps", "1",
        "--trainer.callbacks.save_top_k", "-1",
    ]
    strategy_config = ["--config", str(ROOT / "configs" / "strategy" / f"{strategy}.yaml")]
    return [sys.executable, "-m", "moram.cli", *fit_args(root, tiny, *checks, *strategy_config), *extra]


def max_diff(a: dict, b: dict) -> float:
    if a.keys() != b.keys():
        return float("inf")
    return max(float((a[k] - b[k]).abs().max()) if a[k].numel() else 0.0 for k in a)


def run_fit(root: Path, cmd: list[str]) -> float:
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=environment(), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"moram fit failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}")
    return time.perf_counter() - start


def strategy_check(strategy: str, accelerator: str, work: Path, tol: float) -> int:
    """Two tasks with a consolidation; frozen atoms fixed through task 2; resume from step 4 ends alike."""
    import torch

    work.mkdir(parents=True, exist_ok=True)
    tiny = tiny_config(work)
    full, resumed = work / "full", work / "resumed"
    full_s = run_fit(full, fit_command(full, tiny, strategy, accelerator))
    ckpt = next(p for p in sorted((full / "ckpt").iterdir()) if p.name.endswith(f"step={MID_TASK_STEP}.ckpt"))
    resumed_s = run_fit(resumed, fit_command(resumed, tiny, strategy, accelerator, "--ckpt_path", str(ckpt)))

    def atoms(root: Path, tag: str) -> dict:
        return torch.load(root / "atoms" / f"{tag}.rank0.pt", map_location="cpu")

    boundary, end = atoms(full, "task1"), atoms(full, "end")
    frozen_fixed = bool(boundary) and all(torch.equal(v, end[k]) for k, v in boundary.items())
    frozen_per_layer = sorted({v.shape[0] for k, v in end.items() if k.endswith("frozen_values")})
    after = atoms(resumed, "end")
    diff = max_diff(after, end)
    bitwise = diff == 0.0
    matrix = [json.loads(next(r.rglob("continual_metrics.json")).read_text()) for r in (full, resumed)]
    same_matrix = matrix[0]["matrix"] == matrix[1]["matrix"]
    trained = any(v.abs().sum() > 0 for k, v in end.items() if k.endswith("current_values"))
    ok = frozen_fixed and frozen_per_layer == [2] and diff <= tol and same_matrix and trained
    print(f"{strategy} on {accelerator}, 1 device; resumed from {ckpt.name}\n")
    print("| strategy | full run (s) | resumed run (s) | frozen atoms/layer after task 1 | frozen bit-identical "
          "through task 2 | resumed: max abs atom diff | resumed: bitwise | same matrix | current trained | ok |")
    print("|---|---:|---:|---:|---|---:|---|---|---|---|")
    print(f"| {strategy} | {full_s:.1f} | {resumed_s:.1f} | {frozen_per_layer} | {frozen_fixed} | {diff:.2e} | "
          f"{bitwise} | {same_matrix} | {trained} | {ok} |")
    print("\nOK" if ok else f"\nFAILED (tolerance {tol:g})")
    return 0 if ok else 1


# ------------------------------------------------------------------------------------------- main
def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, no install; CUDA-only steps skipped")
    p.add_argument("--steps", default=None, help=f"comma-separated subset of: {','.join(STEPS)}")
    p.add_argument("--report", default=str(DEFAULT_REPORT), help="markdown report (report.json beside it)")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for all steps together")
    p.add_argument("--wheels", default=str(DEFAULT_WHEELS), help="folder of carried wheels for the install step")
    p.add_argument("--no-install", action="store_true", help="skip the install step")
    p.add_argument("--download-wheels", metavar="DIR", default=None,
                   help="pip download the wheels of WHEELS into DIR (needs the registries) and stop")
    p.add_argument("--strategy-check", choices=["ddp", "fsdp", "fsdp2"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--accelerator", choices=["gpu", "cpu"], default="gpu", help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tol", type=float, default=1e-5, help="largest atom difference accepted after a resume")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.download_wheels:
        return download_wheels(Path(args.download_wheels))
    if args.strategy_check:
        sys.path.insert(0, str(TESTS))
        work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check_resume_"))
        return strategy_check(args.strategy_check, args.accelerator, work, args.tol)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
