"""A bad option, file or checkpoint ends ``moram`` with one short message naming it, and exit code 2."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from helpers import fit_args

from moram.cli import TRACEBACK_ENV, entry


def run_entry(monkeypatch, capsys, args: list[str]) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["moram", *args])
    with pytest.raises(SystemExit) as exit_info:
        entry()
    return int(exit_info.value.code or 0), capsys.readouterr().err


BAD = {
    "rank": (["--model.method.rank", "0"], r"model\.method\.rank must be an integer >= 1, got 0"),
    "top_k": (["--model.method.top_k", "0"], r"model\.method\.top_k"),
    "temperature": (["--model.method.temperature", "0"], r"model\.method\.temperature"),
    "dropout": (["--model.method.dropout", "1.5"], r"model\.method\.dropout"),
    "threshold": (["--model.method.threshold", "2"], r"model\.method\.threshold"),
    "batch_size": (["--data.batch_size", "0"], r"data\.batch_size must be a positive integer, got 0"),
    "data_root": (["--data.source", "moram.data.folder.FolderTasks", "--data.source.domains", "[a]",
                   "--data.source.root", "/nonexistent/moram-data"], r"data\.source\.root '/nonexistent/moram-data'"),
    "model_name": (["--model.backbone.model_config", "null", "--model.backbone.model_name", "NoSuchModel-B-99"],
                   r"NoSuchModel-B-99"),
}


#: one method option by default (the others take the same path: MethodConfig.check, ConfigError, one line)
SAME_PATH = ("top_k", "temperature", "dropout", "threshold")


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SAME_PATH else c for c in BAD])
def test_bad_input_is_one_message_naming_it(monkeypatch, capsys, tmp_path, tiny_config, case):
    extra, pattern = BAD[case]
    code, err = run_entry(monkeypatch, capsys, fit_args(tmp_path, tiny_config, *extra))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) <= 2, err  # the message and the hint to the traceback
    assert lines[0].startswith("moram: error: ")
    assert __import__("re").search(pattern, lines[0]), lines[0]
    assert TRACEBACK_ENV in lines[-1]


PARSER = {  # jsonargparse's errors: its nested report becomes the option's name and the reason
    "missing_config": (["--config", "no/such/file.yaml"], r"--config: File does not exist: .*no/such/file\.yaml'"),
    "unknown_key": (["--model.method.rnak", "8"],
                    r"--model\.method\.rnak: no such option \(--model\.method\.help lists the options there\)"),
    "wrong_type": (["--model.lr", "abc"], r"--model\.lr: expected a float, got value: abc"),
    "option_of_0_2": (["--model.atoms.rank", "2"],
                      r"--model: .*atoms\.rank.* \(model\.atoms was split in moram 0\.3: .*\)"),
}


@pytest.mark.parametrize("case", list(PARSER))
def test_bad_option_is_one_line_and_a_hint(monkeypatch, capsys, tmp_path, tiny_config, case):
    extra, pattern = PARSER[case]
    code, err = run_entry(monkeypatch, capsys, fit_args(tmp_path, tiny_config, *extra))
    lines = err.strip().splitlines()
    assert code == 2
    assert len(lines) == 2, err
    assert re.fullmatch(f"moram: error: {pattern}", lines[0]), lines[0]
    assert "moram fit --help" in lines[1]
    assert not (tmp_path / "lightning_logs").exists()


def test_checkpoint_of_another_backbone_is_one_message(monkeypatch, capsys, tmp_path, stopped_fit):
    # an unfinished run's checkpoint, after 1 step (a checkpoint every step)
    last, tiny_config = stopped_fit.log_dir / "checkpoints" / "last.ckpt", stopped_fit.config
    capsys.readouterr()
    code, err = run_entry(monkeypatch, capsys, fit_args(tmp_path / "b", tiny_config, "--seed_everything", "1",
                                                        "--ckpt_path", str(last)))
    assert code == 2
    assert err.startswith(f"moram: error: the checkpoint {last} was trained on another backbone")
    assert len(err.strip().splitlines()) <= 2


def test_the_traceback_is_one_switch_away(monkeypatch, tmp_path, tiny_config):
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    monkeypatch.setattr(sys, "argv", ["moram", *fit_args(tmp_path, tiny_config, "--model.method.rank", "0")])
    with pytest.raises(Exception, match="rank must be an integer"):
        entry()


@pytest.mark.slow
def test_console_script_prints_one_message(tmp_path, tiny_config):
    proc = subprocess.run([sys.executable, "-m", "moram.cli", *fit_args(tmp_path, tiny_config, "--data.batch_size",
                                                                        "0")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) < 5, proc.stderr
    assert "moram: error: data.batch_size" in proc.stderr




def test_moram_error_raised_in_moram_is_one_line(monkeypatch, capsys, tmp_path):
    from moram.data.benchmarks import prepare
    from moram.data.benchmarks.registry import get_benchmark

    monkeypatch.setattr(prepare, "check", lambda names, root: get_benchmark("no-such-dataset"))
    code, err = run_entry(monkeypatch, capsys, ["data", "check", "mnist", "--root", str(tmp_path)])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("moram: error: unknown benchmark dataset 'no-such-dataset'")
    assert TRACEBACK_ENV in lines[1]


def test_a_bug_in_moram_keeps_its_traceback(monkeypatch, capsys, tmp_path):
    # A KeyError raised inside moram's own code (prepare.main's frame is the last one: dict.__getitem__ is C)
    # is a bug, not a user error: it propagates with its traceback instead of becoming "moram: error:" + exit 2.
    from moram.data.benchmarks import prepare

    monkeypatch.setattr(prepare, "resolve_root", {}.__getitem__)
    monkeypatch.setattr(sys, "argv", ["moram", "data", "check", "mnist", "--root", str(tmp_path)])
    with pytest.raises(KeyError) as info:
        entry()
    assert info.traceback[-1].path.name == "prepare.py"  # raised by moram's code
    assert "moram: error" not in capsys.readouterr().err


def test_user_error_is_the_moram_error_family():
    from moram.cli import user_error
    from moram.errors import CheckpointError, ConfigError, DataNotFoundError

    def raised(error: Exception, cause: Exception | None = None) -> Exception:
        try:
            raise error from cause
        except Exception as caught:  # noqa: BLE001 - the exception with its traceback, as entry() sees it
            return caught

    for error in (ConfigError("bad\noption"), DataNotFoundError("no data"), CheckpointError("other model")):
        assert user_error(raised(RuntimeError("wrapped"), error)) == " ".join(str(error).split("\n"))
    for bug in (KeyError("x"), ValueError("x"), TypeError("x"), RuntimeError("x")):
        assert user_error(raised(bug)) is None


@pytest.mark.slow
def test_console_script_keeps_a_bugs_traceback(tmp_path):
    code = ("import sys; from moram.data.benchmarks import prepare; from moram import cli; "
            "prepare.resolve_root = {}.__getitem__; sys.argv = ['moram', 'data', 'check', 'mnist']; cli.entry()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode not in (0, 2)
    assert "Traceback (most recent call last)" in proc.stderr
    assert "KeyError" in proc.stderr
    assert "moram: error" not in proc.stderr
