"""ROUGE-1/2/L with rouge-score's conventions, on worked examples computed by hand."""
import pytest

from spanserve_train import rouge


def close(score, precision, recall, fmeasure):
    assert score.precision == pytest.approx(precision, abs=1e-12)
    assert score.recall == pytest.approx(recall, abs=1e-12)
    assert score.fmeasure == pytest.approx(fmeasure, abs=1e-12)


def f1(p, r):
    return 2 * p * r / (p + r)


def test_worked_example():
    target = "The quick brown fox jumps over the lazy dog"
    prediction = "The quick brown dog jumps on the log."
    # tokens: target   the quick brown fox jumps over the lazy dog   (9)
    #         predict. the quick brown dog jumps on the log          (8)
    s = rouge.score(target, prediction)
    # unigrams in common, clipped: the x2, quick, brown, dog, jumps = 6 -> P 6/8, R 6/9
    close(s["rouge1"], 6 / 8, 6 / 9, f1(6 / 8, 6 / 9))
    # bigrams: target has 8, prediction 7; shared: "the quick", "quick brown" = 2
    close(s["rouge2"], 2 / 7, 2 / 8, f1(2 / 7, 2 / 8))
    # LCS: the quick brown jumps the (5): "dog" comes after "the" in the target, so the
    # alternative the quick brown dog is only 4 -> P 5/8, R 5/9
    close(s["rougeL"], 5 / 8, 5 / 9, f1(5 / 8, 5 / 9))
    assert s["rouge1"].fmeasure == pytest.approx(12 / 17)  # 2*6 / (8+9)


def test_argument_order_is_target_then_prediction():
    # target 3 tokens, prediction 6: overlap 3 -> precision 3/6, recall 3/3
    s = rouge.rouge_n("a b c", "a b c d e f", 1)
    close(s, 0.5, 1.0, f1(0.5, 1.0))


def test_tokenization_lowercases_and_splits_on_non_alphanumerics():
    assert rouge.tokenize("Ada's 412 Trees, (in-all)!") == ["ada", "s", "412", "trees", "in",
                                                            "all"]
    close(rouge.rouge_l("HELLO, world", "hello world!"), 1.0, 1.0, 1.0)
    assert rouge.tokenize("café") == ["caf"]  # non-ASCII letters separate tokens, as rouge-score


def test_counts_are_clipped():
    # target "the the the" vs prediction "the": overlap min(3, 1) = 1 -> P 1/1, R 1/3
    close(rouge.rouge_n("the the the", "the", 1), 1.0, 1 / 3, 0.5)
    # and the other way round: P 1/3, R 1/1
    close(rouge.rouge_n("the", "the the the", 1), 1 / 3, 1.0, 0.5)


def test_lcs_is_a_subsequence_not_a_substring():
    assert rouge.lcs_length("a b c d e".split(), "a x c y e".split()) == 3
    assert rouge.lcs_length("a b c".split(), "c b a".split()) == 1
    assert rouge.lcs_length([], ["a"]) == 0
    # target a b c d (4), prediction b d a (3): LCS b d = 2 -> P 2/3, R 2/4
    close(rouge.rouge_l("a b c d", "b d a"), 2 / 3, 0.5, f1(2 / 3, 0.5))


def test_identical_and_disjoint():
    text = "Ada Moss planted 412 young trees on 14 March."
    for s in rouge.score(text, text).values():
        close(s, 1.0, 1.0, 1.0)
    for s in rouge.score(text, "nothing in common here").values():
        close(s, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("target,prediction", [("", ""), ("a b", ""), ("", "a b"),
                                               ("...", "a"), ("a", "!?")])
def test_empty_texts_score_zero(target, prediction):
    for s in rouge.score(target, prediction).values():
        close(s, 0.0, 0.0, 0.0)


def test_one_token_texts_have_no_bigrams():
    close(rouge.rouge_n("a", "a", 2), 0.0, 0.0, 0.0)
    close(rouge.rouge_n("a", "a", 1), 1.0, 1.0, 1.0)


def test_mean_scores():
    a = rouge.score("a b", "a b")          # all 1
    b = rouge.score("a b", "c d")          # all 0
    mean = rouge.mean_scores([a, b])
    for name in ("rouge1", "rouge2", "rougeL"):
        close(mean[name], 0.5, 0.5, 0.5)
    assert rouge.mean_scores([]) == {}
