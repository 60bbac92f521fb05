import numpy as np
import pytest

from moerec import MoerecError
from moerec.inference import Query
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


def test_candidates_restrict_the_ranking_to_themselves(predictor, tiny_dataset):
    history = tiny_dataset.sequences[2]
    full = predictor.recommend([history], k=60)[0]
    pool = np.asarray(tiny_dataset.vocab.encode_items(full.items[10:20]))
    rec = predictor.run([Query(history, k=5, candidates=pool)])[0]
    assert rec.items == full.items[10:15]  # the same order as in the full ranking


def test_excluded_items_are_never_recommended(predictor, tiny_dataset):
    history = tiny_dataset.sequences[3]
    top = predictor.recommend([history], k=5)[0]
    banned = np.asarray(tiny_dataset.vocab.encode_items(top.items[:3]))
    rec = predictor.run([Query(history, k=5, exclude=banned)])[0]
    assert not set(top.items[:3]) & set(rec.items)
    assert rec.items[:2] == top.items[3:5]


def test_scoring_returns_raw_scores_in_the_asked_order_even_for_seen_items(predictor, tiny_dataset):
    history = tiny_dataset.sequences[4]
    unfiltered = predictor.recommend([history], k=predictor.vocab.num_items, exclude_history=False)
    by_item = dict(zip(unfiltered[0].items, unfiltered[0].scores, strict=True))
    asked = [*tiny_dataset.vocab.decode_items(history[:2].tolist()), unfiltered[0].items[7]]
    rec = predictor.run(
        [
            Query(
                history,
                candidates=np.asarray(tiny_dataset.vocab.encode_items(asked)),
                score_only=True,
            )
        ]
    )[0]
    assert rec.items == asked
    assert rec.scores == pytest.approx([by_item[i] for i in asked], abs=1e-5)


def test_a_mixed_batch_answers_each_query_as_if_it_were_alone(predictor, tiny_dataset):
    seqs = tiny_dataset.sequences
    queries = [
        Query(seqs[0], k=3),
        Query(seqs[1], k=8, exclude_history=False),
        Query(seqs[2], k=4, candidates=np.arange(1, 40)),
        Query(seqs[3], candidates=np.asarray([5, 1, 9]), score_only=True),
        Query(seqs[4], k=6, exclude=np.arange(1, 30)),
    ]
    together = predictor.run(queries)
    for query, rec in zip(queries, together, strict=True):
        assert_same_recommendation(predictor.run([query])[0], rec)
