"""Text metrics against values worked out by hand, a published SARI value, the edge cases, and torchmetrics.

For each metric the case where torchmetrics' definition gives a different number from the benchmark's is
shown with torchmetrics' value computed here (torchmetrics 1.9.0 checked).
"""

from __future__ import annotations

import pytest
from torchmetrics.functional.text import edit_distance, rouge_score, sacre_bleu_score, squad

from moram.backbones.lm import metrics as tm
from moram.data.text import TEXT_METRICS


def test_metric_names_match_the_text_task_contract():
    assert tm.METRICS == TEXT_METRICS


# --------------------------------------------------------------------------------------------- accuracy


def test_accuracy_is_equality_after_stripping():
    # TRACE's caculate_accuracy: prediction == reference; we strip both first.
    scores = tm.example_scores("accuracy", [" dovish\n", "Dovish", "neutral"], ["dovish", "dovish", "hawkish"])
    assert scores == [100.0, 0.0, 0.0]  # case matters for accuracy (exact_match lowercases)


def test_choice_accuracy_compares_the_first_letters_as_trace_scienceqa():
    # TRACE's eval_ScienceQA.resolve: the first character of each side ("B\nBecause ..." -> "B").
    reference = "A\nBecause wax makes the board slide faster."
    predictions = ["A\nBecause it is shiny.", "B\nBecause wax makes the board slide faster.", "A", "Answer: B"]
    assert tm.example_scores("choice_accuracy", predictions, [reference] * 4) == [100.0, 0.0, 100.0, 100.0]


def test_accuracy_of_empty_text_is_zero_as_in_trace():
    # TRACE skips pairs with an empty side but divides by all of them: each counts 0.
    assert tm.example_scores("accuracy", ["", "  ", "x"], ["", "", ""]) == [0.0, 0.0, 0.0]


def _squad_exact_match(prediction: str, reference: str) -> float:
    """torchmetrics' only string-match score (SQuAD v1.1's exact match), 0-100."""
    preds = [{"prediction_text": prediction, "id": "0"}]
    target = [{"answers": {"answer_start": [0], "text": [reference]}, "id": "0"}]
    return float(squad(preds, target)["exact_match"])


def test_accuracy_differs_from_torchmetrics_squad_exact_match():
    # TRACE compares raw strings; squad's exact match lowercases and drops punctuation and articles.
    assert _squad_exact_match("Dovish", "dovish") == 100.0
    assert tm.example_scores("accuracy", ["Dovish"], ["dovish"]) == [0.0]
    assert _squad_exact_match("dovish", "dovish") == tm.example_scores("accuracy", ["dovish"], ["dovish"])[0] == 100.0


# ------------------------------------------------------------------------------------------ exact_match


def test_exact_match_normalisation():
    # lowercase, drop ASCII punctuation, collapse whitespace (O-LoRA / Super-NaturalInstructions)
    assert tm.normalize_answer("  Science  or\tTechnology. ") == "science or technology"
    predictions = ["science or technology!", "Science, or Technology", "Science", ""]
    references = ["Science or Technology"] * 3 + [" "]
    assert tm.example_scores("exact_match", predictions, references) == [100.0, 100.0, 0.0, 100.0]


def test_exact_match_keeps_articles_unlike_torchmetrics_squad():
    # Super-NaturalInstructions adapts SQuAD's normalisation "without removing the articles"; squad removes them.
    assert _squad_exact_match("the answer", "answer") == 100.0
    assert tm.example_scores("exact_match", ["the answer"], ["answer"]) == [0.0]
    # without articles the two normalisations agree
    for prediction, reference in [("Science, or Technology!", "science or technology"), ("Science", "Science or")]:
        [ours] = tm.example_scores("exact_match", [prediction], [reference])
        assert ours == _squad_exact_match(prediction, reference)


# ---------------------------------------------------------------------------------------------- rouge_l


def _torchmetrics_rouge_l(prediction: str, reference: str) -> float:
    return 100.0 * float(rouge_score(prediction, reference, rouge_keys=("rougeL",))["rougeL_fmeasure"])


def test_rouge_l_keeps_case_and_punctuation_as_trace_unlike_torchmetrics():
    # rouge 1.0.1 (TRACE): words split at spaces, case kept, the final "." ends a sentence.
    # prediction words: The cat sat on the mat (6 distinct: The != the)   reference: the cat lay on a mat (6)
    # LCS = cat, on, mat -> 3;  P = 3/6, R = 3/6, F = 1/2 (less 1e-8 in the denominator)
    [score] = tm.example_scores("rouge_l", ["The cat sat on the mat."], ["the cat lay on a mat"])
    assert score == pytest.approx(50.0)
    # torchmetrics (Google rouge-score): lowercased [a-z0-9] runs, LCS the cat on mat = 4 of 6 -> F = 2/3
    assert _torchmetrics_rouge_l("The cat sat on the mat.", "the cat lay on a mat") == pytest.approx(200 / 3, abs=1e-4)


def test_rouge_l_counts_distinct_words_as_trace_unlike_torchmetrics():
    # rouge 1.0.1 counts distinct words: "the the the" has 1, so P = R = 1/1.
    [score] = tm.example_scores("rouge_l", ["the the the"], ["the"])
    assert score == pytest.approx(100.0)
    # torchmetrics counts every token: LCS 1, P = 1/3, R = 1 -> F = 1/2
    assert _torchmetrics_rouge_l("the the the", "the") == pytest.approx(50.0, abs=1e-4)


def test_rouge_l_unions_the_lcs_over_sentences():
    # prediction sentences "b a" and "c"; reference "a b c" (one sentence), every word distinct.
    # LCS("b a", "a b c") has one word, "a" or "b"; the package's backtrack of x = [b, a], y = [a, b, c]:
    # (2,3) a != c, table[1][3] = 1 not > table[2][2] = 1 -> j = 2;
    # (2,2) a != b, table[1][2] = 1 not > table[2][1] = 1 -> j = 1; (2,1) a == a -> take "a".
    # LCS("c", "a b c") = {c}. Union {a, c} = 2; m = n = 3 -> P = R = F = 2/3.
    [score] = tm.example_scores("rouge_l", ["b a. c"], ["a b c"])
    assert score == pytest.approx(200 / 3)
    assert tm.lcs_words(["b", "a"], ["a", "b", "c"]) == {"a"}
    # torchmetrics: one LCS of "b a c" and "a b c" = 2 tokens of 3 -> 2/3 as well here
    assert _torchmetrics_rouge_l("b a. c", "a b c") == pytest.approx(200 / 3, abs=1e-4)


def test_rouge_l_by_hand_asymmetric_case():
    # prediction: police killed the gunman (4)   reference: the gunman was killed by police (6)
    # "police killed" is out of order in the reference; LCS = "the gunman" -> 2
    # P = 2/6, R = 2/4, F = 2 * (1/6) / (5/6) = 0.4; torchmetrics agrees on this lowercase, unpunctuated text
    [score] = tm.example_scores("rouge_l", ["police killed the gunman"], ["the gunman was killed by police"])
    assert score == pytest.approx(40.0)
    assert _torchmetrics_rouge_l("police killed the gunman", "the gunman was killed by police") == pytest.approx(
        40.0, abs=1e-4)


def test_rouge_l_sentences_and_lcs_words():
    assert tm.rouge_sentences("Don't STOP-me,  2x!") == [["Don't", "STOP-me,", "2x!"]]
    assert tm.rouge_sentences("A. B.. 3.5") == [["A"], ["B"], ["3"], ["5"]]
    assert tm.rouge_sentences("a. . b") == [["a"], [""], ["b"]]  # a piece of spaces is one empty word
    assert tm.rouge_sentences("...") == []
    # the textbook example has three LCSs of length 4 (bcba, bcab, bdab); the backtrack from the end finds "bdab"
    assert tm.lcs_words(list("abcbdab"), list("bdcaba")) == {"b", "d", "a"}
    assert tm.lcs_words([], ["a"]) == set()


def test_rouge_l_edges():
    # case and attached punctuation count: "words," != "words"; text without a sentence scores 0
    scores = tm.example_scores("rouge_l", ["same words here", "Same words, here!", "", "...", "x"],
                               ["same words here.", "same words here", "a", "a", ""])
    assert scores == pytest.approx([100.0, 0.0, 0.0, 0.0, 0.0])


def test_multiple_references_take_the_best():
    # "the cat sat" vs "a dog": LCS 0;  vs "the cat sat down": LCS 3, P = 3/4, R = 1, F = 6/7
    [score] = tm.example_scores("rouge_l", ["the cat sat"], [["a dog", "the cat sat down"]])
    assert score == pytest.approx(600 / 7)
    assert tm.example_scores("accuracy", ["b"], [("a", "b")]) == [100.0]


# -------------------------------------------------------------------------------------- edit_similarity


def test_edit_similarity_by_hand():
    # difflib (fuzzywuzzy without python-Levenshtein): longest block "itt" of kitten / sitting, then "n"
    # to its right ("en" vs "ing"), nothing to its left ("k" vs "s"): M = 4 matching characters.
    # ratio = 2M / (6 + 7) = 8/13 = 0.615 -> round(61.5) = 62.  (Indel distance: 13 - 2*4 = 5 edits.)
    # "return x" vs "return y": M = 7 ("return "), ratio = 14/16 -> 87.5 -> round half to even = 88.
    scores = tm.example_scores("edit_similarity", ["kitten", "return x"], ["sitting", "return y"])
    assert scores == [62.0, 88.0]


def test_edit_similarity_is_not_torchmetrics_levenshtein():
    # torchmetrics' edit_distance is the Levenshtein distance: kitten -> sitting 3, abc -> acb 2 (two substitutions)
    distances = edit_distance(["kitten", "abc"], ["sitting", "acb"], reduction="none").tolist()
    assert distances == [3, 2]
    # normalised by the longer string: 100 (1 - 3/7) = 57.1 and 100 (1 - 2/3) = 33.3; TRACE's difflib ratio:
    # kitten/sitting 2*4/13 -> 62 (see above); abc/acb: block "a", then "b" (a[1], b[2]), nothing after -> M = 2,
    # 2*2/6 -> 67
    levenshtein = [100 * (1 - d / max(len(a), len(b))) for d, a, b in zip(distances, ["kitten", "abc"],
                                                                          ["sitting", "acb"], strict=True)]
    assert levenshtein == pytest.approx([400 / 7, 100 / 3])
    assert tm.example_scores("edit_similarity", ["kitten", "abc"], ["sitting", "acb"]) == [62.0, 67.0]


def test_edit_similarity_resolves_py150_literals_and_edges():
    assert tm.py150_postprocess("f(<STR_LIT:a b>, <NUM_LIT>, <CHAR_LIT>)") == "f(a b, 0, )"
    predictions = ["x = 0", "same", "", "abc"]
    references = ["x = <NUM_LIT>", " same ", "", ""]
    assert tm.example_scores("edit_similarity", predictions, references) == [100.0, 100.0, 0.0, 0.0]


# ------------------------------------------------------------------------------------------------- sari


def test_sari_by_hand():
    # source S = the cat sat, prediction C = the cat, one reference R = a cat sat (one reference: no scaling).
    # n=1: keep S&C = {the, cat}, of which in R: {cat}  -> P = (1/1)/2 = 1/2;  S&R = {cat, sat}: R = 1/2 -> F 1/2
    #      delete S-C = {sat}, but sat is in R        -> deletion precision 0/1 = 0
    #      add C-S = {} -> P = 1 (0/0);  R-S = {a} -> recall 0/1 = 0 -> F 0
    # n=2: S = {the cat, cat sat}, C = {the cat}, R = {a cat, cat sat}
    #      keep {the cat} not in R -> P 0; S&R = {cat sat} -> R 0 -> F 0;  delete {cat sat} is in R -> 0
    #      add {} -> P 1; R-S = {a cat} -> recall 0 -> F 0
    # n=3: S = {the cat sat}, C = {}, R = {a cat sat}
    #      keep {} -> P 1; S&R = {} -> R 1 -> F 1;  delete {the cat sat}, not in R -> 1/1 = 1
    #      add {} -> P 1; R-S = {a cat sat} -> recall 0 -> F 0
    # n=4: nothing anywhere -> keep 1, delete 1, add 1
    # keep = (1/2 + 0 + 1 + 1)/4 = 0.625; delete = (0 + 0 + 1 + 1)/4 = 0.5; add = (0 + 0 + 0 + 1)/4 = 0.25
    # SARI = (0.625 + 0.5 + 0.25) / 3 = 0.458333...
    [score] = tm.example_scores("sari", ["the cat"], ["a cat sat"], sources=["the cat sat"])
    assert score == pytest.approx(100 * 1.375 / 3)


def test_sari_matches_the_published_huggingface_example():
    # evaluate's sari card: sari = 26.953601953601954 for this source, prediction and three references
    references = ["About 95 species are currently known.", "About 95 species are now accepted.",
                  "95 species are now accepted."]
    score = tm.corpus_score("sari", ["About 95 you now get in."], [references],
                            sources=["About 95 species are currently accepted."])
    assert score == pytest.approx(26.953601953601954)


def test_sari_identical_prediction_and_reference_scores_100():
    # every kept n-gram is in the reference, nothing wrongly deleted or added: all components are 1
    [score] = tm.example_scores("sari", ["a c d"], ["a c d"], sources=["a b c"])
    assert score == pytest.approx(100.0)


def test_sari_normalisation_is_lowercase_13a():
    # 13a splits off punctuation but not the apostrophe, nor a period or comma between digits
    assert tm.tokenize_13a("Hi, you.  It's 3.5-4 &amp; more!") == "Hi , you . It's 3.5 - 4 & more !"
    one = tm.example_scores("sari", ["The Cat."], ["the cat ."], sources=["THE CAT SAT."])
    assert one == pytest.approx([100.0])


def test_tokenize_13a_is_sacrebleu_13a_as_in_torchmetrics():
    # tokenize_13a is torchmetrics' copy of sacreBLEU's 13a; a sentence BLEU of a text against its own
    # tokenisation is 100 only if the 13a tokenizer maps both to the same tokens.
    for text in ["Hi, you.  It's 3.5-4 &amp; more!", "a/b (c) [d] {e} \"q\" x-\ny <skipped>z"]:
        tokens = tm.tokenize_13a(text)
        assert float(sacre_bleu_score([tokens], [[text]], tokenize="13a")) == pytest.approx(1.0)
    assert tm.tokenize_13a("x-\ny\nz") == "xy z"


def test_sari_needs_sources():
    with pytest.raises(ValueError, match="sources"):
        tm.example_scores("sari", ["a"], ["a"])
    with pytest.raises(ValueError, match="1 predictions but 2 sources"):
        tm.example_scores("sari", ["a"], ["a"], sources=["a", "b"])


# --------------------------------------------------------------------------------------- shared errors


@pytest.mark.parametrize("metric", TEXT_METRICS)
def test_identical_strings_score_100(metric):
    text = "Answer: B\nBecause it is" if metric == "accuracy" else "the same answer, twice"
    assert tm.example_scores(metric, [text], [text], sources=["a source"]) == pytest.approx([100.0])


def test_unknown_metric_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"'bleu'.*accuracy.*exact_match.*rouge_l.*edit_similarity.*sari"):
        tm.example_scores("bleu", ["a"], ["a"])


def test_length_mismatch_and_empty_inputs():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        tm.example_scores("accuracy", ["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty list of references"):
        tm.example_scores("exact_match", ["a"], [[]])
    assert tm.example_scores("rouge_l", [], []) == []
    with pytest.raises(ValueError, match="no examples"):
        tm.corpus_score("rouge_l", [], [])


def test_corpus_score_is_the_mean_of_example_scores():
    predictions, references = ["kitten", "return x", "a"], ["sitting", "return y", "a"]
    assert tm.corpus_score("edit_similarity", predictions, references) == pytest.approx((62 + 88 + 100) / 3)
