"""Check DDP, FSDP1 and FSDP2 on the GPUs present: the same two-task run must give the same results.

Runs ``moram fit`` on a tiny random-weight CLIP (2 synthetic tasks x 3 steps, global batch 4)
once on one GPU (the reference) and then with each strategy on ``--devices`` GPUs, and prints:
wall time, whether the accuracy matrix equals the reference, the largest atom difference from the
reference, and whether every rank holds bit-identical atoms. Exits 1 when a check fails.

    python benchmarks/gpu_strategies.py                  # all GPUs (at most 8), every strategy
    python benchmarks/gpu_strategies.py --devices 2 --strategies ddp fsdp

Strategies (the fragments in configs/strategy/): ``ddp`` (DDPStrategy, no unused-parameter search,
no buffer broadcast), ``fsdp`` (Lightning's FSDPStrategy = FSDP1, one unit per
``ResidualAttentionBlock``; CUDA only), ``fsdp2`` (moram.strategies.FSDP2Strategy = fully_shard).
The global batch (``--batch-size``, default 2 per GPU) must be divisible by the number of GPUs.
``--accelerator cpu`` dry-runs ``ddp`` and ``fsdp2`` on CPU processes (gloo) to check the plumbing.
Needs: CUDA, open_clip; no network. Precision is fp32 with TF32 off, so differences are rounding
only (different batch splits change reduction order): expect <= 1e-5.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 16, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


class RankAtoms(Callback):
    """Loaded into the runs (``PYTHONPATH=benchmarks``): each rank writes its full atoms at the end of fit."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_fit_start(self, trainer, pl_module):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    def on_fit_end(self, trainer, pl_module):
        from moram import routed_layers
        from moram.distributed import full_parameters, full_value

        tensors = {}
        with full_parameters(pl_module):  # FSDP1: gathers the flat parameters; FSDP2: DTensors below
            for name, layer in routed_layers(pl_module.model):
                bank = layer.bank
                n = bank.num_frozen_atoms
                tensors[f"{name}.frozen_keys"] = bank.frozen_keys[:n].detach().cpu().clone()
                tensors[f"{name}.frozen_values"] = bank.frozen_values[:n].detach().cpu().clone()
                tensors[f"{name}.current_keys"] = full_value(bank.current_keys).detach().cpu().clone()
                tensors[f"{name}.current_values"] = full_value(bank.current_values).detach().cpu().clone()
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save(tensors, self.out / f"rank{trainer.global_rank}.pt")


def fit_command(
    root: Path, tiny: Path, devices: int, batch_size: int, strategy: str | None, accelerator: str, *extra: str
) -> list[str]:
    """``moram fit`` of the tiny CLIP writing each rank's atoms; ``extra`` goes before the strategy."""
    cmd = [
        sys.executable, "-m", "moram.cli", "fit", "--config", str(ROOT / "configs" / "clip_cl.yaml"),
        "--model.backbone.model_config", str(tiny), "--model.backbone.pretrained", "null",
        "--model.atoms.rank", "2", "--model.atoms.top_k", "2",
        "--data.source", "moram.data.synthetic.SyntheticTasks", "--data.source.num_tasks", "2",
        "--data.source.image_size", "16", "--data.source.samples_per_class", "16",
        "--data.steps_per_task", "3", "--data.batch_size", str(batch_size),
        "--trainer.accelerator", accelerator, "--trainer.devices", str(devices), "--trainer.precision", "32-true",
        "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.callbacks+=gpu_strategies.RankAtoms", "--trainer.callbacks.out", str(root / "atoms"),
        *extra,
    ]
    if strategy is not None:
        cmd += ["--config", str(ROOT / "configs" / "strategy" / f"{strategy}.yaml")]
    return cmd


def fit(
    root: Path, devices: int, batch_size: int, strategy: str | None, accelerator: str = "gpu"
) -> tuple[float, dict, list[dict]]:
    """One ``moram fit``; returns (seconds, accuracy matrix, atoms of every rank)."""
    tiny = root / "tiny_clip.json"
    root.mkdir(parents=True, exist_ok=True)
    tiny.write_text(json.dumps(TINY))
    cmd = fit_command(root, tiny, devices, batch_size, strategy, accelerator)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{strategy or 'reference'} failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}")
    matrix = json.loads(next(root.rglob("continual_metrics.json")).read_text())
    atoms = [torch.load(root / "atoms" / f"rank{r}.pt") for r in range(devices)]
    return seconds, matrix, atoms


def max_diff(a: dict, b: dict) -> float:
    if a.keys() != b.keys():
        return float("inf")
    return max(float((a[k] - b[k]).abs().max()) if a[k].numel() else 0.0 for k in a)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=min(torch.cuda.device_count(), 8), help="devices per run")
    parser.add_argument("--strategies", nargs="+", default=["ddp", "fsdp", "fsdp2"], choices=["ddp", "fsdp", "fsdp2"])
    parser.add_argument("--batch-size", type=int, default=None, help="global batch; default 2 x devices")
    parser.add_argument("--tol", type=float, default=1e-5, help="largest atom difference accepted")
    parser.add_argument("--accelerator", default="gpu", choices=["gpu", "cpu"], help="cpu: a dry run (no fsdp)")
    args = parser.parse_args()
    if args.accelerator == "gpu" and (not torch.cuda.is_available() or args.devices < 1):
        print("no CUDA device: this benchmark needs GPUs (or --accelerator cpu --devices 2 for a dry run)")
        return 1
    batch = args.batch_size or 2 * args.devices
    if batch % args.devices:
        parser.error(f"--batch-size {batch} must be divisible by --devices {args.devices}")
    where = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if args.accelerator == "gpu" else "CPU"
    print(f"{where}; runs on {args.devices} device(s), global batch {batch}")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        ref_time, ref_matrix, ref_atoms = fit(Path(tmp) / "reference", 1, batch, None, args.accelerator)
        rows = [("reference (1 device)", ref_time, True, 0.0, True)]
        for strategy in args.strategies:
            try:
                seconds, matrix, atoms = fit(Path(tmp) / strategy, args.devices, batch, strategy, args.accelerator)
            except RuntimeError as err:
                print(err)
                rows.append((strategy, float("nan"), False, float("inf"), False))
                ok = False
                continue
            same_matrix = matrix["matrix"] == ref_matrix["matrix"] and matrix["zero_shot"] == ref_matrix["zero_shot"]
            diff = max_diff(atoms[0], ref_atoms[0])
            ranks_equal = all(max_diff(a, atoms[0]) == 0.0 for a in atoms)
            ok &= same_matrix and diff <= args.tol and ranks_equal
            rows.append((f"{strategy} ({args.devices} devices)", seconds, same_matrix, diff, ranks_equal))
    print(f"\n{'run':<22} {'seconds':>8} {'same matrix':>12} {'max |atoms - ref|':>18} {'ranks identical':>16}")
    for name, seconds, same, diff, equal in rows:
        print(f"{name:<22} {seconds:>8.1f} {same!s:>12} {diff:>18.2e} {equal!s:>16}")
    print("\nOK" if ok else f"\nFAILED (tolerance {args.tol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
