r"""O-LoRA's text-classification streams (Wang et al., 2023): the standard CL benchmark and the 15-task one.

On-disk layout: O-LoRA's ``CL_Benchmark`` folder (cmnfriend/O-LoRA; read by ``src/uie_dataset_lora.py``)::

    <root>/<group>/<dataset>/train.json   test.json   labels.json     (dev.json is not read)

with groups and datasets ``TC``: agnews, dbpedia, yahoo; ``SC``: amazon, yelp, IMDB, SST-2; ``NLI``: MNLI,
CB, RTE; and ``QQP/QQP``, ``BoolQA/BoolQA``, ``COPA/COPA``, ``MultiRC/MultiRC``, ``WiC/WiC``. A split file
is a JSON list of ``{"sentence": ..., "label": ...}`` objects whose label is already the answer text
(e.g. ``"Science or Technology"``); ``labels.json`` is the JSON list of a dataset's label texts.

Prompts are built as O-LoRA's collator builds them with its scripts' ``--add_task_name True
--add_dataset_name True`` and its ``configs/instruction_config.json``::

    Task:<group>\nDataset:<dataset>\n<instruction>Option: <label 1>, <label 2>, ... \n<sentence>\nAnswer:

(COPA has no instruction nor options: ``Task:COPA\nDataset:COPA\n<sentence>\nAnswer:``.) The answer is
the label text. Scored by ``exact_match``, O-LoRA's metric (lowercase, no punctuation, collapsed spaces).
"""

from __future__ import annotations

from pathlib import Path

from moram.data.benchmarks import DatasetCorruptError
from moram.data.text import TextDataset, TextTask
from moram.data.text_benchmarks._io import (
    check_limits,
    data_root,
    read_json,
    read_records,
    require_dir,
    require_file,
    string_field,
    subsample,
)
from moram.errors import ConfigError

#: The task group (top folder of ``CL_Benchmark``) of each dataset.
OLORA_GROUPS: dict[str, str] = {
    "agnews": "TC", "dbpedia": "TC", "yahoo": "TC",
    "amazon": "SC", "yelp": "SC", "IMDB": "SC", "SST-2": "SC",
    "MNLI": "NLI", "CB": "NLI", "RTE": "NLI",
    "QQP": "QQP", "BoolQA": "BoolQA", "COPA": "COPA", "MultiRC": "MultiRC", "WiC": "WiC",
}
#: O-LoRA's zero-shot instruction per group (``configs/instruction_config.json``); COPA has none.
OLORA_INSTRUCTIONS: dict[str, str] = {
    "NLI": 'What is the logical relationship between the "sentence 1" and the "sentence 2"? '
           "Choose one from the option.\n",
    "QQP": 'Whether the "first sentence" and the "second sentence" have the same meaning? '
           "Choose one from the option.\n",
    "SC": "What is the sentiment of the following paragraph? Choose one from the option.\n",
    "TC": "What is the topic of the following paragraph? Choose one from the option.\n",
    "BoolQA": "According to the following passage, is the question true or false? Choose one from the option.\n",
    "MultiRC": "According to the following passage and question, is the candidate answer true or false? "
               "Choose one from the option.\n",
    "WiC": "Given a word and two sentences, whether the word is used with the same sense in both sentence? "
           "Choose one from the option.\n",
}
#: Orders 1–3 of the standard CL benchmark (O-LoRA's ``scripts/order_{1,2,3}.sh``).
STANDARD_ORDERS: dict[int, list[str]] = {
    1: ["dbpedia", "amazon", "yahoo", "agnews"],
    2: ["dbpedia", "amazon", "agnews", "yahoo"],
    3: ["yahoo", "amazon", "agnews", "dbpedia"],
}
#: Orders 4–6 of the long sequence (15 tasks; O-LoRA's paper, from Razdaibiedina et al., 2023).
LONG_ORDERS: dict[int, list[str]] = {
    4: ["MNLI", "CB", "WiC", "COPA", "QQP", "BoolQA", "RTE", "IMDB", "yelp", "amazon", "SST-2", "dbpedia",
        "agnews", "MultiRC", "yahoo"],
    5: ["MultiRC", "BoolQA", "WiC", "MNLI", "CB", "COPA", "QQP", "RTE", "IMDB", "SST-2", "dbpedia", "agnews",
        "yelp", "amazon", "yahoo"],
    6: ["yelp", "amazon", "MNLI", "CB", "COPA", "QQP", "RTE", "IMDB", "SST-2", "dbpedia", "agnews", "yahoo",
        "MultiRC", "BoolQA", "WiC"],
}
LAYOUT = (
    "<root>/<group>/<dataset>/train.json, test.json and labels.json with groups TC (agnews, dbpedia, yahoo), "
    "SC (amazon, yelp, IMDB, SST-2), NLI (MNLI, CB, RTE), QQP/QQP, BoolQA/BoolQA, COPA/COPA, MultiRC/MultiRC, "
    "WiC/WiC; split files are JSON lists of {\"sentence\": ..., \"label\": ...}: O-LoRA's CL_Benchmark folder "
    "(github.com/cmnfriend/O-LoRA)"
)


def olora_prompt(dataset: str, labels: list[str], sentence: str, task_prefix: bool = True) -> str:
    r"""The prompt O-LoRA gives a model for one example of ``dataset``.

    Args:
        dataset: A key of :data:`OLORA_GROUPS`.
        labels: The dataset's label texts (``labels.json``), listed as options.
        sentence: The example's ``sentence`` field.
        task_prefix: Prefix ``Task:<group>\nDataset:<dataset>\n`` as O-LoRA's scripts do.

    Example:
        >>> olora_prompt("agnews", ["World", "Sports"], "Title: Cup final\nText: ...", task_prefix=False)
        'What is the topic of the following paragraph? Choose one from the option.\nOption: World, Sports \nTitle: Cup final\nText: ...\nAnswer:'
    """  # noqa: E501
    group = OLORA_GROUPS[dataset]
    prefix = f"Task:{group}\nDataset:{dataset}\n" if task_prefix else ""
    if group == "COPA":
        return f"{prefix}{sentence}\nAnswer:"
    return f"{prefix}{OLORA_INSTRUCTIONS[group]}Option: {', '.join(labels)} \n{sentence}\nAnswer:"


class OLoRATasks:
    r"""Datasets of O-LoRA's ``CL_Benchmark`` in the given order, one text task each, scored by ``exact_match``.

    Args:
        datasets: Dataset names (keys of :data:`OLORA_GROUPS`) in stream order.
        root: The ``CL_Benchmark`` folder; None reads ``$MORAM_DATA/CL_Benchmark``.
        max_train: Training examples kept per task (a seeded random subset in file order); None: all.
        max_test: Test examples kept per task, likewise.
        seed: Seed of the subsets.
        task_prefix: Start prompts with ``Task:<group>\nDataset:<dataset>\n`` (O-LoRA's scripts do).
        max_new_tokens: Generation budget for every task (O-LoRA generates at most 50); None: the module's.
    """

    benchmark = "O-LoRA CL_Benchmark"

    def __init__(
        self,
        datasets: list[str],
        root: str | None = None,
        max_train: int | None = None,
        max_test: int | None = None,
        seed: int = 0,
        task_prefix: bool = True,
        max_new_tokens: int | None = None,
    ) -> None:
        unknown = [d for d in datasets if d not in OLORA_GROUPS]
        if not datasets or unknown:
            raise ConfigError(f"datasets must be names of {sorted(OLORA_GROUPS)}; got {datasets}, unknown {unknown}")
        if len(set(datasets)) != len(datasets):
            raise ConfigError(f"a dataset is listed twice: {datasets}")
        check_limits(max_train, max_test)
        self.datasets, self.root, self.max_train, self.max_test = list(datasets), root, max_train, max_test
        self.seed, self.task_prefix, self.max_new_tokens = seed, task_prefix, max_new_tokens

    @property
    def num_tasks(self) -> int:
        return len(self.datasets)

    def build(self) -> list[TextTask]:
        root = require_dir(self.benchmark, data_root(self.root, "CL_Benchmark"), LAYOUT)
        return [self._task(root, name) for name in self.datasets]

    def _task(self, root: Path, name: str) -> TextTask:
        folder = require_dir(self.benchmark, root / OLORA_GROUPS[name] / name, LAYOUT)
        labels_path = require_file(self.benchmark, folder / "labels.json", LAYOUT)
        labels = read_json(self.benchmark, labels_path)
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise DatasetCorruptError(f"{self.benchmark}: '{labels_path}' must be a non-empty JSON list of label texts")
        train = self._split(folder / "train.json", name, labels, self.max_train)
        test = self._split(folder / "test.json", name, labels, self.max_test)
        return TextTask(name, train, test, metric="exact_match", max_new_tokens=self.max_new_tokens).check()

    def _split(self, path: Path, name: str, labels: list[str], limit: int | None) -> TextDataset:
        records = read_records(self.benchmark, require_file(self.benchmark, path, LAYOUT))
        examples = [
            {
                "prompt": olora_prompt(name, labels, string_field(self.benchmark, path, i, r, "sentence"),
                                       self.task_prefix),
                "answer": string_field(self.benchmark, path, i, r, "label"),
            }
            for i, r in enumerate(records)
        ]
        return TextDataset(subsample(examples, limit, self.seed, f"{name}/{path.stem}"), origin=str(path))


def _ordered(orders: dict[int, list[str]], order: int) -> list[str]:
    """The datasets of ``order``; an unknown order names ``data.source.order`` and the valid ones."""
    if order not in orders:
        raise ConfigError(f"data.source.order must be one of {sorted(orders)}, got {order!r}")
    return orders[order]


class StandardCLTasks(OLoRATasks):
    r"""The standard CL benchmark as O-LoRA runs it: AG News, Amazon, DBpedia and Yahoo in order 1, 2 or 3.

    Args:
        root: The ``CL_Benchmark`` folder; None reads ``$MORAM_DATA/CL_Benchmark``.
        order: 1 (dbpedia, amazon, yahoo, agnews), 2 (dbpedia, amazon, agnews, yahoo) or
            3 (yahoo, amazon, agnews, dbpedia).
        max_train: Training examples kept per task; None: all.
        max_test: Test examples kept per task; None: all.
        seed: Seed of the subsets.
        task_prefix: Start prompts with ``Task:<group>\nDataset:<dataset>\n`` as O-LoRA does.
        max_new_tokens: Generation budget for every task; None: the module's.

    Example:
        >>> StandardCLTasks(root="/data/CL_Benchmark", order=3).datasets
        ['yahoo', 'amazon', 'agnews', 'dbpedia']
    """

    def __init__(
        self,
        root: str | None = None,
        order: int = 1,
        max_train: int | None = None,
        max_test: int | None = None,
        seed: int = 0,
        task_prefix: bool = True,
        max_new_tokens: int | None = None,
    ) -> None:
        self.order = order
        super().__init__(_ordered(STANDARD_ORDERS, order), root, max_train, max_test, seed, task_prefix, max_new_tokens)


class LongSequenceTasks(OLoRATasks):
    r"""The 15-task long sequence as O-LoRA runs it, in order 4, 5 or 6 (see :data:`LONG_ORDERS`).

    Args:
        root: The ``CL_Benchmark`` folder; None reads ``$MORAM_DATA/CL_Benchmark``.
        order: 4, 5 or 6.
        max_train: Training examples kept per task; None: all.
        max_test: Test examples kept per task; None: all.
        seed: Seed of the subsets.
        task_prefix: Start prompts with ``Task:<group>\nDataset:<dataset>\n`` as O-LoRA does.
        max_new_tokens: Generation budget for every task; None: the module's.

    Example:
        >>> tasks = LongSequenceTasks(root="/data/CL_Benchmark", order=6)
        >>> tasks.num_tasks, tasks.datasets[:3]
        (15, ['yelp', 'amazon', 'MNLI'])
    """

    def __init__(
        self,
        root: str | None = None,
        order: int = 4,
        max_train: int | None = None,
        max_test: int | None = None,
        seed: int = 0,
        task_prefix: bool = True,
        max_new_tokens: int | None = None,
    ) -> None:
        self.order = order
        super().__init__(_ordered(LONG_ORDERS, order), root, max_train, max_test, seed, task_prefix, max_new_tokens)
