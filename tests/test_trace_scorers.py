"""TRACE's scorers as TRACE scores them, on awkward answers.

Each case is an answer in the shape TRACE's evaluation code (BeyonderXX/TRACE: ``metrics.py`` and
``evaluations/eval_*.py``; the MoRAM fork's copy where it differs) receives: a decoded generation,
compared with the reference of the task's data file. ``TRACE`` is the number that code computes on the
case, worked out from reading it and, for ROUGE-L and edit similarity, computed with the very packages it
calls (``rouge`` 1.0.1, ``fuzzywuzzy`` 0.18.0 without python-Levenshtein) -- re-checked live by the last test
when those packages are installed. moram must give the same number, except where a documented deviation
says otherwise (surrounding and repeated whitespace: moram strips and collapses it; TRACE keeps it).
"""

from __future__ import annotations

import re

import pytest

from moram.backbones.lm.metrics import corpus_score, example_scores

# (task, metric, reference, [(prediction, TRACE's score of the pair)])
CASES = [
    # C-STANCE / FOMC: caculate_accuracy, raw string equality; empty pairs are skipped but still counted
    ("C-STANCE", "accuracy", "A", [("A", 100), ("A.", 0), ("A\n对象：", 0), ("a", 0), ("B", 0), ("", 0)]),
    ("FOMC", "accuracy", "B", [("B", 100), ("B. hawkish", 0), ("Stance: B", 0), ("", 0)]),
    # NumGLUE-cm / -ds: caculate_accuracy in BeyonderXX/TRACE (the MoRAM fork's maths parser would give 17.0 = 17)
    ("NumGLUE-cm", "accuracy", "17", [("17", 100), ("17.0", 0), ("17 apples", 0), ("The answer is 17", 0)]),
    ("NumGLUE-ds", "accuracy", "June", [("June", 100), ("june", 0), ("June.", 0)]),
    # ScienceQA: resolve() keeps the first character of both sides ("B\nThere are ..." -> "B")
    ("ScienceQA", "choice_accuracy", "B\nThere are four kinds of sentences.", [
        ("B\nBecause it is a question.", 100), ("B.", 100), ("B", 100), ("C\nB", 0), ("b", 0), ("Answer: B", 0),
    ]),
    # MeetingBank: ROUGE-L F of the rouge package, reference as hypothesis; case and punctuation kept
    ("MeetingBank", "rouge_l", "The council approved item 4. The vote passed 5-2.", [
        ("The council approved item 4. The vote passed 5-2.", 99.9999995),
        ("The council approved item 4. The vote passed 5-2. Next, item 5 was tabled.", 79.99999952),
        ("the council approved item 4 the vote passed 5-2", 87.4999995),
        ("Approved: item 4 (5-2).", 33.3333328888889),
    ]),
    # Py150: fuzz.ratio after resolving the literal placeholders
    ("Py150", "edit_similarity", "return self . _data [ <STR_LIT:key> ]", [
        ("return self . _data [ <STR_LIT:key> ]", 100), ("return self . _data [ '<STR_LIT:key>' ]", 96),
        ("return self . _data [ key ] <EOL> def", 84), ("return self._data[key]", 90),
    ]),
]

# whitespace: TRACE's number, and moram's (which strips and collapses whitespace first)
WHITESPACE = [
    ("accuracy", "A", "A ", 0, 100),
    ("accuracy", "17", " 17", 0, 100),
    ("rouge_l", "The council approved item 4. The vote passed 5-2.",
     "The council approved item 4.  The vote passed 5-2.  ", 94.11764656055364, 99.9999995),
    ("edit_similarity", "return self . _data [ <STR_LIT:key> ]", "return self . _data [ key ] ", 98, 100),
]


@pytest.mark.parametrize(("task", "metric", "reference", "pairs"), CASES, ids=[c[0] for c in CASES])
def test_each_awkward_answer_scores_what_trace_computes(task, metric, reference, pairs):
    predictions = [p for p, _ in pairs]
    trace = [score for _, score in pairs]
    assert example_scores(metric, predictions, [reference] * len(pairs)) == pytest.approx(trace, abs=1e-6)
    # the task's number is the mean over the pairs, empty ones included (TRACE divides by len(results))
    assert corpus_score(metric, predictions, [reference] * len(pairs)) == pytest.approx(sum(trace) / len(trace))


@pytest.mark.parametrize(("metric", "reference", "prediction", "trace", "ours"), WHITESPACE)
def test_whitespace_is_the_documented_deviation(metric, reference, prediction, trace, ours):
    assert trace != ours
    assert example_scores(metric, [prediction], [reference]) == pytest.approx([ours])


def test_trace_numbers_recomputed_with_the_packages_trace_calls():
    rouge = pytest.importorskip("rouge")
    fuzz = pytest.importorskip("fuzzywuzzy.fuzz")

    def literal(code: str) -> str:  # eval_Py150.postprocess, restated
        code = code.replace("<NUM_LIT>", "0").replace("<STR_LIT>", "").replace("<CHAR_LIT>", "")
        return re.sub(r"<(STR|NUM|CHAR)_LIT:(.*?)>", lambda m: m.group(2), code, flags=re.S)

    def trace(metric: str, prediction: str, reference: str) -> float:
        if metric == "rouge_l":
            scores = rouge.Rouge(metrics=["rouge-l"]).get_scores(reference, prediction, avg=True)
            return 100 * scores["rouge-l"]["f"]
        return fuzz.ratio(literal(prediction), literal(reference))

    for _, metric, reference, pairs in CASES:
        if metric in ("rouge_l", "edit_similarity"):
            for prediction, expected in pairs:
                assert trace(metric, prediction, reference) == pytest.approx(expected, abs=1e-6)
    for metric, reference, prediction, expected, _ in WHITESPACE:
        if metric in ("rouge_l", "edit_similarity"):
            assert trace(metric, prediction, reference) == pytest.approx(expected, abs=1e-6)
