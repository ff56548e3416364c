"""Metrics on hand-worked examples: GLUE scores, SQuAD v1.1 normalisation/EM/F1, seqeval entity boundaries."""

import math

import pytest

from grain.errors import GrainError
from grain.metrics import glue_scores, metric_path, ner_scores, squad_scores
from grain.metrics import load as load_metric
from grain.metrics.classification import binary_f1, matthews_correlation, pearson, spearman
from grain.metrics.squad_v1 import exact_match, normalize_answer, token_f1

# -- GLUE ------------------------------------------------------------------------------------------
# predictions 1 0 1 1 against references 1 1 1 0: TP 2 (rows 0, 2), FN 1 (row 1), FP 1 (row 3), TN 0
PRED, GOLD = [1, 0, 1, 1], [1, 1, 1, 0]


def test_accuracy_and_f1_hand_worked():
    scores = glue_scores("mrpc", PRED, GOLD)
    assert scores["accuracy"] == pytest.approx(2 / 4)
    assert scores["f1"] == pytest.approx(2 / 3)  # precision 2/3, recall 2/3


def test_matthews_hand_worked():
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (0 - 1) / sqrt(3*3*1*1)
    assert glue_scores("cola", PRED, GOLD)["matthews_correlation"] == pytest.approx(-1 / 3)
    # TP 1, FP 1, TN 2, FN 0: (2 - 0) / sqrt(2*1*3*2)
    assert matthews_correlation([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(2 / math.sqrt(12))


def test_correlations_hand_worked():
    # x = 1 2 3, y = 1 2 4: cov sum 3, |dx| sqrt(2), |dy| sqrt(42)/3 -> 9 / sqrt(84)
    assert pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(9 / math.sqrt(84))
    # ranks 1 2 3 vs 3 1 2: sum d^2 = 6 -> 1 - 6*6 / (3*(9-1)) = -0.5
    assert spearman([1, 2, 3], [3, 1, 2]) == pytest.approx(-0.5)
    scores = glue_scores("stsb", [0.5, 1.5, 2.5], [1.0, 2.0, 4.0])
    assert set(scores) == {"pearson", "spearmanr"} and scores["spearmanr"] == pytest.approx(1.0)


def test_constant_predictor_scores_zero_not_nan():
    assert pearson([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0
    assert spearman([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0
    assert matthews_correlation([1, 1, 1], [1, 0, 1]) == 0.0
    assert binary_f1([0, 0, 0], [1, 0, 1]) == 0.0


def test_glue_rejects_unknown_config_and_length_mismatch():
    with pytest.raises(GrainError, match="known: cola"):
        glue_scores("nope", [1], [1])
    with pytest.raises(GrainError, match="2 predictions for 1 references"):
        glue_scores("sst2", [1, 0], [1])


# -- SQuAD v1.1 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, normalised", [
    ("The Cat", "cat"),
    ("  a  dog,   an apple. ", "dog apple"),
    ("Theory of the Anthem", "theory of anthem"),  # articles only as whole words
    ("the-end", "theend"),  # punctuation is deleted, not replaced by a space
    ("Anne's", "annes"),
    ("A", ""),
    ("$1,000!", "1000"),
    ("24–10", "24–10"),  # the en dash is not ASCII punctuation: kept, as in the official script
    ("THE\tBroncos\n", "broncos"),
])
def test_squad_normalisation(text, normalised):
    assert normalize_answer(text) == normalised


def test_squad_em_and_f1_hand_worked():
    assert exact_match("The Denver Broncos", "Denver Broncos")
    assert not exact_match("Denver", "Denver Broncos")
    # [big, red, dog] vs [red, dog, barks]: 2 shared -> P = R = 2/3
    assert token_f1("the big red dog", "red dog barks") == pytest.approx(2 / 3)
    # repeated tokens count once per match: P = 1/2, R = 1
    assert token_f1("dog dog", "dog") == pytest.approx(2 / 3)
    assert token_f1("cat", "dog") == 0.0
    assert token_f1("the", "a") == 0.0  # both normalise to empty: 0 under the v1.1 rule


def test_squad_scores_take_the_max_over_gold_answers():
    predictions = {"q1": "Broncos", "q2": "in 1990", "q3": "red dog"}
    references = {"q1": ["Denver Broncos", "the Broncos"], "q2": ["1990s"], "q3": ["big red dog"]}
    scores = squad_scores(predictions, references)
    # q1: EM 1 F1 1 (second answer); q2: 0 0; q3: EM 0, F1 = 2*1*(2/3)/(1+2/3) = 0.8
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * 1.8 / 3)


def test_squad_missing_prediction_scores_zero():
    assert squad_scores({}, {"q": ["x"]}) == {"exact_match": 0.0, "f1": 0.0}


# -- seqeval ---------------------------------------------------------------------------------------
def test_seqeval_entity_boundaries_hand_worked():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "O", "O", "B-LOC"]]  # PER cut short: only LOC is right
    scores = ner_scores(pred, gold)
    assert scores["overall_precision"] == pytest.approx(1 / 2)
    assert scores["overall_recall"] == pytest.approx(1 / 2)
    assert scores["overall_f1"] == pytest.approx(1 / 2)
    assert scores["overall_accuracy"] == pytest.approx(3 / 4)  # token level
    assert scores["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "number": 1}
    assert scores["LOC"]["f1"] == 1.0


def test_seqeval_type_and_adjacency():
    # right span, wrong type: no credit; B B is two entities, B I is one
    assert ner_scores([["B-ORG", "I-ORG"]], [["B-PER", "I-PER"]])["overall_f1"] == 0.0
    two = ner_scores([["B-PER", "I-PER"]], [["B-PER", "B-PER"]])
    assert two["PER"]["number"] == 2 and two["overall_recall"] == 0.0


def test_seqeval_conlleval_versus_strict_iob2():
    gold = [["O", "I-PER", "I-PER", "O"]]  # conlleval reads the I- after O as the start of an entity
    pred = [["O", "B-PER", "I-PER", "O"]]
    assert ner_scores(pred, gold)["overall_f1"] == 1.0
    assert ner_scores(pred, gold, mode="strict", scheme="IOB2")["overall_f1"] == 0.0


def test_seqeval_rejects_ragged_input():
    with pytest.raises(GrainError):
        ner_scores([["O"]], [["O", "O"]])


# -- the evaluate modules, loaded by path ----------------------------------------------------------
def test_evaluate_modules_load_by_path_and_agree_with_the_functions():
    assert metric_path("glue").endswith("glue.py")
    glue = load_metric("glue", "mrpc").compute(predictions=PRED, references=GOLD)
    assert glue == pytest.approx(glue_scores("mrpc", PRED, GOLD))
    squad = load_metric("squad").compute(
        predictions=[{"id": "q1", "prediction_text": "Broncos"}, {"id": "q2", "prediction_text": "x"}],
        references=[{"id": "q1", "answers": {"text": ["Denver Broncos", "the Broncos"], "answer_start": [0, 5]}},
                    {"id": "q2", "answers": {"text": ["y"], "answer_start": [0]}}])
    assert squad == {"exact_match": 50.0, "f1": 50.0}
    gold, pred = [["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "O", "O", "B-LOC"]]
    assert load_metric("seqeval").compute(predictions=pred, references=gold)["overall_f1"] == pytest.approx(0.5)


def test_unknown_metric_module():
    with pytest.raises(GrainError, match="grain ships glue, squad, seqeval"):
        metric_path("bleu")
