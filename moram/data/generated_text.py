"""Generated digit-string tasks for language models: offline, instant, exactly scored.

Every example is an instruction word, a string of digits and ``=``; the answer is a digit string::

    reverse: 381 =      ->  183
    increment: 381 =    ->  492          (each digit + 1, mod 10)
    sort descending: 381 =  ->  831

The instruction tells a task-agnostic model which operation to apply, so tasks over the same inputs
with different outputs interfere in a model that learns them one after the other. Examples come from
a ``random.Random`` seeded by ``(seed, task name)`` (never the global RNG): a task's examples do not
depend on which other tasks are built, and test inputs never appear among the training inputs.

:data:`PRIMITIVES`, on digits and on letters, is the mixture the shipped tiny LLaMA was pretrained on
(``recipes/pretrain_tiny_lm.py``); :data:`CONTINUAL` are related operations it has never seen. A task name
ending in `` letters`` (``"sort descending letters"``) writes the same strings with the symbols a..j:
same instruction, different input domain.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from moram.data.text import TextDataset, TextTask
from moram.errors import ConfigError, DataError

Digits = list[int]


def _rotate(d: Digits) -> Digits:
    return d[1:] + d[:1]


def _swap_pairs(d: Digits) -> Digits:
    out = list(d)
    for i in range(0, len(out) - 1, 2):
        out[i], out[i + 1] = out[i + 1], out[i]
    return out


#: Task name (also the instruction word of the prompt) -> operation on the digit list.
TASKS: dict[str, Callable[[Digits], Digits]] = {
    # pretraining primitives
    "copy": lambda d: list(d),
    "reverse": lambda d: d[::-1],
    "sort": sorted,
    "increment": lambda d: [(x + 1) % 10 for x in d],
    # related operations for the continual stream
    "decrement": lambda d: [(x - 1) % 10 for x in d],
    "sort descending": lambda d: sorted(d, reverse=True),
    "rotate": _rotate,
    "swap pairs": _swap_pairs,
    "drop first": lambda d: d[1:],
    "reverse increment": lambda d: [(x + 1) % 10 for x in d[::-1]],
    "add two": lambda d: [(x + 2) % 10 for x in d],
    "first last": lambda d: [d[0], d[-1]],
}
#: Symbol sets of the digit strings: a task name ending in `` letters`` writes its 10 symbols as a..j.
DOMAINS = {"digits": "0123456789", "letters": "abcdefghij"}
PRIMITIVES = ["copy", "reverse", "sort", "increment"]
#: The default continual stream: new operations, alternating between the digit and the letter domain.
CONTINUAL = ["decrement", "sort descending letters", "rotate", "swap pairs letters"]


def split_name(task: str) -> tuple[str, str]:
    """``(operation, domain)`` of a task name: ``"reverse letters"`` -> ``("reverse", "letters")``."""
    if task.endswith(" letters") and task.removesuffix(" letters") in TASKS:
        return task.removesuffix(" letters"), "letters"
    if task in TASKS:
        return task, "digits"
    raise ConfigError(
        f"unknown generated task {task!r}; known: {sorted(TASKS)}, each also as '<name> letters' (symbols a..j)"
    )


def make_example(task: str, digits: Digits) -> dict[str, str]:
    """The ``{"prompt", "answer"}`` example of ``task`` on ``digits``.

    Example:
        >>> make_example("reverse", [3, 8, 1])
        {'prompt': 'reverse: 381 =', 'answer': '183'}
        >>> make_example("increment letters", [3, 8, 9])
        {'prompt': 'increment: dij =', 'answer': 'eja'}
    """
    op, domain = split_name(task)
    symbols = DOMAINS[domain]
    text = "".join(symbols[x] for x in digits)
    return {"prompt": f"{op}: {text} =", "answer": "".join(symbols[x] for x in TASKS[op](list(digits)))}


def generate_examples(
    task: str, n_train: int, n_test: int, min_len: int = 3, max_len: int = 8, seed: int = 0
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """``n_train`` training and ``n_test`` test examples of ``task`` (test inputs unseen in training).

    Digit strings have a uniform length in ``[min_len, max_len]`` and uniform digits; the generator
    is ``random.Random(f"{seed}:{task}")``.
    """
    split_name(task)
    if not 2 <= min_len <= max_len:
        raise ConfigError(f"need 2 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    if n_train < 0 or n_test < 0:
        raise ConfigError(f"example counts must be >= 0, got train {n_train}, test {n_test}")
    available = sum(10**n for n in range(min_len, max_len + 1))
    if n_test > available // 2:
        raise DataError(f"{n_test} test examples of length {min_len}..{max_len} leave too few inputs to train on")
    rng = random.Random(f"{seed}:{task}")

    def draw() -> tuple[int, ...]:
        return tuple(rng.randrange(10) for _ in range(rng.randint(min_len, max_len)))

    test_inputs: list[tuple[int, ...]] = []
    seen: set[tuple[int, ...]] = set()
    while len(test_inputs) < n_test:
        x = draw()
        if x not in seen:
            seen.add(x)
            test_inputs.append(x)
    train_inputs: list[tuple[int, ...]] = []
    while len(train_inputs) < n_train:
        x = draw()
        if x not in seen:  # repeats within training are fine; test inputs are not
            train_inputs.append(x)
    return [make_example(task, list(x)) for x in train_inputs], [make_example(task, list(x)) for x in test_inputs]


class GeneratedTextTasks:
    """A task source (:class:`moram.data.tasks.TaskSource`) of generated digit-string tasks.

    Args:
        tasks: Task names in stream order, from :data:`TASKS` (default :data:`CONTINUAL`).
        train_size: Training examples per task.
        test_size: Test examples per task.
        min_len: Shortest digit string.
        max_len: Longest digit string.
        seed: Seed of the examples; each task draws from its own generator seeded by (seed, name).

    Example:
        >>> source = GeneratedTextTasks(["reverse", "decrement"], train_size=4, test_size=2)
        >>> source.num_tasks, [t.name for t in source.build()], source.build()[1].metric
        (2, ['reverse', 'decrement'], 'exact_match')
    """

    def __init__(
        self,
        tasks: list[str] | None = None,
        train_size: int = 1000,
        test_size: int = 100,
        min_len: int = 3,
        max_len: int = 8,
        seed: int = 0,
    ) -> None:
        names = list(CONTINUAL if tasks is None else tasks)
        unknown = [t for t in names if t not in TASKS and t.removesuffix(" letters") not in TASKS]
        if unknown or not names:
            raise ConfigError(f"data.source.tasks: unknown or no task names {unknown}; known: {sorted(TASKS)}")
        if len(set(names)) != len(names):
            raise ConfigError(f"data.source.tasks repeats a task: {names}")
        if train_size < 1 or test_size < 1:
            raise ConfigError(f"train_size and test_size must be >= 1, got {train_size}, {test_size}")
        if not 2 <= min_len <= max_len:
            raise ConfigError(f"need 2 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
        self.tasks, self.train_size, self.test_size = names, train_size, test_size
        self.min_len, self.max_len, self.seed = min_len, max_len, seed

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def build(self) -> list[TextTask]:
        out = []
        for name in self.tasks:
            train, test = generate_examples(
                name, self.train_size, self.test_size, self.min_len, self.max_len, self.seed
            )
            out.append(
                TextTask(
                    name,
                    TextDataset(train, origin=f"generated {name!r}"),
                    TextDataset(test, origin=f"generated {name!r}"),
                    metric="exact_match",
                    max_new_tokens=self.max_len + 2,
                ).check()
            )
        return out
