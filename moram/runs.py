"""Run folders: which run ``--ckpt_path last`` may continue, and the history a run keeps.

A run folder (``<root>/lightning_logs/version_N`` by default) holds everything one continual run
wrote: ``config.yaml``, ``metrics.csv``, ``continual_metrics*.json``, ``checkpoints/``,
``adapters/``. moram never lets a later command destroy it:

* ``--ckpt_path last`` continues only an **unfinished** run of the **same configuration**: the
  newest run folder whose ``checkpoints/last.ckpt`` exists, whose ``continual_metrics.json`` does
  not say ``"finished": true``, whose checkpoint was trained with the same model settings (checked
  by the CLI against the checkpoint's hyperparameters) and whose stored ``config.yaml`` has the same
  data options (:func:`data_differences`). Other runs are skipped, never touched; when none
  qualifies the command fails with one line saying why each run was skipped (:func:`select_run`).
* A finished run is never resumed, whether named by ``last`` or by its file (:func:`finished_run`).
* A resumed run appends: ``metrics.csv`` keeps its rows (:class:`moram.loggers.AppendingCSVLogger`), the
  first ``config.yaml`` stays, a resumed config that differs is stored beside it as
  ``config_resumed_K.yaml``, and ``history.jsonl`` gets one line per start or resume (the
  :class:`moram.run_folder.RunFolderConfig`).

These functions read files only; they write nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moram.checkpoint import CheckpointError
from moram.errors import DataNotFoundError

HISTORY_FILE = "history.jsonl"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "continual_metrics.json"

DATA_OPTIONS_IGNORED = frozenset({"num_workers", "eval_batch_size"})
"""Data options that do not change what a run trains on: a resume may change them."""


def version_number(path: Path) -> int:
    """``N`` of a ``version_N`` folder, -1 for any other name."""
    match = re.fullmatch(r"version_(\d+)", path.name)
    return int(match.group(1)) if match else -1


def run_folder_of(checkpoint: str | Path) -> Path | None:
    """The run folder a checkpoint lies in (``.../version_N/checkpoints/x.ckpt``), else None."""
    path = Path(checkpoint).resolve()
    for parent in path.parents:
        if parent.name == "checkpoints":
            return parent.parent
    return None


def finished_run(run_dir: Path | None) -> bool:
    """Whether ``run_dir`` holds a finished run: its ``continual_metrics.json`` says ``"finished": true``."""
    if run_dir is None:
        return False
    path = run_dir / METRICS_FILE
    try:
        return bool(json.loads(path.read_text()).get("finished", False))
    except (OSError, ValueError, AttributeError):
        return False


def flat_options(value: Any, prefix: str = "") -> dict[str, Any]:
    """``value``'s leaves by dotted option name (``init_args`` levels left out, as the command line names them).

    >>> flat_options({"source": {"class_path": "X", "init_args": {"size": 8}}, "seed": 0})
    {'source.class_path': 'X', 'source.size': 8, 'seed': 0}
    """
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = prefix if key == "init_args" else (f"{prefix}.{key}" if prefix else str(key))
            out.update(flat_options(item, name))
        return out
    return {prefix: list(value) if isinstance(value, tuple) else value}


def stored_data_options(run_dir: Path) -> dict[str, Any] | None:
    """The ``data`` options a run folder's newest config stored (flat, dotted), None without one.

    The newest config is the last ``config_resumed_K.yaml`` a resume wrote, else ``config.yaml``.
    """
    import yaml

    resumed = sorted(run_dir.glob("config_resumed_*.yaml"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    path = resumed[-1] if resumed else run_dir / CONFIG_FILE
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    data = config.get("data") if isinstance(config, dict) else None
    return flat_options(data) if isinstance(data, dict) else None


def data_differences(stored: dict[str, Any] | None, current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Data options (dotted) whose stored value differs from the current one: ``{option: (stored, current)}``.

    Options only one side knows (added or removed by another moram version) and
    :data:`DATA_OPTIONS_IGNORED` are left out. ``stored`` None (no ``config.yaml``) differs in nothing.
    """
    if stored is None:
        return {}
    keys = (set(stored) & set(current)) - {k for k in set(stored) | set(current)
                                            if k.rsplit(".", 1)[-1] in DATA_OPTIONS_IGNORED}
    return {k: (stored[k], current[k]) for k in sorted(keys) if stored[k] != current[k]}


def describe(differences: dict[str, tuple[Any, Any]], group: str) -> str:
    """``group.option run X, config Y`` for each difference, joined by ``; ``."""
    return "; ".join(f"{group}.{k}: run {a!r}, config {b!r}" for k, (a, b) in differences.items())


@dataclass
class Candidate:
    """A run folder with a ``last.ckpt``, and why it cannot be continued (None when it can)."""

    run_dir: Path
    checkpoint: Path
    refused: str | None = None


def candidates(log_root: Path, dirpaths: Iterable[Path] = ()) -> list[Candidate]:
    """The run folders under ``log_root`` with a ``checkpoints/last.ckpt``, newest first.

    ``dirpaths`` (explicit ``ModelCheckpoint(dirpath=...)`` folders) come first: their ``last.ckpt``
    belongs to the newest ``version_N`` (the run the logger continues).
    """
    versions = sorted((p for p in log_root.glob("version_*") if p.is_dir()), key=version_number, reverse=True)
    found = [Candidate(versions[0] if versions else d, d / "last.ckpt") for d in dirpaths if (d / "last.ckpt").exists()]
    found += [Candidate(v, v / "checkpoints" / "last.ckpt") for v in versions
              if (v / "checkpoints" / "last.ckpt").exists()]
    return found


def select_run(
    log_root: Path,
    dirpaths: list[Path],
    model_differences: Callable[[Path], str],
    data_options: dict[str, Any],
) -> Candidate:
    """The run ``--ckpt_path last`` continues: the newest unfinished run of this configuration.

    ``model_differences(checkpoint)`` describes how the checkpoint's model settings differ from the
    config ("" when they agree); ``data_options`` are the config's flat data options. Raises
    ``FileNotFoundError`` (one line: where it looked, why each run was skipped, what to do).
    """
    found = candidates(log_root, dirpaths)
    for run in found:
        if finished_run(run.run_dir):
            run.refused = "finished"
            continue
        data = describe(data_differences(stored_data_options(run.run_dir), data_options), "data")
        try:
            model = model_differences(run.checkpoint)
        except CheckpointError as err:
            run.refused = f"unreadable checkpoint ({err})"
            continue
        if model or data:
            run.refused = "another configuration (" + "; ".join(d for d in (model, data) if d) + ")"
            continue
        return run
    looked = [d / "last.ckpt" for d in dirpaths] + [log_root / "version_*" / "checkpoints" / "last.ckpt"]
    where = " or ".join(str(p) for p in looked)
    if not found:
        raise DataNotFoundError(
            f"--ckpt_path last: no last checkpoint in {where}; runs write one with a ModelCheckpoint callback that "
            "has save_last: true (the shipped configs do). Start without --ckpt_path, or give a checkpoint file"
        )
    skipped = "; ".join(f"{r.run_dir.name}: {r.refused}" for r in found)
    raise DataNotFoundError(
        f"--ckpt_path last: no unfinished run of this configuration in {log_root} ({skipped}); "
        "nothing was changed. Start a new run without --ckpt_path, or give the checkpoint file to use"
    )


def history_entries(run_dir: Path) -> list[dict[str, Any]]:
    """The lines of a run folder's ``history.jsonl`` (one per start or resume), oldest first."""
    path = run_dir / HISTORY_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
