"""Shared fixtures (shared functions and probes live in helpers.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import TINY, run_fit

# The busy-machine thread warning of `moram fit` (tested on its own in test_run_safety.py) would add a line
# to every command's output that the tests read.
os.environ.setdefault("MORAM_THREAD_WARNING", "0")

# Every model in the suite is tiny: a second intra-op thread costs more than it saves, and on a busy
# machine it can cost several times the CPU time (the lesson of the thread warning above). One thread
# for the whole run (doctests included), and for the processes the tests start (helpers.subprocess_env
# sets the same).
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models: extra threads cost more than they save, most of all on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    """The tiny CLIP's model config as a JSON file (``--model.backbone.model_config``); never downloaded."""
    path = tmp_path / "tiny_clip.json"
    path.write_text(json.dumps(TINY))
    return path


def _shared_fit(tmp_path_factory, name: str, *extra: str) -> SimpleNamespace:
    root = tmp_path_factory.mktemp(name)
    config = root / "tiny_clip.json"
    config.write_text(json.dumps(TINY))
    cli, metrics, log_dir = run_fit(root, config, "--trainer.callbacks.every_n_train_steps", "1", *extra)
    return SimpleNamespace(cli=cli, metrics=metrics, log_dir=log_dir, config=config, root=root)


@pytest.fixture(scope="session")
def finished_fit(tmp_path_factory) -> SimpleNamespace:
    """One finished default ``moram fit`` of the tiny CLIP (2 tasks x 3 steps, a checkpoint every step).

    Shared by the tests that only read a finished run (its files, its metrics, its trained model in
    memory) instead of each fitting the same run again: ``cli``, ``metrics``, ``log_dir`` as
    :func:`helpers.run_fit` returns them, ``config`` (the model config file it was given) and ``root``
    (its ``--trainer.default_root_dir``). Never write to it: a test that changes or resumes a run fits
    its own, or works on a copy (:func:`helpers.copy_run`).
    """
    return _shared_fit(tmp_path_factory, "finished_fit")


@pytest.fixture(scope="session")
def stopped_fit(tmp_path_factory) -> SimpleNamespace:
    """:func:`finished_fit` stopped after its first step (``--trainer.max_steps 1``): an unfinished run."""
    return _shared_fit(tmp_path_factory, "stopped_fit", "--trainer.max_steps", "1")

