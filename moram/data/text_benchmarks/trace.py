r"""TRACE (Wang et al., 2023): eight language-model tasks in sequence, as a task source.

On-disk layout, as TRACE's code (BeyonderXX/TRACE, ``utils/data/raw_datasets.py``: ``LocalJsonFileDataset``)
reads its released ``LLM-CL-Benchmark`` folder::

    <root>/C-STANCE/train.json   eval.json   test.json
    <root>/FOMC/...   <root>/MeetingBank/...   <root>/Py150/...   <root>/ScienceQA/...
    <root>/NumGLUE-cm/...   <root>/NumGLUE-ds/...   <root>/20Minuten/...

Each file is a JSON list of ``{"prompt": ..., "answer": ...}`` objects (JSON Lines is read too). The
prompt already holds the instruction (e.g. FOMC: ``"What is the monetary policy stance ...?\nDocument:\n
...\nStance:"``) and TRACE trains on ``prompt + answer`` with nothing in between, so the prompts are used
verbatim. ``eval.json`` is not read (TRACE reports the test split). The default order and per-task
metrics are those of TRACE's scripts (``scripts/train_seq_cl.sh``, ``inference/infer_single.py``):
accuracy for C-STANCE, FOMC, NumGLUE-cm and NumGLUE-ds, the answer letter's accuracy (``choice_accuracy``: the
first character, as TRACE resolves ``"B\nreasoning"``) for ScienceQA;
ROUGE-L for MeetingBank; edit similarity for Py150; SARI for 20Minuten, whose source is the whole
prompt as in TRACE (``eval_20Minuten.eval(sources_sequences, ...)`` with the prompts as sources).
"""

from __future__ import annotations

from pathlib import Path

from moram.data.text import TEXT_METRICS, TextDataset, TextTask
from moram.data.text_benchmarks._io import (
    check_limits,
    data_root,
    read_records,
    require_dir,
    require_file,
    subsample,
)
from moram.errors import ConfigError

#: TRACE's task order (``--dataset_name`` of its training scripts).
TRACE_ORDER: list[str] = [
    "C-STANCE", "FOMC", "MeetingBank", "Py150", "ScienceQA", "NumGLUE-cm", "NumGLUE-ds", "20Minuten",
]
#: The score TRACE reports for each task (one of :data:`moram.data.text.TEXT_METRICS`).
TRACE_METRICS: dict[str, str] = {
    "C-STANCE": "accuracy",
    "FOMC": "accuracy",
    "MeetingBank": "rouge_l",
    "Py150": "edit_similarity",
    "ScienceQA": "choice_accuracy",
    "NumGLUE-cm": "accuracy",
    "NumGLUE-ds": "accuracy",
    "20Minuten": "sari",
}
LAYOUT = (
    "<root>/<task>/train.json and <root>/<task>/test.json for each task (C-STANCE, FOMC, MeetingBank, Py150, "
    "ScienceQA, NumGLUE-cm, NumGLUE-ds, 20Minuten), each a JSON list of {\"prompt\": ..., \"answer\": ...} "
    "objects: TRACE's LLM-CL-Benchmark release (github.com/BeyonderXX/TRACE)"
)


class TRACETasks:
    """TRACE's tasks, read from its released folder, one :class:`~moram.data.text.TextTask` per task.

    Args:
        root: The folder that holds one folder per task; None reads ``$MORAM_DATA/TRACE``.
        order: Task names in stream order (a reordering or subset of :data:`TRACE_ORDER`, or other folders
            of ``root`` given a metric in ``metrics``); None: TRACE's order.
        max_train: Training examples kept per task (a seeded random subset in file order); None: all.
            The paper trains on 500 per task.
        max_test: Test examples kept per task, likewise; the paper tests on 100.
        seed: Seed of the subsets; the draw for a task and split depends only on it.
        test_split: ``test`` (TRACE's reported split) or ``eval``.
        metrics: Per-task metric overrides or additions, e.g. ``{"Py150": "exact_match"}``.
        max_new_tokens: Generation budget for every task; None leaves it to the module.
        max_length: Per-task longest training sequence in tokens (prompt and answer; the prompt of a
            generated answer is cut to ``max_length - max_new_tokens``), e.g. ``{"MeetingBank": 4608}``
            for TRACE's 4096-token MeetingBank prompts beside the backbone's 1024 + 512; tasks not named
            take the backbone's ``max_length``.

    Example:
        >>> TRACETasks(root="/data/TRACE", order=["FOMC", "Py150"]).num_tasks
        2
    """

    benchmark = "TRACE"

    def __init__(
        self,
        root: str | None = None,
        order: list[str] | None = None,
        max_train: int | None = None,
        max_test: int | None = None,
        seed: int = 0,
        test_split: str = "test",
        metrics: dict[str, str] | None = None,
        max_new_tokens: int | None = None,
        max_length: dict[str, int] | None = None,
    ) -> None:
        self.metrics = {**TRACE_METRICS, **(metrics or {})}
        bad = {task: m for task, m in self.metrics.items() if m not in TEXT_METRICS}
        if bad:
            raise ConfigError(f"data.source.metrics: {bad} not in {list(TEXT_METRICS)}")
        self.order = list(TRACE_ORDER if order is None else order)
        unknown = [task for task in self.order if task not in self.metrics]
        if not self.order or unknown:
            raise ConfigError(
                f"data.source.order must list tasks of {TRACE_ORDER} (or tasks given a metric in "
                f"data.source.metrics); got {self.order}, unknown {unknown}"
            )
        if len(set(self.order)) != len(self.order):
            raise ConfigError(f"data.source.order lists a task twice: {self.order}")
        if test_split not in ("test", "eval"):
            raise ConfigError(f"data.source.test_split must be 'test' or 'eval', got {test_split!r}")
        check_limits(max_train, max_test)
        self.max_length = dict(max_length or {})
        stray = sorted(set(self.max_length) - set(self.order))
        if stray or any(not isinstance(v, int) or v < 2 for v in self.max_length.values()):
            raise ConfigError(
                f"data.source.max_length maps tasks of data.source.order to integers >= 2; got {self.max_length}"
                + (f" (not in the order: {stray})" if stray else "")
            )
        self.root, self.max_train, self.max_test, self.seed = root, max_train, max_test, seed
        self.test_split, self.max_new_tokens = test_split, max_new_tokens

    @property
    def num_tasks(self) -> int:
        return len(self.order)

    def build(self) -> list[TextTask]:
        root = require_dir(self.benchmark, data_root(self.root, "TRACE"), LAYOUT)
        return [self._task(root, name) for name in self.order]

    def _task(self, root: Path, name: str) -> TextTask:
        folder = require_dir(self.benchmark, root / name, LAYOUT)
        metric = self.metrics[name]
        train = self._split(folder / "train.json", metric, self.max_train, f"{name}/train")
        test = self._split(folder / f"{self.test_split}.json", metric, self.max_test, f"{name}/test")
        return TextTask(
            name, train, test, metric=metric, max_new_tokens=self.max_new_tokens, max_length=self.max_length.get(name)
        ).check()

    def _split(self, path: Path, metric: str, limit: int | None, salt: str) -> TextDataset:
        records = read_records(self.benchmark, require_file(self.benchmark, path, LAYOUT))
        if metric == "sari":  # TRACE scores 20Minuten's SARI against the prompt as the source
            records = [{"source": r.get("prompt"), **r} for r in records]
        data = TextDataset(records, origin=str(path))  # checks every example, not only the kept ones
        return TextDataset(subsample(data.examples, limit, self.seed, salt), origin=str(path))
