r"""Per-example scores of generated text against references, on a 0–100 scale (TRACE's and O-LoRA's metrics).

Every metric gives one score per example, so that scores can be summed (and counted) across processes
and averaged once; :func:`corpus_score` is their mean. Predictions and references are stripped of
leading and trailing whitespace first (a decoded answer often starts with a space). A reference may be
one string or a list of strings; with several, an example scores the best over them, except SARI,
which uses them all at once, as its definition does.

Which metrics use torchmetrics (checked against torchmetrics 1.9.0, ``torchmetrics.functional.text``; each
difference below is shown on a concrete case in ``tests/test_text_metrics.py``, torchmetrics' number computed there):
torchmetrics gives none of the five benchmark definitions, so each score is our own; torchmetrics serves SARI's
``13a`` tokenisation, which is sacreBLEU's, and is used through :func:`tokenize_13a`.

- ``accuracy`` (TRACE's classification score, ``caculate_accuracy``, for C-STANCE, FOMC, NumGLUE-cm and
  NumGLUE-ds): 100 when the prediction equals the reference, else 0. The strings are compared as they are
  (after the stripping above): ``"A."`` against ``"A"``, ``"17.0"`` against ``"17"`` and ``"A\nbecause"``
  against ``"A"`` all score 0, as in TRACE (BeyonderXX/TRACE; the MoRAM fork of TRACE scores NumGLUE with a
  maths answer parser instead, under which ``"17.0"`` matches ``"17"``: not reproduced). An empty prediction
  or reference scores 0 (TRACE skips such pairs but still divides by their number). The one difference from
  TRACE: TRACE does not strip, so a prediction ``"A "`` scores 0 there and 100 here (moram's generated answers
  are stripped before scoring in any case). *Not torchmetrics*: its classification accuracy takes class
  indices, not generated strings, and its only string match, ``squad``'s exact match, lowercases and drops
  punctuation and articles, while TRACE compares the raw strings (``"Dovish"`` vs ``"dovish"``: TRACE 0,
  ``squad`` 100).
- ``choice_accuracy`` (TRACE's ScienceQA score, ``eval_ScienceQA``): ScienceQA's references are
  ``"B\nThere are four kinds of sentences ..."`` (the letter, a newline, the reasoning); TRACE's ``resolve``
  keeps the *first character* of prediction and reference and compares those, so ``"B. because ..."``,
  ``"B\nanything"`` and ``"B"`` all match ``"B\n..."``, and ``"Answer: B"`` does not (its first character is
  ``A``). Text is stripped first, as the MoRAM fork's ``resolve`` does (BeyonderXX/TRACE does not strip, and
  fails on an empty answer); an empty prediction scores 0.
- ``exact_match`` (O-LoRA's and Super-NaturalInstructions' ``exact_match``): both sides are lowercased,
  stripped of ASCII punctuation (:data:`string.punctuation`) and their whitespace runs collapsed to
  one space (``" ".join(text.split())``); 100 when equal. Two empty strings match. *Not torchmetrics*:
  ``squad``'s exact match is SQuAD v1.1's normalisation, which also removes the articles a/an/the; the
  Super-NaturalInstructions code adapts it "without removing the articles" (``"the answer"`` vs
  ``"answer"``: ours 0, ``squad`` 100; equal on text without articles).
- ``rouge_l`` (TRACE's MeetingBank score): the ROUGE-L F of the ``rouge`` package (pltrdy) 1.0.1, which
  TRACE pins and calls as ``Rouge(metrics=["rouge-l"]).get_scores(target, prediction)["rouge-l"]["f"]``
  (reference as hypothesis). The text is split into sentences at every ``"."`` (empty pieces dropped) and
  each sentence into words at single spaces after collapsing whitespace: case and punctuation other than
  ``"."`` are kept. Counts are of *distinct* words (``exclusive=True``): m and n the distinct words of
  prediction and reference, L the distinct words of the union, over every pair of a prediction sentence
  and a reference sentence, of their longest common subsequence (recovered by the package's backtrack);
  P = L / n, R = L / m, F = 2PR / (P + R + 1e-8). Text without a sentence (empty, only dots) scores 0
  (the package raises). *Not torchmetrics*: its ``rouge_score(rouge_keys="rougeL")`` is Google
  rouge-score's: lowercased ``[a-z0-9]`` runs, one LCS of the whole texts counted with repetition
  (``"The cat sat on the mat."`` vs ``"the cat lay on a mat"``: TRACE 50, torchmetrics 66.7; ``"the the
  the"`` vs ``"the"``: TRACE 100, torchmetrics 50).
- ``edit_similarity`` (TRACE's Py150 score): fuzzywuzzy's ``fuzz.ratio`` as TRACE installs it (fuzzywuzzy
  without python-Levenshtein, so :class:`difflib.SequenceMatcher`): ``round(100 * ratio)`` with
  ratio = 2M / (len(a) + len(b)) over characters, M the characters of the matching blocks; 100 when the
  strings are equal, 0 when either is empty. Py150's literal placeholders are resolved first on both
  sides (TRACE's ``eval_Py150.postprocess``): ``<NUM_LIT>`` → ``0``, ``<STR_LIT>`` and ``<CHAR_LIT>`` →
  nothing, ``<STR_LIT:x>`` / ``<NUM_LIT:x>`` / ``<CHAR_LIT:x>`` → ``x``. *Not torchmetrics*: its
  ``edit_distance`` is the Levenshtein distance (substitutions cost 1), a count with no similarity
  scale; no normalisation of it gives difflib's matching-block ratio (``"kitten"`` vs ``"sitting"``:
  distance 3, 1 - 3/7 = 57; TRACE 62. ``"abc"`` vs ``"acb"``: distance 2, 1 - 2/3 = 33; TRACE 67).
- ``sari`` (Xu et al. 2016, as Hugging Face ``evaluate``'s ``sari``, which TRACE calls for 20Minuten):
  source, prediction and references are lowercased and tokenised with sacreBLEU's ``13a`` tokenizer
  (:func:`tokenize_13a`, equal to torchmetrics'), split on single spaces; for n = 1..4 the keep F1, the
  deletion precision and the addition F1 are computed from n-gram counts (each source and prediction
  count multiplied by the number of references; 0/0 counts as 1), averaged over n, and SARI is the mean
  of the three. It needs the ``sources``; TRACE passes each example's full prompt (instruction and
  article) as the source. *Not torchmetrics*: torchmetrics 1.9.0 has no SARI.

Example:
    >>> example_scores("exact_match", ["The  Answer."], ["the answer"])
    [100.0]
    >>> corpus_score("accuracy", ["dovish", "neutral"], ["dovish", "hawkish"])
    50.0
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from difflib import SequenceMatcher

from moram.errors import ConfigError, DataError

Reference = str | Sequence[str]

_PUNCTUATION = frozenset(string.punctuation)
_13A = [
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),  # punctuation and symbols
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),  # period and comma unless preceded by a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),  # period and comma unless followed by a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # dash preceded by a digit
]
_LITERAL = re.compile(r"<(STR|NUM|CHAR)_LIT:(.*?)>", re.S)


# ---------------------------------------------------------------------------------------------- helpers


def normalize_answer(text: str) -> str:
    """Lowercase, drop ASCII punctuation, collapse whitespace: the ``exact_match`` normalisation.

    Example:
        >>> normalize_answer("  Science or  Technology! ")
        'science or technology'
    """
    return " ".join("".join(ch for ch in text.lower() if ch not in _PUNCTUATION).split())


def rouge_sentences(text: str) -> list[list[str]]:
    """The ``rouge_l`` sentences and words, as the ``rouge`` package 1.0.1 splits them.

    Sentences are the non-empty pieces between ``"."``; a sentence's words are its whitespace-separated
    runs joined by one space, then split at ``" "`` (so a piece of only spaces is one empty word).

    Example:
        >>> rouge_sentences("The cat's  hat. It's 2.5")
        [['The', "cat's", 'hat'], ["It's", '2'], ['5']]
    """
    return [" ".join(piece.split()).split(" ") for piece in text.split(".") if piece]


def lcs_words(x: Sequence[str], y: Sequence[str]) -> set[str]:
    """The distinct words of the longest common subsequence of ``x`` and ``y`` that the ``rouge`` package recovers.

    Its backtrack from the end: take a match, else step back in ``x`` when that keeps a strictly longer
    LCS, else step back in ``y``; among several LCSs this picks the same one, and so the same words.

    Example:
        >>> sorted(lcs_words("the cat sat on the mat".split(), "a cat on the mat sat".split()))
        ['cat', 'mat', 'on', 'the']
    """
    table = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i, a in enumerate(x, start=1):
        for j, b in enumerate(y, start=1):
            table[i][j] = table[i - 1][j - 1] + 1 if a == b else max(table[i - 1][j], table[i][j - 1])
    words: set[str] = set()
    i, j = len(x), len(y)
    while i and j:
        if x[i - 1] == y[j - 1]:
            words.add(x[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


def py150_postprocess(code: str) -> str:
    """Resolve Py150's literal placeholders as TRACE does before scoring edit similarity.

    Example:
        >>> py150_postprocess("x = <NUM_LIT> + <NUM_LIT:2> + len(<STR_LIT>) + <STR_LIT:a>")
        'x = 0 + 2 + len() + a'
    """
    code = code.replace("<NUM_LIT>", "0").replace("<STR_LIT>", "").replace("<CHAR_LIT>", "")
    return _LITERAL.sub(lambda m: m.group(2), code)


def tokenize_13a(text: str) -> str:
    """The ``13a`` tokenisation of sacreBLEU (mteval-v13a): split punctuation off words; one space between tokens.

    The same tokens as torchmetrics' ``sacre_bleu_score(tokenize="13a")`` (tested); written out here
    because torchmetrics exposes the tokenizer only as a private class. It keeps case; SARI lowercases first.

    Example:
        >>> tokenize_13a("Hello, world. It costs 3.50-4 &amp; more!")
        'Hello , world . It costs 3.50 - 4 & more !'
    """
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for entity, char in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
        text = text.replace(entity, char)
    text = f" {text} "
    for pattern, replacement in _13A:
        text = pattern.sub(replacement, text)
    return " ".join(text.split())


def answer_choice(text: str) -> str:
    r"""TRACE's ScienceQA answer: the first character of the stripped text (``""`` for empty text).

    Example:
        >>> answer_choice("C\nBecause the wax ...")
        'C'
    """
    return text.strip()[:1]


def _f1(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


# ------------------------------------------------------------------------------------- single-pair scores


def accuracy_score(prediction: str, reference: str) -> float:
    """``accuracy`` of one pair, 0 or 100 (see the module docstring)."""
    prediction, reference = prediction.strip(), reference.strip()
    if not prediction or not reference:
        return 0.0
    return 100.0 if prediction == reference else 0.0


def choice_accuracy_score(prediction: str, reference: str) -> float:
    """``choice_accuracy`` of one pair (TRACE's ScienceQA), 0 or 100 (see the module docstring)."""
    return accuracy_score(answer_choice(prediction), answer_choice(reference))


def exact_match_score(prediction: str, reference: str) -> float:
    """``exact_match`` of one pair, 0 or 100."""
    return 100.0 if normalize_answer(prediction) == normalize_answer(reference) else 0.0


def rouge_l_score(prediction: str, reference: str) -> float:
    """ROUGE-L F of one pair as TRACE computes it with the ``rouge`` package 1.0.1, 0–100 (see the module docstring)."""
    # TRACE calls get_scores(target, prediction): the reference is the package's hypothesis.
    evaluated, against = rouge_sentences(reference.strip()), rouge_sentences(prediction.strip())
    if not evaluated or not against:
        return 0.0
    m = len({word for sentence in against for word in sentence})
    n = len({word for sentence in evaluated for word in sentence})
    union: set[str] = set()
    for sentence in against:
        for other in evaluated:
            union |= lcs_words(sentence, other)
    precision, recall = len(union) / n, len(union) / m
    return 100.0 * 2.0 * precision * recall / (precision + recall + 1e-8)


def edit_similarity_score(prediction: str, reference: str) -> float:
    """fuzzywuzzy-style ``fuzz.ratio`` of one pair after Py150 post-processing, an integer 0–100."""
    a, b = py150_postprocess(prediction.strip()), py150_postprocess(reference.strip())
    if a == b:
        return 100.0 if a else 0.0
    if not a or not b:
        return 0.0
    return float(round(100 * SequenceMatcher(None, a, b).ratio()))


def _ngrams(tokens: list[str], n: int) -> list[str]:
    return [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _sari_ngram(source: list[str], prediction: list[str], references: list[list[str]]) -> tuple[float, float, float]:
    """Keep F1, deletion precision and addition F1 for one n-gram order."""
    copies = len(references)
    reference_counts: Counter[str] = Counter(g for grams in references for g in grams)
    source_counts = Counter({g: c * copies for g, c in Counter(source).items()})
    prediction_counts = Counter({g: c * copies for g, c in Counter(prediction).items()})

    kept = source_counts & prediction_counts
    kept_good = kept & reference_counts
    kept_all = source_counts & reference_counts
    keep_precision = sum(kept_good[g] / kept[g] for g in kept_good) / len(kept) if kept else 1.0
    keep_recall = sum(kept_good.values()) / sum(kept_all.values()) if kept_all else 1.0

    deleted = source_counts - prediction_counts
    deleted_good = deleted - reference_counts
    delete_precision = sum(deleted_good[g] / deleted[g] for g in deleted_good) / len(deleted) if deleted else 1.0

    added = set(prediction_counts) - set(source_counts)
    added_good = added & set(reference_counts)
    added_all = set(reference_counts) - set(source_counts)
    add_precision = len(added_good) / len(added) if added else 1.0
    add_recall = len(added_good) / len(added_all) if added_all else 1.0
    return _f1(keep_precision, keep_recall), delete_precision, _f1(add_precision, add_recall)


def sari_score(source: str, prediction: str, references: Sequence[str]) -> float:
    """SARI of one example against its references, 0–100 (see the module docstring)."""
    if not references:
        raise ValueError("SARI needs at least one reference per example")

    def tokens(text: str) -> list[str]:
        return tokenize_13a(text.lower()).split(" ")

    s, c, refs = tokens(source), tokens(prediction), [tokens(r) for r in references]
    keep = delete = add = 0.0
    for n in range(1, 5):
        k, d, a = _sari_ngram(_ngrams(s, n), _ngrams(c, n), [_ngrams(r, n) for r in refs])
        keep, delete, add = keep + k, delete + d, add + a
    return 100.0 * (keep + delete + add) / 12


# ------------------------------------------------------------------------------------------- public API

PairScorer = Callable[[str, str], float]

#: The pairwise scorers, by metric name; ``sari`` is separate because it needs the source.
PAIR_SCORERS: dict[str, PairScorer] = {
    "accuracy": accuracy_score,
    "choice_accuracy": choice_accuracy_score,
    "exact_match": exact_match_score,
    "rouge_l": rouge_l_score,
    "edit_similarity": edit_similarity_score,
}
#: Every metric name, in the order of :data:`moram.data.text.TEXT_METRICS`.
METRICS: tuple[str, ...] = (*PAIR_SCORERS, "sari")


def _as_list(reference: Reference) -> list[str]:
    return [reference] if isinstance(reference, str) else list(reference)


def example_scores(
    metric: str,
    predictions: Sequence[str],
    references: Sequence[Reference],
    sources: Sequence[str] | None = None,
) -> list[float]:
    """One score in [0, 100] per example.

    Args:
        metric: One of :data:`METRICS`.
        predictions: Generated texts.
        references: One reference string, or a list of them, per prediction.
        sources: The source text per prediction; required by ``sari``, ignored otherwise.

    Returns:
        The scores, in the order of ``predictions``.

    Raises:
        ValueError: Unknown metric (the message lists the valid ones), lengths that differ, ``sari``
            without sources, or an example with an empty list of references.

    Example:
        >>> [round(s, 4) for s in example_scores("rouge_l", ["the cat sat"], [["a dog", "the cat sat down"]])]
        [85.7143]
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown text metric {metric!r}; valid metrics: {list(METRICS)}")
    if len(predictions) != len(references):
        raise ValueError(f"{metric}: {len(predictions)} predictions but {len(references)} references")
    reference_lists = [_as_list(r) for r in references]
    empty = [i for i, r in enumerate(reference_lists) if not r]
    if empty:
        raise DataError(f"{metric}: example {empty[0]} has an empty list of references")
    if metric == "sari":
        if sources is None:
            raise ValueError("sari needs the source of every example (sources=...); TRACE uses the prompt")
        if len(sources) != len(predictions):
            raise ValueError(f"sari: {len(predictions)} predictions but {len(sources)} sources")
        return [sari_score(s, p, r) for s, p, r in zip(sources, predictions, reference_lists, strict=True)]
    scorer = PAIR_SCORERS[metric]
    return [max(scorer(p, r) for r in refs) for p, refs in zip(predictions, reference_lists, strict=True)]


def corpus_score(
    metric: str,
    predictions: Sequence[str],
    references: Sequence[Reference],
    sources: Sequence[str] | None = None,
) -> float:
    """The mean of :func:`example_scores` (0–100); raises ``ValueError`` when there are no examples.

    Example:
        >>> corpus_score("edit_similarity", ["return x", "pass"], ["return x", "return y"])
        50.0
    """
    scores = example_scores(metric, predictions, references, sources)
    if not scores:
        raise DataError(f"{metric}: no examples to score")
    return sum(scores) / len(scores)
