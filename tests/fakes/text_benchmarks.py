"""Tiny fakes of the text benchmarks, written in each one's real layout (for tests and offline smoke runs).

Example texts are predictable: example ``i`` of a task's split has prompt ``"<task> <split> prompt i"``
(TRACE, JSON Lines) or sentence ``"<dataset> <split> sentence i"`` (O-LoRA), so tests can check what was
read, in which order, and which examples a subset kept.
"""

from __future__ import annotations

import json
from pathlib import Path

from moram.data.text_benchmarks.olora import OLORA_GROUPS
from moram.data.text_benchmarks.trace import TRACE_ORDER

#: Label texts written to a fake O-LoRA dataset's ``labels.json``.
FAKE_LABELS = ["alpha", "beta"]


def write_trace(root: Path, tasks: list[str] | None = None, counts: tuple[int, int] = (4, 2)) -> Path:
    """Write TRACE's ``<root>/<task>/{train,eval,test}.json`` with ``counts`` (train, test) examples per task.

    Example ``i`` of a split is ``{"prompt": "<task> <split> prompt i", "answer": "<task> answer i"}``.
    """
    for task in TRACE_ORDER if tasks is None else tasks:
        folder = Path(root) / task
        folder.mkdir(parents=True, exist_ok=True)
        for split, n in (("train", counts[0]), ("eval", counts[1]), ("test", counts[1])):
            items = [{"prompt": f"{task} {split} prompt {i}", "answer": f"{task} answer {i}"} for i in range(n)]
            (folder / f"{split}.json").write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    return Path(root)


def write_olora(root: Path, datasets: list[str] | None = None, counts: tuple[int, int] = (4, 2)) -> Path:
    """Write O-LoRA's ``<root>/<group>/<dataset>/{train,dev,test,labels}.json`` for ``datasets`` (default: all).

    Example ``i`` of a split is ``{"sentence": "<dataset> <split> sentence i", "label": FAKE_LABELS[i % 2]}``.
    """
    for name in OLORA_GROUPS if datasets is None else datasets:
        folder = Path(root) / OLORA_GROUPS[name] / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "labels.json").write_text(json.dumps(FAKE_LABELS))
        for split, n in (("train", counts[0]), ("dev", counts[1]), ("test", counts[1])):
            items = [{"label": FAKE_LABELS[i % 2], "sentence": f"{name} {split} sentence {i}"} for i in range(n)]
            (folder / f"{split}.json").write_text(json.dumps(items))
    return Path(root)


def write_jsonl(
    root: Path,
    tasks: list[str],
    counts: tuple[int, int] = (4, 2),
    settings: dict[str, dict[str, object]] | None = None,
) -> Path:
    """Write ``<root>/<task>/{train,test}.jsonl`` and, for tasks in ``settings``, their ``task.json``."""
    for task in tasks:
        folder = Path(root) / task
        folder.mkdir(parents=True, exist_ok=True)
        for split, n in (("train", counts[0]), ("test", counts[1])):
            lines = [json.dumps({"prompt": f"{task} {split} prompt {i}", "answer": f"answer {i}"}) for i in range(n)]
            (folder / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines))
        if settings and task in settings:
            (folder / "task.json").write_text(json.dumps(settings[task]))
    return Path(root)
