r"""The accuracy matrix of a continual-learning run and every metric derived from it (docs/design.md §2).

Notation: tasks ``j = 1..N`` in stream order; ``R[i, j]`` is the score (percent, 0–100) on task
``j`` after training task ``i``, for the rows ``i = 1..T`` available so far (``T <= N``: a run in
progress has fewer rows); ``R[0, j]``, written ``zero_shot[j]``, is the score of the model before
any training (docs/design.md §2.1 writes it ``R[0, j]`` too). All formulas use ``T`` := number of rows, so they
also hold on a partial matrix; where a definition needs ``R[j, j]`` it runs over the trained
tasks ``j <= T`` only. Missing values (no row yet, the first task's Transfer, FWT without a
zero-shot row) are ``None``, never NaN, so summaries are valid JSON.

>>> m = AccuracyMatrix(["a", "b"], rows=[[80.0, 40.0], [70.0, 90.0]], zero_shot=[50.0, 30.0])
>>> acc(m), bwt(m), fwt(m), trace_bwt(m)
(80.0, -10.0, 10.0, 5.0)
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moram.errors import DataError

JSON_NAME = "continual_metrics.json"
CSV_NAME = "continual_metrics.csv"
HEATMAP_NAME = "accuracy_matrix.png"


@dataclass
class AccuracyMatrix:
    """Scores ``rows[i][j]`` on task ``j`` after training task ``i`` (0-based), plus the zero-shot row."""

    task_names: list[str]
    """The ``N`` tasks, in stream order; one column each."""
    rows: list[list[float]] = field(default_factory=list)
    """``T <= N`` rows: ``rows[i]`` holds the ``N`` scores measured after training task ``i``."""
    zero_shot: list[float] | None = None
    """Scores of the model before any training, or ``None`` when they were not measured."""

    def __post_init__(self) -> None:
        n = len(self.task_names)
        if n == 0 or len(set(self.task_names)) != n:
            raise DataError(f"task_names must be non-empty and unique, got {self.task_names}")
        if len(self.rows) > n:
            raise ValueError(f"got {len(self.rows)} rows for {n} tasks: at most one row per task")
        for label, row in [("zero_shot", self.zero_shot), *((f"rows[{i}]", r) for i, r in enumerate(self.rows))]:
            if row is not None and len(row) != n:
                raise ValueError(f"{label} has {len(row)} scores, expected one per task ({n})")
        self.rows = [[float(v) for v in row] for row in self.rows]
        if self.zero_shot is not None:
            self.zero_shot = [float(v) for v in self.zero_shot]

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def num_trained(self) -> int:
        """``T``: the number of rows available (tasks trained so far)."""
        return len(self.rows)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AccuracyMatrix:
        """Rebuild from :func:`summary`'s output (or a loaded ``continual_metrics.json``)."""
        return cls(list(data["task_names"]), [list(r) for r in data.get("matrix", [])], data.get("zero_shot"))


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _per_task(m: AccuracyMatrix, values: Sequence[float | None]) -> dict[str, Any]:
    return {"per_task": dict(zip(m.task_names, values, strict=True)), "mean": _mean(values)}


def transfer(m: AccuracyMatrix) -> dict[str, Any]:
    """Transfer (X-TAIL / MTIL): ``transfer_j = mean_{1 <= i < j} R[i, j]``, for ``j >= 2``.

    The score on a task before it is trained, averaged over the rows available before it
    (``i <= min(j - 1, T)``). The first task has none (``None``, left out of the mean), and the
    zero-shot row is not included. ``mean`` averages over the tasks that have a value.
    """
    values = [_mean([row[j] for row in m.rows[:j]]) if j > 0 else None for j in range(m.num_tasks)]
    return _per_task(m, values)


def average(m: AccuracyMatrix) -> dict[str, Any]:
    """Average (X-TAIL / MTIL): ``average_j = mean_{i = 1..T} R[i, j]``; ``mean`` over all ``N`` tasks.

    The zero-shot row is not included.
    """
    return _per_task(m, [_mean([row[j] for row in m.rows]) for j in range(m.num_tasks)])


def last(m: AccuracyMatrix) -> dict[str, Any]:
    """Last (X-TAIL / MTIL): ``last_j = R[T, j]`` for all ``N`` tasks; ``mean`` over them."""
    return _per_task(m, list(m.rows[-1]) if m.rows else [None] * m.num_tasks)


def acc(m: AccuracyMatrix) -> float | None:
    """Classic average accuracy: ``ACC = (1 / T) * sum_{j = 1..T} R[T, j]`` (the tasks trained so far).

    On the complete matrix (``T = N``) it equals Last's mean and TRACE's OP.
    """
    return _mean(m.rows[-1][: m.num_trained]) if m.rows else None


def op(m: AccuracyMatrix) -> float | None:
    """TRACE overall performance: ``OP = (1 / T) * sum_{j = 1..T} R[T, j]``, the same as :func:`acc`."""
    return acc(m)


def bwt(m: AccuracyMatrix) -> float | None:
    """Classic backward transfer: ``BWT = (1 / (T - 1)) * sum_{j = 1..T-1} (R[T, j] - R[j, j])``.

    Negative when the model forgets; ``None`` while ``T < 2``.
    """
    t = m.num_trained
    return _mean([m.rows[-1][j] - m.rows[j][j] for j in range(t - 1)])


def fwt(m: AccuracyMatrix) -> float | None:
    """Forward transfer against the zero-shot model: ``FWT = mean_{j = 2..min(T+1, N)} (R[j-1, j] - zero_shot[j])``.

    How much training the tasks before ``j`` changed the score on ``j`` before ``j`` is trained
    (Lopez-Paz & Ranzato 2017, with the zero-shot model as the reference). ``None`` without a
    zero-shot row or before the first row.
    """
    if m.zero_shot is None:
        return None
    zs = m.zero_shot
    return _mean([m.rows[j - 1][j] - zs[j] for j in range(1, min(m.num_trained + 1, m.num_tasks))])


def forgetting(m: AccuracyMatrix) -> float | None:
    """Average forgetting (Chaudhry et al. 2018): the drop from each old task's best score to its last one.

    ``F = (1 / (T - 1)) * sum_{j = 1..T-1} (max_{i = 1..T-1} R[i, j] - R[T, j])``;
    ``None`` while ``T < 2``.
    """
    t = m.num_trained
    return _mean([max(row[j] for row in m.rows[:-1]) - m.rows[-1][j] for j in range(t - 1)])


def trace_bwt(m: AccuracyMatrix) -> float | None:
    """TRACE backward transfer as a positive magnitude (lower is better).

    ``BWT_TRACE = (1 / T) * sum_{j = 1..T} max(R[j, j] - R[T, j], 0) = -(1 / T) * sum_j min(R[T, j] - R[j, j], 0)``

    docs/design.md §2.3 (TRACE's BWT): the mean over tasks of min(R[T, j] - R[j, j], 0), as a positive magnitude.
    Gains do not offset losses, and the mean runs over all ``T`` trained tasks, the last one
    included (its term is 0); dividing by ``T - 1`` instead would scale the value by ``T / (T - 1)``.
    """
    t = m.num_trained
    return _mean([max(m.rows[j][j] - m.rows[-1][j], 0.0) for j in range(t)])


def summary(m: AccuracyMatrix) -> dict[str, Any]:
    """Everything about a run's accuracy matrix, JSON-ready (``None`` for missing values).

    Keys: ``task_names``, ``num_tasks``, ``num_trained``, ``zero_shot``, ``matrix`` (the rows),
    ``transfer``, ``average``, ``last`` (each ``{"per_task": {name: value}, "mean": value}``),
    ``acc``, ``bwt``, ``fwt``, ``forgetting``, ``op``, ``trace_bwt``.
    """
    return {
        "task_names": list(m.task_names),
        "num_tasks": m.num_tasks,
        "num_trained": m.num_trained,
        "zero_shot": None if m.zero_shot is None else list(m.zero_shot),
        "matrix": [list(r) for r in m.rows],
        "transfer": transfer(m),
        "average": average(m),
        "last": last(m),
        "acc": acc(m),
        "bwt": bwt(m),
        "fwt": fwt(m),
        "forgetting": forgetting(m),
        "op": op(m),
        "trace_bwt": trace_bwt(m),
    }


def scalar_metrics(s: dict[str, Any]) -> dict[str, float]:
    """The scalars of a :func:`summary` worth logging, missing ones left out: ``{"acc": 80.0, "transfer": ...}``."""
    out = {name: s[name]["mean"] for name in ("transfer", "average", "last")}
    out.update({name: s[name] for name in ("acc", "bwt", "fwt", "forgetting", "op", "trace_bwt")})
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


def row_labels(m: AccuracyMatrix) -> list[str]:
    """``["zero-shot", "after <task 1>", ...]`` for the rows present (zero-shot only when measured)."""
    head = ["zero-shot"] if m.zero_shot is not None else []
    return head + [f"after {m.task_names[i]}" for i in range(m.num_trained)]


def _all_rows(m: AccuracyMatrix) -> list[list[float]]:
    return ([m.zero_shot] if m.zero_shot is not None else []) + m.rows


def _replace_atomically(path: Path, write: Any) -> Path:
    # a reader (or a crash) never sees a half-written file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)
    return path


def write_json(path: str | Path, s: dict[str, Any]) -> Path:
    """Write a :func:`summary` as JSON (by convention ``continual_metrics.json``)."""
    text = json.dumps(s, indent=2, allow_nan=False)
    return _replace_atomically(Path(path), lambda p: p.write_text(text + "\n"))


def write_csv(path: str | Path, m: AccuracyMatrix) -> Path:
    """Write the matrix as CSV: header ``row, <task names>``; rows ``zero-shot``, ``after <task>``."""

    def write(p: Path) -> None:
        with p.open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["row", *m.task_names])
            for label, row in zip(row_labels(m), _all_rows(m), strict=True):
                out.writerow([label, *(f"{v:.4f}" for v in row)])

    return _replace_atomically(Path(path), write)


def plot_title(m: AccuracyMatrix, view: str = "") -> str:
    """The heatmap's title: the view (e.g. ``task-aware``) and the run's Last / Average / BWT.

    >>> print(plot_title(AccuracyMatrix(["a", "b"], [[80.0, 40.0], [70.0, 90.0]]), "task-aware"))
    task-aware: accuracy after each task (R[i, j]: task j after training task i)
    Last 80.00 | Average 70.00 | BWT -10.00
    """
    head = f"{view}: " if view else ""
    s = summary(m)
    numbers = f"Last {_fmt(s['last']['mean'])} | Average {_fmt(s['average']['mean'])} | BWT {_fmt(s['bwt'])}"
    return f"{head}accuracy after each task (R[i, j]: task j after training task i)\n{numbers}"


def heatmap_figure(m: AccuracyMatrix, view: str = "") -> Any:
    """The matrix as an annotated heatmap, a matplotlib ``Figure`` (the caller closes it).

    Rows: zero-shot, after each task; columns: tasks. The title names ``view`` and carries
    Last / Average / BWT (:func:`plot_title`). Drawn off-screen (Agg), no pyplot state kept.
    """
    from matplotlib.figure import Figure

    rows, labels = _all_rows(m), row_labels(m)
    n = m.num_tasks
    fig = Figure(figsize=(max(4.0, 0.9 * n + 2.5), max(2.0, 0.5 * len(labels) + 1.5)))
    ax = fig.subplots()
    data = rows if rows else [[math.nan] * n]
    image = ax.imshow(data, cmap="viridis", vmin=0.0, vmax=100.0, aspect="auto")
    ax.set_xticks(range(n), m.task_names, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    if n <= 20:
        for i, row in enumerate(rows):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8, color="w" if v < 60 else "k")
    ax.set_title(plot_title(m, view), fontsize=9)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def write_heatmap(path: str | Path, m: AccuracyMatrix, view: str = "") -> Path:
    """Draw the matrix as an annotated heatmap PNG (:func:`heatmap_figure`)."""
    fig = heatmap_figure(m, view)
    return _replace_atomically(Path(path), lambda p: fig.savefig(p, format="png", dpi=100))


def save_all(
    directory: str | Path,
    m: AccuracyMatrix,
    heatmap: bool = True,
    stem: str = "continual_metrics",
    heatmap_name: str = HEATMAP_NAME,
    view: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.csv`` and (optionally) the heatmap (default ``accuracy_matrix.png``).

    ``view`` names the scores in the plot's title; ``extra`` entries (e.g. ``finished``) are added to the JSON.
    """
    directory = Path(directory)
    data = {**summary(m), **(extra or {})}
    paths = {"json": write_json(directory / f"{stem}.json", data), "csv": write_csv(directory / f"{stem}.csv", m)}
    if heatmap:
        paths["heatmap"] = write_heatmap(directory / heatmap_name, m, view)
    return paths


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_table(s: dict[str, Any]) -> str:
    """A plain-text table of a :func:`summary`: the matrix, per-task Transfer/Average/Last, then the scalars.

    >>> print(format_table(summary(AccuracyMatrix(["a", "b"], [[80.0, 40.0]]))))  # doctest: +NORMALIZE_WHITESPACE
    row       a      b      mean
    after a   80.00  40.00  60.00
    --------  -----  -----  -----
    Transfer  -      40.00  40.00
    Average   80.00  40.00  60.00
    Last      80.00  40.00  60.00
    ACC 80.00 | BWT - | FWT - | forgetting - | OP 80.00 | TRACE BWT 0.00
    """
    m = AccuracyMatrix.from_dict(s)
    body = [[label, *map(_fmt, row), _fmt(_mean(row))] for label, row in zip(row_labels(m), _all_rows(m), strict=True)]
    derived = [
        [title, *(_fmt(s[key]["per_task"][name]) for name in m.task_names), _fmt(s[key]["mean"])]
        for title, key in (("Transfer", "transfer"), ("Average", "average"), ("Last", "last"))
    ]
    header = ["row", *m.task_names, "mean"]
    widths = [max(len(str(r[c])) for r in [header, *body, *derived]) for c in range(len(header))]
    table = [header, *body, ["-" * w for w in widths], *derived]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    scalars = [("ACC", "acc"), ("BWT", "bwt"), ("FWT", "fwt"), ("forgetting", "forgetting"), ("OP", "op")]
    lines.append(" | ".join(f"{title} {_fmt(s[key])}" for title, key in [*scalars, ("TRACE BWT", "trace_bwt")]))
    return "\n".join(lines)
