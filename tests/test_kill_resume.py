"""A run killed with SIGKILL mid-task and resumed with ``--ckpt_path last`` ends bitwise like an uninterrupted one.

The resumed run continues in the killed run's own folder (no new ``version_N``), and its metrics file
says ``finished`` only then.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import STRATEGIES, TINY, run_args, subprocess_env

STOP = 4  # global step after which the run is killed: inside task 2 (3 steps per task)


def command(root: Path, tiny: Path, at_step: int = -1, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "moram.cli",
        *run_args(root, tiny,
                  "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                  "--trainer.callbacks.dirpath", str(root / "ckpt"), "--trainer.callbacks.every_n_train_steps", "1",
                  "--trainer.callbacks.save_top_k", "-1", "--trainer.callbacks.save_last", "true",
                  "--trainer.callbacks+=helpers.Stall", "--trainer.callbacks.at_step", str(at_step),
                  "--trainer.callbacks.marker", str(root / "stalled"), *extra),
    ]


def finish(proc: subprocess.Popen, root: Path, timeout: float = 240) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-3000:]}\n{err[-6000:]}"
    return json.loads(next(root.rglob("continual_metrics.json")).read_text())


# All slow: three or more fresh processes, ~25 s even for one. By default, the same guarantee without the
# SIGKILL, in-process: test_run_safety.py::test_last_continues_only_its_own_configuration_and_appends
# (stopped inside task 2 at step 4, its file says finished: false; `--ckpt_path last` continues the same
# version_0, which then says finished: true, with the matrix and every tensor of the uninterrupted run);
# test_clip_cl.py resumes from task 1's last batch.
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["single", "ddp", "fsdp2"])
def test_sigkill_mid_task_then_resume_is_bitwise_exact(tmp_path, strategy):
    # ddp: 2 processes, one file written by rank 0. fsdp2: 2 processes, checkpoints are folders of shards
    # restored after fully_shard wrapping.
    extra = () if strategy == "single" else ("--config", str(STRATEGIES / f"{strategy}.yaml"), "--trainer.devices", "2")
    tiny = tmp_path / "tiny_clip.json"
    tiny.write_text(json.dumps(TINY))
    env = subprocess_env()
    full_root, killed_root = tmp_path / "full", tmp_path / "killed"
    for root in (full_root, killed_root):
        root.mkdir()
    # A session of its own: SIGKILL goes to the whole process group (every rank), as a scheduler's would.
    popen = {"env": env, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "start_new_session": True}
    full = subprocess.Popen(command(full_root, tiny, -1, *extra), cwd=full_root, **popen)
    killed = subprocess.Popen(command(killed_root, tiny, STOP, *extra), cwd=killed_root, **popen)
    deadline = time.monotonic() + 240
    while not (killed_root / "stalled").exists():
        assert killed.poll() is None, f"the run ended before step {STOP}: {killed.communicate()[1][-4000:]}"
        assert time.monotonic() < deadline, "the run never reached the kill step"
        time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    ckpts = sorted((killed_root / "ckpt").glob("*.ckpt"))
    assert [p.name for p in ckpts if f"step={STOP}" in p.name], [p.name for p in ckpts]
    assert not any(f"step={STOP + 1}" in p.name for p in ckpts)
    assert (killed_root / "ckpt" / "last.ckpt").exists()
    partial = json.loads(next(killed_root.rglob("continual_metrics.json")).read_text())
    assert partial["finished"] is False  # a killed run's file never reads as a result

    resumed_root = killed_root  # `last` resumes the killed run in its own folder
    resumed = subprocess.Popen(command(resumed_root, tiny, -1, *extra, "--ckpt_path", "last"), cwd=resumed_root,
                               **popen)
    full_matrix, resumed_matrix = finish(full, full_root), finish(resumed, resumed_root)
    assert [p.name for p in (resumed_root / "lightning_logs").iterdir()] == ["version_0"]
    assert resumed_matrix["finished"] is True
    assert resumed_matrix["zero_shot"] == full_matrix["zero_shot"]
    assert resumed_matrix["matrix"] == full_matrix["matrix"]
    want = torch.load(full_root / "atoms" / "end.rank0.pt")
    got = torch.load(resumed_root / "atoms" / "end.rank0.pt")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])]
    assert any(v.abs().sum() > 0 for k, v in want.items() if k.endswith("current_values"))
