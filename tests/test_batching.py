"""Batching: dynamic padding, length grouping, seeded determinism, model-ready keys."""

import datasets
import numpy as np
import pytest
import torch

from grain.batching import batch_indices, collate, feature_lengths, make_loader


class _Tok:
    pad_token_id = 7


def _features(lengths, token_labels=False, float_labels=False):
    ids = [[100 + n] * n for n in lengths]
    labels = [[1] * n for n in lengths] if token_labels else [float(i) if float_labels else i % 2
                                                             for i in range(len(lengths))]
    return datasets.Dataset.from_dict({"input_ids": ids, "token_type_ids": [[0] * n for n in lengths],
                                       "labels": labels, "word_ids": [[0] * n for n in lengths]})


def test_collate_pads_to_the_longest_row():
    batch = collate({"input_ids": [[5, 6, 7], [8]], "token_type_ids": [[0, 0, 1], [0]],
                     "labels": [[1, -100, 2], [3]]}, pad_token_id=9)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0]]
    assert batch["labels"].tolist() == [[1, -100, 2], [3, -100, -100]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_collate_label_dtypes_and_qa_positions():
    assert collate({"input_ids": [[1]], "labels": [2.5]})["labels"].dtype == torch.float32
    assert collate({"input_ids": [[1]], "labels": [2]})["labels"].dtype == torch.long
    qa = collate({"input_ids": [[1, 2]], "start_positions": [1], "end_positions": [1], "offset_mapping": [[[0, 1]]]})
    assert set(qa) == {"input_ids", "attention_mask", "start_positions", "end_positions"}


def test_loader_yields_model_keys_only_in_dataset_order_without_shuffle():
    features = _features([3, 1, 4, 1, 5])
    batches = list(make_loader(features, _Tok(), batch_size=2))
    assert set(batches[0]) == {"input_ids", "attention_mask", "token_type_ids", "labels"}  # no word_ids
    assert [b["input_ids"][:, 0].tolist() for b in batches] == [[103, 101], [104, 101], [105]]
    assert batches[0]["input_ids"][1].tolist() == [101, 7, 7]


def test_every_row_once_per_epoch_and_deterministic_for_a_seed():
    lengths = np.random.default_rng(1).integers(1, 60, size=1000)
    for group in (False, True):
        a = batch_indices(lengths, 32, shuffle=True, group_by_length=group, seed=3)
        b = batch_indices(lengths, 32, shuffle=True, group_by_length=group, seed=3)
        c = batch_indices(lengths, 32, shuffle=True, group_by_length=group, seed=4)
        assert a == b and a != c
        assert sorted(i for batch in a for i in batch) == list(range(1000))


def test_length_grouping_cuts_padding():
    # lengths like SST-2's (mean 13, long tail): grouping should pad far less than random batches
    lengths = np.minimum(np.random.default_rng(0).geometric(1 / 13, size=5000) + 2, 66)

    def padded(batches):
        return sum(len(b) * lengths[b].max() for b in map(np.asarray, batches)) / len(lengths)

    grouped = padded(batch_indices(lengths, 32, shuffle=True, group_by_length=True, seed=0))
    random_ = padded(batch_indices(lengths, 32, shuffle=True, group_by_length=False, seed=0))
    assert grouped < 0.6 * random_
    assert grouped < 1.3 * lengths.mean()


def test_each_pass_draws_a_new_order_reproducibly():
    features = _features(list(range(1, 41)), float_labels=True)  # labels = row numbers
    first, second = make_loader(features, _Tok(), 4, shuffle=True, seed=5), make_loader(features, _Tok(), 4,
                                                                                        shuffle=True, seed=5)
    epoch0 = [b["labels"].tolist() for b in first]
    epoch1 = [b["labels"].tolist() for b in first]
    assert epoch0 != epoch1
    assert epoch0 == [b["labels"].tolist() for b in second]
    second.set_epoch(0)
    assert epoch0 == [b["labels"].tolist() for b in second]
    assert len(first) == 10


def test_feature_lengths_respect_selection():
    features = _features([3, 1, 4, 1, 5]).select([4, 0])
    assert feature_lengths(features).tolist() == [5, 3]


def test_token_labels_pad_with_ignore_index():
    batch = next(iter(make_loader(_features([2, 4], token_labels=True), _Tok(), 2)))
    assert batch["labels"].tolist() == [[1, 1, -100, -100], [1, 1, 1, 1]]


def test_bad_batch_size():
    with pytest.raises(ValueError):
        batch_indices([1, 2], 0)
