"""Nothing a run wrote is lost to a later command: ``--ckpt_path last``, resumes and failed starts.

Each test reads every file of the run folders before and after the command it checks.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import copy_run, fit_args

from moram.cli import entry, main
from moram.runs import history_entries

CKPT_EVERY_STEP = ["--trainer.callbacks.every_n_train_steps", "1"]  # the config's ModelCheckpoint: every step


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` by relative path, with a hash of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_entry(monkeypatch, capsys, args: list[str]) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["moram", *args])
    code = 0
    try:
        entry()
    except SystemExit as exit_info:
        code = int(exit_info.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def fit(root: Path, config: Path, *extra: str) -> Path:
    cli = main(fit_args(root, config, *CKPT_EVERY_STEP, *extra))
    return Path(cli.trainer.log_dir)


def rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def test_last_never_resumes_a_finished_run_and_touches_nothing(monkeypatch, capsys, tmp_path, finished_fit):
    run, tiny_config = copy_run(finished_fit, tmp_path), finished_fit.config  # fit(tmp_path, ...), shared
    assert json.loads((run / "continual_metrics.json").read_text())["finished"] is True
    before = snapshot(tmp_path)
    code, _, err = run_entry(monkeypatch, capsys, fit_args(tmp_path, tiny_config, *CKPT_EVERY_STEP,
                                                           "--ckpt_path", "last"))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert "version_0: finished" in lines[0], err
    assert "nothing was changed" in lines[0], err
    assert snapshot(tmp_path) == before
    # named by its file, the finished run is refused too, naming the run
    ckpt = run / "checkpoints" / "last.ckpt"
    code, _, err = run_entry(monkeypatch, capsys, fit_args(tmp_path, tiny_config, *CKPT_EVERY_STEP,
                                                           "--ckpt_path", str(ckpt)))
    assert code == 2
    assert f"run {run} finished all its tasks" in err, err
    assert snapshot(tmp_path) == before


def test_last_continues_only_its_own_configuration_and_appends(monkeypatch, capsys, tmp_path, finished_fit):
    # version_0: this configuration, stopped after 4 of 6 steps (unfinished); version_1, newer: rank 4
    tiny_config = finished_fit.config  # finished_fit: the same configuration, uninterrupted
    mine = fit(tmp_path, tiny_config, "--trainer.max_steps", "4")
    other = fit(tmp_path, tiny_config, "--model.method.rank", "4", "--trainer.max_steps", "2")
    assert (mine.name, other.name) == ("version_0", "version_1")
    assert json.loads((mine / "continual_metrics.json").read_text())["finished"] is False
    other_before, config_before, rows_before = snapshot(other), (mine / "config.yaml").read_text(), rows(mine)
    capsys.readouterr()

    # another data configuration matches neither run: refused in one line naming both, nothing touched
    before = snapshot(tmp_path)
    code, _, err = run_entry(monkeypatch, capsys, fit_args(tmp_path, tiny_config, *CKPT_EVERY_STEP,
                                                           "--data.steps_per_task", "2", "--ckpt_path", "last"))
    assert code == 2, err
    line = err.strip().splitlines()[0]
    assert "version_1: another configuration (model.method.rank: checkpoint 4, config 2" in line, line
    assert "version_0: another configuration (data.steps_per_task: run 3, config 2)" in line, line
    assert snapshot(tmp_path) == before

    # this configuration, with one trainer option changed: continues version_0, skipping the newer version_1
    code, out, err = run_entry(monkeypatch, capsys, fit_args(tmp_path, tiny_config, *CKPT_EVERY_STEP,
                                                             "--trainer.log_every_n_steps", "2", "--ckpt_path", "last"))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0", "version_1"]
    assert snapshot(other) == other_before
    assert json.loads((mine / "continual_metrics.json").read_text())["finished"] is True
    # history kept: the rows logged before are still there, first; config.yaml kept, the new one beside it
    after = rows(mine)
    assert len(after) > len(rows_before)
    assert [{k: r.get(k, "") for k in rows_before[0]} for r in after[:len(rows_before)]] == rows_before
    assert (mine / "config.yaml").read_text() == config_before
    assert "log_every_n_steps: 2" in (mine / "config_resumed_1.yaml").read_text()
    events = history_entries(mine)
    assert [e["event"] for e in events] == ["start", "resume"]
    assert events[1]["global_step"] == 4
    assert events[1]["config"] == "config_resumed_1.yaml"
    assert events[1]["checkpoint"].endswith("version_0/checkpoints/last.ckpt")
    # progress lines: where the run continues; the task is counted whole (3 steps), not from step 0
    assert "task 2/2 'synthetic 1': resumed at step 1/3 (global step 4)" in out, out
    assert "task 2/2 'synthetic 1': trained (3 steps" in out, out
    # and it ends exactly like the uninterrupted run (test_resumed_run_equals_an_uninterrupted_one, slow)
    want, got = (json.loads((p / "continual_metrics.json").read_text()) for p in (finished_fit.log_dir, mine))
    assert got["matrix"] == want["matrix"]
    assert got["zero_shot"] == want["zero_shot"]
    a = torch.load(finished_fit.log_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(mine / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


# slow: by default, test_last_continues_only_its_own_configuration_and_appends resumes a run stopped at
# step 4 with `last` (beside another run) and checks the same equalities
@pytest.mark.slow
def test_resumed_run_equals_an_uninterrupted_one(tmp_path, tiny_config, finished_fit):
    full = finished_fit.log_dir  # fit(tmp_path / "full", tiny_config), shared
    stopped = fit(tmp_path / "stopped", tiny_config, "--trainer.max_steps", "4")
    resumed = Path(main(fit_args(tmp_path / "stopped", tiny_config, *CKPT_EVERY_STEP, "--ckpt_path", "last"))
                   .trainer.log_dir)
    assert resumed == stopped
    want, got = (json.loads((p / "continual_metrics.json").read_text()) for p in (full, resumed))
    assert got["matrix"] == want["matrix"]
    assert got["zero_shot"] == want["zero_shot"]
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_failed_start_leaves_no_run_folder(monkeypatch, capsys, tmp_path, stopped_fit):
    copy_run(stopped_fit, tmp_path)  # a run of the user's, unfinished: fit(..., "--trainer.max_steps", "1")
    tiny_config = stopped_fit.config
    before = snapshot(tmp_path)
    code, _, err = run_entry(monkeypatch, capsys, fit_args(
        tmp_path, tiny_config, "--data.source", "moram.data.folder.FolderTasks", "--data.source.domains", "[a]",
        "--data.source.root", str(tmp_path / "missing")))
    assert code == 2
    assert "data.source.root" in err
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]
    assert snapshot(tmp_path) == before


def test_truncated_checkpoint_is_one_line_and_touches_nothing(monkeypatch, capsys, tmp_path, stopped_fit):
    run, tiny_config = copy_run(stopped_fit, tmp_path), stopped_fit.config  # an unfinished run of its own
    ckpt = run / "checkpoints" / "last.ckpt"
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    before = snapshot(tmp_path)
    code, _, err = run_entry(monkeypatch, capsys, fit_args(tmp_path, tiny_config, "--ckpt_path", str(broken)))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith(f"moram: error: cannot read the checkpoint {broken}"), err
    assert snapshot(tmp_path) == before
    # `last` skips a run whose last.ckpt is unreadable, saying so
    ckpt.write_bytes(broken.read_bytes())
    code, _, err = run_entry(monkeypatch, capsys, fit_args(tmp_path, tiny_config, "--ckpt_path", "last"))
    assert code == 2
    assert "version_0: unreadable checkpoint" in err, err


def test_the_newest_stored_config_is_what_a_resume_is_compared_with(tmp_path):
    from moram.runs import data_differences, stored_data_options

    (tmp_path / "config.yaml").write_text("data:\n  init_args:\n    batch_size: 4\n    num_workers: 0\n")
    assert stored_data_options(tmp_path) == {"batch_size": 4, "num_workers": 0}
    for k, size in ((2, 8), (10, 16)):  # config_resumed_10 is newer than config_resumed_2
        (tmp_path / f"config_resumed_{k}.yaml").write_text(f"data:\n  init_args:\n    batch_size: {size}\n")
    stored = stored_data_options(tmp_path)
    assert stored == {"batch_size": 16}
    assert data_differences(stored, {"batch_size": 16, "num_workers": 4, "seed": 1}) == {}  # only one side: skipped
    assert data_differences(stored, {"batch_size": 8}) == {"batch_size": (16, 8)}
    assert data_differences({"x.num_workers": 0}, {"x.num_workers": 2}) == {}  # changes nothing a run learns


def test_evaluating_at_another_gate_is_allowed_but_learnt_settings_must_match(monkeypatch, capsys, tmp_path,
                                                                              finished_fit):
    """delta (the inference gate) is a runtime option: ``moram validate`` may score a run at another value;
    a learnt option (the temperature the keys were trained with) is still refused, naming it."""
    run, tiny_config = copy_run(finished_fit, tmp_path), finished_fit.config
    ckpt = str(run / "checkpoints" / "last.ckpt")
    validate = ["validate", *fit_args(tmp_path, tiny_config)[1:], "--ckpt_path", ckpt]

    for extra in ([], ["--model.method.threshold", "1.0"], ["--model.method.threshold", "-1"]):
        code, out, err = run_entry(monkeypatch, capsys, [*validate, *extra])
        assert code == 0, (extra, err)
        assert "eval/score/" in out  # every task scored
    code, _, err = run_entry(monkeypatch, capsys, [*validate, "--model.method.temperature", "0.5"])
    assert code == 2
    assert "model.method.temperature: checkpoint 0.01, config 0.5" in err, err
