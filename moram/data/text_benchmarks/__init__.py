"""Language-model continual-learning benchmarks as task sources of :class:`~moram.data.text.TextTask`.

- :class:`TRACETasks`: TRACE's eight tasks from its released folder (:mod:`.trace`).
- :class:`StandardCLTasks` / :class:`LongSequenceTasks`: O-LoRA's 4-task (orders 1–3) and 15-task (orders
  4–6) classification streams from its ``CL_Benchmark`` folder (:mod:`.olora`).
- :class:`JsonlTasks`: your own tasks as JSON Lines files (:mod:`.jsonl`).

Each reads local files only, has a cheap ``num_tasks``, optional per-task ``max_train`` / ``max_test``
subsets drawn with a ``seed``, and raises :class:`~moram.data.benchmarks.DatasetNotFoundError` (a
``FileNotFoundError``) naming the missing path and the expected layout, or
:class:`~moram.data.benchmarks.DatasetCorruptError` (a ``ValueError``) naming the bad file and line or item.
"""

from moram.data.text_benchmarks.jsonl import JsonlTasks
from moram.data.text_benchmarks.olora import (
    LONG_ORDERS,
    OLORA_GROUPS,
    STANDARD_ORDERS,
    LongSequenceTasks,
    OLoRATasks,
    StandardCLTasks,
    olora_prompt,
)
from moram.data.text_benchmarks.trace import TRACE_METRICS, TRACE_ORDER, TRACETasks

__all__ = [
    "LONG_ORDERS",
    "OLORA_GROUPS",
    "STANDARD_ORDERS",
    "TRACE_METRICS",
    "TRACE_ORDER",
    "JsonlTasks",
    "LongSequenceTasks",
    "OLoRATasks",
    "StandardCLTasks",
    "TRACETasks",
    "olora_prompt",
]
