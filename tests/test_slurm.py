"""A real SLURM job of the shipped template, signalled mid-task, requeues itself and ends like an uninterrupted run.

The fixture starts a single-node SLURM on this machine (Debian's ``slurm-wlm``: slurmctld and slurmd
as root, munge, the host's CPUs, no cgroups, its own ports and state folder); ``.ci/run`` installs
the packages. ``configs/cluster/slurm.sbatch`` is submitted with the tiny CLIP; once the run is in
task 2 the job's step gets SIGUSR1 (what ``--signal=SIGUSR1@90`` sends before the time limit), and
the test checks that the job wrote an adapter-only ``hpc_ckpt_1.ckpt``, was requeued and started
again by itself (``Restarts=1``), continued in the same run folder with the same command, and
wrote the ``continual_metrics.json`` and final atoms of an uninterrupted run. The test is skipped,
naming the step, only where the scheduler cannot start.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY, fit_args, subprocess_env

pytestmark = pytest.mark.slow

SBATCH = ROOT / "configs" / "cluster" / "slurm.sbatch"
STEPS = 12  # per task; 2 tasks
SIGNAL_AT = STEPS + 3  # global step after which the run is paced and signalled: inside task 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(step: str, cmd: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        pytest.skip(f"SLURM cannot start here: {step} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node cluster: the environment for sbatch/scontrol (``SLURM_CONF``) and its folder."""
    missing = [b for b in ("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "squeue")
               if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("starting slurmd needs root (CI runs as root)")
    root = tmp_path_factory.mktemp("slurm")
    host = socket.gethostname().split(".")[0]
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir()
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=moramtest", f"SlurmctldHost={host}",
        f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
        "AuthType=auth/munge", "SlurmUser=root", "SlurmdUser=root",
        f"StateSaveLocation={root}/state", f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/log/slurmctld.log", f"SlurmdLogFile={root}/log/slurmd.log",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU", "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=2,bf_interval=2", "ReturnToService=2", "JobRequeue=1",
        "KillWait=10", "MpiDefault=none",
        f"NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES", "",
    ]))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    if subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:  # no munged running yet
        Path("/run/munge").mkdir(exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        _start("munged", ["runuser", "-u", "munge", "--", "/usr/sbin/munged"], env)
    _start("slurmctld", ["/usr/sbin/slurmctld", "-i", "-f", str(conf)], env)
    _start("slurmd", ["/usr/sbin/slurmd", "-f", str(conf)], env)
    deadline = time.monotonic() + 60
    while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout:
        if time.monotonic() > deadline:
            log = (root / "log" / "slurmd.log").read_text()[-1000:] if (root / "log" / "slurmd.log").exists() else ""
            pytest.skip(f"SLURM cannot start here: the node never became idle (sinfo); slurmd log: {log}")
        time.sleep(1)
    yield env, root
    for daemon in ("slurmd", "slurmctld"):  # the daemons this fixture started, by their pid files
        pid = root / f"{daemon}.pid"
        if pid.exists():
            subprocess.run(["kill", pid.read_text().strip()], check=False)


def job_state(env: dict[str, str], job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def moram_options(root: Path, tiny: Path) -> list[str]:
    """Options after the run config: the tiny CLIP and stream of ``fit_args``, the atoms recorder and the pacer."""
    args = fit_args(root, tiny, "--data.steps_per_task", str(STEPS),
                    "--trainer.callbacks+=helpers.RankAtoms", "--trainer.callbacks.out", str(root / "atoms"),
                    "--trainer.callbacks+=helpers.Pace", "--trainer.callbacks.marker", str(root / "paced"),
                    "--trainer.callbacks.at_step", str(SIGNAL_AT), "--trainer.callbacks.seconds", "0.5")
    at = args.index("--trainer.default_root_dir")
    del args[at:at + 2]  # the template sets it: the job's own run folder
    assert args[:3] == ["fit", "--config", str(ROOT / "configs" / "clip_cl.yaml")]
    return args[3:]  # the template takes the config as its first argument


@pytest.mark.parametrize("tasks_per_node", [1, 2])
def test_signalled_job_requeues_itself_and_ends_like_an_uninterrupted_run(tmp_path, slurm, tasks_per_node):
    env, slurm_root = slurm
    tiny = tmp_path / "tiny_clip.json"
    tiny.write_text(json.dumps(TINY))
    job_root, ref_root = tmp_path / "job", tmp_path / "reference"
    job_root.mkdir()
    job_env = {**subprocess_env(), "SLURM_CONF": env["SLURM_CONF"], "MORAM_CONFIGS": str(ROOT / "configs"),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    options = moram_options(job_root, tiny)
    submit = subprocess.run(
        ["sbatch", "--parsable", "--gpus-per-node=0", f"--ntasks-per-node={tasks_per_node}", "--cpus-per-task=1",
         f"--chdir={job_root}", str(SBATCH), str(ROOT / "configs" / "clip_cl.yaml"), *options],
        env=job_env, capture_output=True, text=True, timeout=60)
    assert submit.returncode == 0, submit.stderr
    job = submit.stdout.strip().split(";")[0]
    run_dir = job_root / "runs" / f"moram-{job}"
    output = job_root / f"moram-{job}.out"

    def log() -> str:
        return output.read_text()[-5000:] if output.exists() else "(no job output)"

    deadline = time.monotonic() + 300
    while not (job_root / "paced").exists():
        assert job_state(env, job).get("JobState") in ("PENDING", "RUNNING"), log()
        assert time.monotonic() < deadline, f"the job never reached step {SIGNAL_AT}:\n{log()}"
        time.sleep(0.5)
    signal = subprocess.run(["scancel", "--signal=USR1", f"{job}.0"], env=env, capture_output=True, text=True)
    assert signal.returncode == 0, signal.stderr

    # the uninterrupted reference, the same options outside SLURM, while the job waits to be started again
    ref_root.mkdir()
    ddp = ["--config", str(ROOT / "configs" / "strategy" / "ddp.yaml"), "--trainer.devices", "2"]
    ref = subprocess.run(
        [sys.executable, "-m", "moram.cli", "fit", "--config", str(ROOT / "configs" / "clip_cl.yaml"),
         *moram_options(ref_root, tiny), "--trainer.default_root_dir", str(ref_root),
         *(ddp if tasks_per_node == 2 else [])],
        env=subprocess_env(), cwd=ref_root, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-5000:]

    deadline = time.monotonic() + 600  # SLURM holds a requeued job for 2 minutes before starting it again
    while (state := job_state(env, job)).get("JobState") != "COMPLETED":
        assert state.get("JobState") in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING"), f"{state}\n{log()}"
        assert time.monotonic() < deadline, f"the job did not finish: {state}\n{log()}"
        time.sleep(2)
    text = output.read_text()
    assert state["Restarts"] == "1", text  # requeued once, started again by SLURM itself
    assert "(restart 1)" in text

    hpc = run_dir / "hpc_ckpt_1.ckpt"
    assert hpc.is_file(), sorted(p.name for p in run_dir.iterdir())
    saved = torch.load(hpc, map_location="cpu", weights_only=False)
    assert SIGNAL_AT <= saved["global_step"] < 2 * STEPS  # saved mid-task 2, at a step boundary
    assert "moram_checkpoint" in saved  # moram's checkpoint: the atoms and the backbone's fingerprint only
    assert not [k for k in saved["state_dict"] if "token_embedding" in k or k.endswith(".base.weight")]
    assert hpc.stat().st_size < 1_000_000  # the tiny backbone's weights alone are over 6 MB

    assert [p.name for p in (run_dir / "lightning_logs").iterdir()] == ["version_0"]  # the same run folder
    history = [json.loads(line) for line in (run_dir / "lightning_logs" / "version_0" / "history.jsonl").open()]
    assert [(e["event"], e.get("slurm_job_id")) for e in history] == [("start", job), ("resume", job)]
    assert history[1]["checkpoint"].endswith("hpc_ckpt_1.ckpt")
    got = json.loads((run_dir / "lightning_logs" / "version_0" / "continual_metrics.json").read_text())
    want = json.loads(next(ref_root.rglob("continual_metrics.json")).read_text())
    assert got["finished"] is True
    assert got["zero_shot"] == want["zero_shot"]
    assert got["matrix"] == want["matrix"]
    end, ref_end = torch.load(job_root / "atoms" / "end.rank0.pt"), torch.load(ref_root / "atoms" / "end.rank0.pt")
    assert all(torch.equal(end[k], ref_end[k]) for k in ref_end), [k for k in ref_end if not torch.equal(end[k],
                                                                                                         ref_end[k])]
