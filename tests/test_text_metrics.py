"""Text metrics against values worked out by hand, a published SARI value, and the edge cases."""

from __future__ import annotations

import pytest

from moram import text_metrics as tm
from moram.data.text import TEXT_METRICS


def test_metric_names_match_the_text_task_contract():
    assert tm.METRICS == TEXT_METRICS


# --------------------------------------------------------------------------------------------- accuracy


def test_accuracy_is_equality_after_stripping():
    # TRACE's caculate_accuracy: prediction == reference; we strip both first.
    scores = tm.example_scores("accuracy", [" dovish\n", "Dovish", "neutral"], ["dovish", "dovish", "hawkish"])
    assert scores == [100.0, 0.0, 0.0]  # case matters for accuracy (exact_match lowercases)


def test_accuracy_uses_the_answer_letter_for_scienceqa_references():
    # TRACE's eval_ScienceQA.resolve: the one character after the first "Answer: ".
    reference = "Answer: A\nBecause wax makes the board slide faster."
    predictions = ["Answer: A\nBecause it is shiny.", "Answer: B\nBecause wax makes the board slide faster.", "A"]
    assert tm.example_scores("accuracy", predictions, [reference] * 3) == [100.0, 0.0, 0.0]


def test_accuracy_of_empty_text_is_zero_as_in_trace():
    # TRACE skips pairs with an empty side but divides by all of them: each counts 0.
    assert tm.example_scores("accuracy", ["", "  ", "x"], ["", "", ""]) == [0.0, 0.0, 0.0]


# ------------------------------------------------------------------------------------------ exact_match


def test_exact_match_normalisation():
    # lowercase, drop ASCII punctuation, collapse whitespace (O-LoRA / Super-NaturalInstructions)
    assert tm.normalize_answer("  Science  or\tTechnology. ") == "science or technology"
    predictions = ["science or technology!", "Science, or Technology", "Science", ""]
    references = ["Science or Technology"] * 3 + [" "]
    assert tm.example_scores("exact_match", predictions, references) == [100.0, 100.0, 0.0, 100.0]


# ---------------------------------------------------------------------------------------------- rouge_l


def test_rouge_l_by_hand_symmetric_case():
    # prediction tokens: the cat sat on the mat (6)   reference tokens: the cat lay on a mat (6)
    # LCS = the, cat, on, mat -> 4;  P = 4/6, R = 4/6, F = 2PR/(P+R) = 2/3
    [score] = tm.example_scores("rouge_l", ["The cat sat on the mat."], ["the cat lay on a mat"])
    assert score == pytest.approx(200 / 3)


def test_rouge_l_by_hand_asymmetric_case():
    # prediction: police killed the gunman (4)   reference: the gunman was killed by police (6)
    # "police killed" is out of order in the reference; LCS = "the gunman" -> 2
    # P = 2/4 = 0.5, R = 2/6 = 1/3, F = 2 * (1/6) / (5/6) = 0.4
    [score] = tm.example_scores("rouge_l", ["police killed the gunman"], ["the gunman was killed by police"])
    assert score == pytest.approx(40.0)


def test_rouge_l_tokeniser_and_lcs():
    assert tm.rouge_tokens("Don't STOP-me, 2x!") == ["don", "t", "stop", "me", "2x"]
    assert tm.rouge_tokens("Zürich größer") == ["zürich", "größer"]  # non-ASCII letters are kept
    assert tm.lcs_length("abcbdab", "bdcaba") == 4  # the textbook example (e.g. "bcba")
    assert tm.lcs_length([], ["a"]) == 0


def test_rouge_l_edges():
    scores = tm.example_scores("rouge_l", ["same words here", "", "...", "x"], ["Same words, here!", "a", "a", ""])
    assert scores == [100.0, 0.0, 0.0, 0.0]


def test_multiple_references_take_the_best():
    # "the cat sat" vs "a dog": LCS 0;  vs "the cat sat down": LCS 3, P = 1, R = 3/4, F = 6/7
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
