"""Several processes train exactly like one: DDP and FSDP2 on CPU (gloo), through the real CLI.

Each run is a subprocess ``python -m moram.cli fit`` (Lightning launches the second process itself).
:class:`helpers.RankAtoms` is loaded into those processes (``PYTHONPATH=tests``) and writes
every rank's atoms: the frozen ones after each task boundary, and all of them at the end of fit.

The ``gpu`` cases (skipped without CUDA) run DDP (NCCL), FSDP1 and FSDP2 on every GPU present (at
most 8) against a one-GPU reference: fp32 with TF32 off, so differences are rounding only. The
CPU cases are ``slow`` too (each fit is a fresh process, or two, that imports torch and Lightning: ~40 s
for DDP): CI runs them in its slow step.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    STRATEGIES,
    TINY,
    fit_in_subprocess,
    lm_args,
    moram_in_subprocess,
    recording_args,
    run_args,
    subprocess_env,
)

GPUS = min(torch.cuda.device_count(), 8)


def load_atoms(root: Path, tag: str, rank: int) -> dict[str, torch.Tensor]:
    return torch.load(root / "atoms" / f"{tag}.rank{rank}.pt", map_location="cpu")


def on_gpu(strategy: str):
    """A ``gpu`` case: ``strategy`` on every GPU against one GPU (what benchmarks/gpu_strategies.py checked)."""
    needs_cuda = pytest.mark.skipif(not GPUS, reason="needs CUDA")
    return pytest.param("gpu", strategy, marks=[pytest.mark.gpu, needs_cuda], id=f"gpu-{strategy}")


def gpu_args() -> list[str]:
    """One or more GPUs, fp32 (no TF32: :class:`helpers.RankAtoms` turns it off), a global batch of 2 per GPU."""
    return ["--trainer.accelerator", "gpu", "--trainer.precision", "32-true",
            "--data.source.samples_per_class", "16", "--data.batch_size", str(2 * GPUS)]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one process, the same global batch."""
    root = tmp_path_factory.mktemp("single")
    tiny = root / "tiny_clip.json"
    tiny.write_text(json.dumps(TINY))
    return root, tiny, fit_in_subprocess(root, tiny)


@pytest.fixture(scope="module")
def gpu_single(tmp_path_factory):
    """The GPU reference: one GPU, no strategy, the same global batch as the GPU cases."""
    root = tmp_path_factory.mktemp("gpu_single")
    tiny = root / "tiny_clip.json"
    tiny.write_text(json.dumps(TINY))
    return root, tiny, fit_in_subprocess(root, tiny, *gpu_args(), "--trainer.devices", "1")


@pytest.mark.parametrize(("accelerator", "strategy"), [
    # slow: 3 fresh processes, ~40 s. No default test starts a second process; the slow suite (CI) runs this.
    pytest.param("cpu", "ddp", id="ddp", marks=pytest.mark.slow),
    pytest.param("cpu", "fsdp2", id="fsdp2", marks=pytest.mark.slow),
    on_gpu("ddp"), on_gpu("fsdp"), on_gpu("fsdp2"),
])
def test_two_processes_train_like_one(tmp_path, request, accelerator, strategy):
    ref_root, tiny, ref_matrix = request.getfixturevalue("single" if accelerator == "cpu" else "gpu_single")
    devices = 2 if accelerator == "cpu" else GPUS
    on_device = gpu_args() if accelerator == "gpu" else []
    matrix = fit_in_subprocess(tmp_path, tiny, *on_device, "--config", str(STRATEGIES / f"{strategy}.yaml"),
                               "--trainer.devices", str(devices))
    # Evaluation counts are reduced once per sample: the same matrix as one process.
    assert matrix["zero_shot"] == ref_matrix["zero_shot"]
    assert matrix["matrix"] == ref_matrix["matrix"]
    ref = load_atoms(ref_root, "end", 0)
    for rank in range(devices):
        # Every rank holds bit-identical frozen atoms after each boundary (and identical current ones).
        for tag in ("task0", "task1", "end"):
            mine, rank0 = load_atoms(tmp_path, tag, rank), load_atoms(tmp_path, tag, 0)
            assert all(torch.equal(mine[k], rank0[k]) for k in rank0), f"{tag}: rank {rank} differs from rank 0"
        assert load_atoms(tmp_path, "task1", rank)  # the boundary was crossed with atoms in every layer
    final = load_atoms(tmp_path, "end", 0)
    assert final.keys() == ref.keys()
    for key, value in ref.items():
        torch.testing.assert_close(final[key], value, rtol=0, atol=1e-5, msg=f"{strategy}: {key}")
    assert all(final[k].shape[0] == 2 for k in final if k.endswith("frozen_values"))  # one consolidation
    assert any(final[k].abs().sum() > 0 for k in final if k.endswith("current_values"))  # the atoms trained


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # 2 processes started by hand; the slow suite has Lightning's launch too (test above)
def test_externally_launched_ranks_all_exit_cleanly(tmp_path, single):
    # The torchrun / SLURM way: every rank is started from outside (Lightning sees LOCAL_RANK etc.).
    # Every rank must exit 0 after writing results: barrier, then the process group is destroyed.
    _, tiny, ref_matrix = single
    port, env = str(free_port()), subprocess_env()
    cmd = [sys.executable, "-m", "moram.cli", *run_args(tmp_path, tiny, "--config", str(STRATEGIES / "ddp.yaml"),
                                                         "--trainer.devices", "2")]
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={
            **env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2", "NODE_RANK": "0",
            "LOCAL_RANK": str(rank), "RANK": str(rank),
        })
        for rank in (0, 1)
    ]
    for rank, proc in enumerate(procs):
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"rank {rank} exited {proc.returncode}:\n{err[-6000:]}"
    matrix = json.loads(next(tmp_path.rglob("continual_metrics.json")).read_text())
    assert matrix["matrix"] == ref_matrix["matrix"]


def lm_fit_in_subprocess(root: Path, *extra: str) -> dict:
    args = lm_args(
        root, "--model.method.rank", "2", "--model.method.top_k", "2",
        "--model.method.dropout", "0.0",  # dropout masks are drawn per rank: not comparable across world sizes
        "--data.source.train_size", "32", "--data.source.max_len", "5", "--data.eval_batch_size", "2",
        *recording_args(root), *extra,
    )
    return moram_in_subprocess(root, args)


@pytest.fixture(scope="module")
def lm_single(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_single")
    return root, lm_fit_in_subprocess(root)


@pytest.mark.slow  # like the CLIP cases above
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_language_model_trains_alike_in_one_and_two_processes(tmp_path, lm_single, strategy):
    # Answers differ in length, so each rank's share of a batch holds a different number of answer
    # tokens; the loss divides by the global count, so two processes follow the one-process gradient.
    one_root, ref = lm_single
    two = lm_fit_in_subprocess(tmp_path / "two", "--config", str(STRATEGIES / f"{strategy}.yaml"),
                               "--trainer.devices", "2")
    one_atoms, two_atoms = load_atoms(one_root, "end", 0), load_atoms(tmp_path / "two", "end", 0)
    assert one_atoms.keys() == two_atoms.keys()
    for key, value in one_atoms.items():
        torch.testing.assert_close(two_atoms[key], value, rtol=0, atol=1e-5, msg=key)
    assert any(two_atoms[k].abs().sum() > 0 for k in two_atoms if k.endswith("current_values"))
    other = load_atoms(tmp_path / "two", "end", 1)
    assert all(torch.equal(other[k], two_atoms[k]) for k in two_atoms)
    # every test example scored once: generation on two shards gives the one-process matrix
    assert two["zero_shot"] == ref["zero_shot"]
    assert two["matrix"] == ref["matrix"]
