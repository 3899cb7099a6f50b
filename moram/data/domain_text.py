"""A TRACE-shaped generated stream: tasks whose *inputs* differ, each in its own domain and format.

TRACE's eight tasks come from different worlds (stance comments, monetary-policy statements, meeting
transcripts, Python code, science questions, arithmetic word problems, German news), so the input
itself says which task it is. :data:`DOMAIN_TASKS` are small generated counterparts, offline, exactly
reproducible and scored with the metric their TRACE counterpart uses::

    stance      comment: we really love the new bus line.  stance:          ->  A        (accuracy)
    fomc        FOMC: The Committee voted to raise the rate to 3.25%. Label: -> hawkish  (accuracy)
    meeting     KIM: I move to deny item 14. LEE: Second. CHAIR: Vote 2-5. Summary:
                                                             ->  denied item 14, failed 2-5  (rouge_l)
    code        def fit_x(a, b):<EOL>    return sum(max(a[b[      ->  ]])) (edit_similarity)
    science     Question: Which is a metal?<n>A. fog B. zinc C. oak<n>Answer:      ->  B  (choice_accuracy)
    arithmetic  Tom has 7 pens. He buys 5 more. How many pens now? =   ->  12          (accuracy)
    simplify    Vereinfache: Der sehr alte Hund läuft heute nach Hause.  ->  Der Hund läuft nach Hause.  (sari)

Each task has its own vocabulary, symbols (lower case prose; capitalised finance text with ``%``;
upper-case speaker tags; brackets and ``_``; ``<n>``-separated choices; digits in prose; umlauts) and
length. The shipped broad tiny LLaMA (``model: packaged-broad``, recipe ``recipes/pretrain_tiny_lm.py
--mixture broad``) was pretrained on :func:`pretraining_examples`: the *inputs* of every domain (as
plain language modelling and as copying) but never a task's mapping from input to answer.

Examples come from ``random.Random(f"{seed}:{task}:{split}")``; a test input never occurs among the
training inputs (checked, and redrawn). :class:`DomainTextTasks` is the task source.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import NamedTuple

from moram.data.text import TextDataset, TextTask
from moram.errors import ConfigError, DataError

#: Characters beyond the default character tokenizer's that these domains write.
EXTRA_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ()[]<_%'!;äöüß"


class Example(NamedTuple):
    body: str  # the domain text (what pretraining sees)
    prompt: str  # body + the task's cue
    answer: str
    source: str | None = None  # for SARI


# ----------------------------------------------------------------------------------------- the domains

_STANCE_SUBJECTS = ["we", "i", "my family", "most people", "the locals", "my friends", "our club", "they"]
_STANCE_FAVOR = ["really love", "strongly support", "are glad about", "cheer for", "praise", "back"]
_STANCE_AGAINST = ["really hate", "strongly oppose", "are angry about", "protest", "reject", "fear"]
_STANCE_NONE = ["just read about", "heard of", "asked about", "talked about", "noticed", "saw news on"]
_STANCE_TOPICS = ["the new bus line", "the tax plan", "the city park", "the school reform", "the wind farm",
                  "the night market", "the bike lanes", "the new stadium", "the water price", "the mall"]


def _stance(rng: random.Random) -> Example:
    label = rng.randrange(3)
    verb = rng.choice((_STANCE_FAVOR, _STANCE_AGAINST, _STANCE_NONE)[label])
    body = f"comment: {rng.choice(_STANCE_SUBJECTS)} {verb} {rng.choice(_STANCE_TOPICS)}."
    return Example(body, f"{body} stance:", "ABC"[label])


_FOMC_SUBJECTS = ["The Committee", "The Board", "Participants", "Members", "The FOMC"]
_FOMC_HAWK = ["voted to raise", "decided to lift", "agreed to increase", "chose to tighten"]
_FOMC_DOVE = ["voted to lower", "decided to cut", "agreed to reduce", "chose to ease"]
_FOMC_HOLD = ["voted to keep", "decided to hold", "agreed to maintain", "chose to leave"]
_FOMC_THINGS = ["the rate", "the target range", "the policy rate", "the funds rate"]


def _fomc(rng: random.Random) -> Example:
    label = rng.randrange(3)
    verb = rng.choice((_FOMC_HAWK, _FOMC_DOVE, _FOMC_HOLD)[label])
    rate = f"{rng.randint(0, 5)}.{rng.choice(['00', '25', '50', '75'])}%"
    body = f"FOMC: {rng.choice(_FOMC_SUBJECTS)} {verb} {rng.choice(_FOMC_THINGS)} at {rate}."
    return Example(body, f"{body} Label:", ("hawkish", "dovish", "neutral")[label])


_NAMES = ["KIM", "LEE", "DIAZ", "OKAFOR", "SMITH", "NGUYEN", "COHEN", "ROSSI", "PATEL", "BAKER"]
_MOTIONS = {"approve": "approved", "deny": "denied", "table": "tabled", "amend": "amended", "adopt": "adopted"}


def _meeting(rng: random.Random) -> Example:
    mover, seconder = rng.sample(_NAMES, 2)
    motion = rng.choice(sorted(_MOTIONS))
    item = rng.randint(1, 40)
    yes = rng.randint(0, 7)
    no = rng.choice([n for n in range(8) if n != yes])
    body = f"{mover}: I move to {motion} item {item}. {seconder}: Second. CHAIR: Vote {yes}-{no}."
    outcome = "passed" if yes > no else "failed"
    return Example(body, f"{body} Summary:", f"{_MOTIONS[motion]} item {item}, {outcome} {yes}-{no}")


_FUNCS = ["len", "sum", "max", "min", "abs", "sorted", "list", "str", "int", "round"]
_VARS = ["a", "b", "x", "y", "n", "i", "data", "row", "key", "val"]


def _code(rng: random.Random) -> Example:
    name = "_".join(rng.choice(["get", "fit", "load", "make", "run", "sum", "scale"]) for _ in range(2))
    args = rng.sample(_VARS, 2)
    depth = rng.randint(2, 4)
    opened: list[str] = []
    expr = ""
    for _ in range(depth):
        if opened and rng.random() < 0.4:
            expr += f"{rng.choice(args)}["
            opened.append("]")
        else:
            expr += f"{rng.choice(_FUNCS)}("
            opened.append(")")
    expr += rng.choice(args)
    body = f"def {name}({args[0]}, {args[1]}):<EOL>    return {expr}"
    return Example(body, body, "".join(reversed(opened)))


_CATEGORIES = {
    "a metal": ["iron", "zinc", "gold", "tin", "copper", "silver"],
    "a gas": ["steam", "helium", "oxygen", "smoke", "neon", "air"],
    "a mammal": ["whale", "bat", "horse", "goat", "mouse", "tiger"],
    "a bird": ["owl", "crow", "duck", "eagle", "robin", "swan"],
    "a plant": ["oak", "fern", "moss", "rose", "pine", "tulip"],
    "a liquid": ["milk", "oil", "juice", "water", "honey", "ink"],
}


def _science(rng: random.Random) -> Example:
    cats = rng.sample(sorted(_CATEGORIES), 3)
    words = [rng.choice(_CATEGORIES[c]) for c in cats]  # words[0] answers the question
    order = [0, 1, 2]
    rng.shuffle(order)
    choices = " ".join(f"{'ABC'[pos]}. {words[i]}" for pos, i in enumerate(order))
    body = f"Question: Which is {cats[0]}?<n>{choices}"
    return Example(body, f"{body}<n>Answer:", "ABC"[order.index(0)])


_PEOPLE = ["Tom", "Ana", "Raj", "Mia", "Leo", "Zoe", "Sam", "Eva"]
_THINGS = ["pens", "apples", "cards", "coins", "books", "shells"]


def _arithmetic(rng: random.Random) -> Example:
    who, what = rng.choice(_PEOPLE), rng.choice(_THINGS)
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    if rng.random() < 0.5:
        body = f"{who} has {a} {what}. He buys {b} more. How many {what} now?"
        answer = a + b
    else:
        a = a + b
        body = f"{who} has {a} {what}. He gives away {b}. How many {what} now?"
        answer = a - b
    return Example(body, f"{body} =", str(answer))


_DE_NOUNS = [("Der", "Hund"), ("Die", "Katze"), ("Der", "Mann"), ("Die", "Frau"), ("Das", "Kind"), ("Der", "Bär")]
_DE_ADJ = ["sehr alte", "kleine", "müde", "große", "fröhliche", "schöne"]
_DE_VERBS = ["läuft", "fährt", "geht", "kommt", "eilt"]
_DE_ADV = ["heute", "schnell", "wirklich", "leider", "später", "sofort"]
_DE_PLACES = ["nach Hause", "in die Stadt", "zum Bäcker", "über die Brücke", "in den Wald", "zur Schule"]


def _simplify(rng: random.Random) -> Example:
    art, noun = rng.choice(_DE_NOUNS)
    verb, place = rng.choice(_DE_VERBS), rng.choice(_DE_PLACES)
    words = [art]
    if rng.random() < 0.7:
        words.append(rng.choice(_DE_ADJ))
    words += [noun, verb]
    for _ in range(rng.randint(1, 2)):
        words.append(rng.choice(_DE_ADV))
    sentence = " ".join([*words, place]) + "."
    simple = f"{art} {noun} {verb} {place}."
    body = f"Vereinfache: {sentence}"
    return Example(body, body, simple, source=body)


#: Task name -> (generator of one example, the TRACE metric that scores it, TRACE task it stands for).
DOMAIN_TASKS: dict[str, tuple[Callable[[random.Random], Example], str, str]] = {
    "stance": (_stance, "accuracy", "C-STANCE"),
    "fomc": (_fomc, "accuracy", "FOMC"),
    "meeting": (_meeting, "rouge_l", "MeetingBank"),
    "code": (_code, "edit_similarity", "Py150"),
    "science": (_science, "choice_accuracy", "ScienceQA"),
    "arithmetic": (_arithmetic, "accuracy", "NumGLUE-cm"),
    "simplify": (_simplify, "sari", "20Minuten"),
}
#: The default stream of ``configs/llm_cl.yaml``, in TRACE's order (``fomc`` and ``arithmetic`` are left out
#: to keep it within a few CPU minutes).
DEFAULT_DOMAIN_STREAM = ["stance", "meeting", "code", "science", "simplify"]


def domain_examples(task: str, n_train: int, n_test: int, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """``n_train`` training and ``n_test`` test examples of ``task``; no test prompt occurs in training.

    Example:
        >>> train, test = domain_examples("arithmetic", 3, 2)
        >>> len(train), len(test), {e.prompt for e in train} & {e.prompt for e in test}
        (3, 2, set())
    """
    if task not in DOMAIN_TASKS:
        raise ConfigError(f"unknown domain task {task!r}; known: {sorted(DOMAIN_TASKS)}")
    make = DOMAIN_TASKS[task][0]
    rng = random.Random(f"{seed}:{task}:test")
    test: list[Example] = []
    seen: set[str] = set()
    tries = 0
    while len(test) < n_test:
        e = make(rng)
        tries += 1
        if e.prompt not in seen:
            seen.add(e.prompt)
            test.append(e)
        elif tries > 50 * (n_test + 10):
            raise DataError(
                f"domain task {task!r} has fewer than {n_test} distinct inputs; ask for fewer test examples"
            )
    rng = random.Random(f"{seed}:{task}:train")
    train: list[Example] = []
    tries = 0
    while len(train) < n_train:
        e = make(rng)
        tries += 1
        if e.prompt not in seen:  # repeats within training are fine; test inputs are not
            train.append(e)
        elif tries > 50 * (n_train + 10):
            raise DataError(f"domain task {task!r}: its test set uses up its inputs; ask for fewer test examples")
    return train, test


def _as_dict(e: Example) -> dict[str, str]:
    out = {"prompt": e.prompt, "answer": e.answer}
    if e.source is not None:
        out["source"] = e.source
    return out


def pretraining_examples(tasks: list[str], per_task: int, seed: int) -> list[dict[str, str]]:
    """The broad pretraining mixture over the domains of ``tasks``: their inputs, never their answers.

    Half the examples are language modelling of a domain's text (empty prompt, the text as the answer);
    half copy a random span of it (``repeat: <span> =`` -> the span). Drawn from a generator
    separate from the continual tasks' (``f"{seed}:{task}:pretrain"``), so the exact inputs differ too.
    """
    out: list[dict[str, str]] = []
    for task in tasks:
        make = DOMAIN_TASKS[task][0]
        rng = random.Random(f"{seed}:{task}:pretrain")
        for i in range(per_task):
            body = make(rng).body
            if i % 2 == 0:
                out.append({"prompt": "", "answer": body})
            else:
                words = body.split(" ")
                start = rng.randrange(len(words))
                span = " ".join(words[start : start + rng.randint(1, 4)])
                out.append({"prompt": f"repeat: {span} =", "answer": span})
    random.Random(seed).shuffle(out)
    return out


class DomainTextTasks:
    """A task source (:class:`moram.data.tasks.TaskSource`) of the TRACE-shaped generated domain tasks.

    Args:
        tasks: Task names in stream order, from :data:`DOMAIN_TASKS` (default :data:`DEFAULT_DOMAIN_STREAM`).
        train_size: Training examples per task.
        test_size: Test examples per task.
        seed: Seed of the examples; each task and split draws from its own generator.
        max_new_tokens: Generation budget of every task's answers; None (default): the task's longest
            answer (train or test) in characters plus 4, so that a model that does not stop shows it.

    Example:
        >>> source = DomainTextTasks(["stance", "code"], train_size=4, test_size=2)
        >>> [(t.name, t.metric) for t in source.build()]
        [('stance', 'accuracy'), ('code', 'edit_similarity')]
    """

    def __init__(
        self,
        tasks: list[str] | None = None,
        train_size: int = 1000,
        test_size: int = 100,
        seed: int = 0,
        max_new_tokens: int | None = None,
    ) -> None:
        names = list(DEFAULT_DOMAIN_STREAM if tasks is None else tasks)
        unknown = [t for t in names if t not in DOMAIN_TASKS]
        if unknown or not names:
            raise ConfigError(f"data.source.tasks: unknown or no task names {unknown}; known: {sorted(DOMAIN_TASKS)}")
        if len(set(names)) != len(names):
            raise ConfigError(f"data.source.tasks repeats a task: {names}")
        if train_size < 1 or test_size < 1:
            raise ConfigError(f"data.source train_size and test_size must be >= 1, got {train_size}, {test_size}")
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ConfigError(f"data.source.max_new_tokens must be >= 1, got {max_new_tokens}")
        self.tasks, self.train_size, self.test_size = names, train_size, test_size
        self.seed, self.max_new_tokens = seed, max_new_tokens

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def build(self) -> list[TextTask]:
        out = []
        for name in self.tasks:
            train, test = domain_examples(name, self.train_size, self.test_size, self.seed)
            origin = f"generated domain task {name!r}"
            out.append(
                TextTask(
                    name,
                    TextDataset([_as_dict(e) for e in train], origin=origin),
                    TextDataset([_as_dict(e) for e in test], origin=origin),
                    metric=DOMAIN_TASKS[name][1],
                    max_new_tokens=self.max_new_tokens or 4 + max(len(e.answer) for e in train + test),
                ).check()
            )
        return out
