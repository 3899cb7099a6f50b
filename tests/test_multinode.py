"""Two nodes train like one process: two ``torchrun --nnodes 2 --nproc-per-node 1`` launchers on this machine.

Each launcher is a "node" (its own torchrun agent, joined through a c10d rendezvous on localhost, as
the README's torchrun line); Lightning sees torchelastic's environment and launches nothing itself.
The result is compared with one process at the same global batch, with the tolerance of
``tests/test_distributed.py``: the same accuracy matrix (so the same Last, Average and BWT), atoms
within 1e-5, and both nodes holding identical atoms.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import torch
from helpers import STRATEGIES, TINY, fit_in_subprocess, run_args, subprocess_env

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_nodes_train_like_one_process(tmp_path):
    one_root, two_root = tmp_path / "one", tmp_path / "two"
    one_root.mkdir()
    tiny = tmp_path / "tiny_clip.json"
    tiny.write_text(json.dumps(TINY))
    one = fit_in_subprocess(one_root, tiny)

    two_root.mkdir()
    port = free_port()
    launch = [sys.executable, "-m", "torch.distributed.run",  # torchrun, from this interpreter
              "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
              "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "moram-test", "-m", "moram.cli",
              *run_args(two_root, tiny, "--config", str(STRATEGIES / "ddp.yaml"),
                        "--trainer.devices", "1", "--trainer.num_nodes", "2")]
    nodes = [subprocess.Popen(launch, cwd=two_root, env=subprocess_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for node, proc in enumerate(nodes):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"launcher {node} exited {proc.returncode}:\n{err[-6000:]}"
    two = json.loads(next(two_root.rglob("continual_metrics.json")).read_text())

    assert two["finished"] is True
    assert two["zero_shot"] == one["zero_shot"]
    assert two["matrix"] == one["matrix"]
    for key in ("last", "average"):
        assert two[key]["mean"] == one[key]["mean"]
    assert two["bwt"] == one["bwt"]
    ref = torch.load(one_root / "atoms" / "end.rank0.pt")
    ranks = [torch.load(two_root / "atoms" / f"end.rank{r}.pt") for r in (0, 1)]
    assert all(torch.equal(ranks[1][k], ranks[0][k]) for k in ranks[0])  # both nodes hold the same atoms
    assert ranks[0].keys() == ref.keys()
    for key, value in ref.items():
        torch.testing.assert_close(ranks[0][key], value, rtol=0, atol=1e-5, msg=key)
    assert any(ranks[0][k].abs().sum() > 0 for k in ranks[0] if k.endswith("current_values"))
