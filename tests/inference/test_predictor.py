import numpy as np
import pytest

from moerec import MoerecError
from tests.helpers import assert_same_recommendation


def test_recommendations_exclude_the_history_and_are_sorted(predictor, tiny_dataset):
    history = tiny_dataset.sequences[0]
    rec = predictor.recommend([history], k=10)[0]
    assert len(rec.items) == 10
    assert rec.scores == sorted(rec.scores, reverse=True)
    seen = set(tiny_dataset.vocab.decode_items(history.tolist()))
    assert not seen & set(rec.items)


def test_each_moe_layer_reports_the_experts_of_the_scoring_position(predictor, tiny_dataset):
    rec = predictor.recommend([tiny_dataset.sequences[1]], k=5)[0]
    assert [use.layer for use in rec.experts] == [0, 1]
    for use in rec.experts:
        assert len(use.experts) == 2
        assert len(set(use.experts)) == 2
        assert sum(use.weights) == pytest.approx(1.0, abs=1e-3)


def test_batched_and_single_requests_agree(predictor, tiny_dataset):
    histories = [tiny_dataset.sequences[u] for u in range(5)]
    batched = predictor.recommend(histories, k=5)
    for history, rec in zip(histories, batched, strict=True):
        assert_same_recommendation(predictor.recommend([history], k=5)[0], rec)


def test_unknown_items_are_reported_not_fatal(predictor, tiny_dataset):
    known = tiny_dataset.vocab.item_ids[:2]
    encoded, unknown = predictor.encode([known[0], "no-such-item", known[1]])
    assert encoded.tolist() == [1, 2]
    assert unknown == ["no-such-item"]


def test_an_empty_history_is_a_clear_error(predictor):
    with pytest.raises(MoerecError, match="at least one item"):
        predictor.recommend([np.array([], dtype=np.int64)])


def test_k_larger_than_what_is_left_returns_only_real_items(predictor, tiny_dataset):
    everything = np.arange(1, tiny_dataset.num_items + 1)
    rec = predictor.recommend([everything[:-3]], k=50)[0]
    assert len(rec.items) == 3
