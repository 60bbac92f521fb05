"""Interactions collected from a stream of events (the service's event table)."""

from datetime import UTC, datetime, timedelta

import pytest

from moerec.data import DataError, InteractionsBuilder, dataset_from_interactions

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def test_events_become_interactions_in_time_order_with_ties_kept_in_arrival_order():
    builder = InteractionsBuilder("events")
    builder.add("u1", "b", T0 + timedelta(seconds=2))
    builder.add("u1", "a", T0 + timedelta(microseconds=1))
    builder.add("u2", "c", T0)
    builder.add("u2", "a", T0)  # same time as the previous one: arrival order decides
    builder.add("u1", "c", T0 + timedelta(seconds=2))

    interactions = builder.build()

    assert len(builder) == len(interactions) == 5
    assert interactions.users.tolist() == ["u1", "u1", "u2", "u2", "u1"]
    assert interactions.timestamps[1] - interactions.timestamps[2] == 1  # microseconds
    dataset = dataset_from_interactions(interactions)
    rows = {u: dataset.vocab.decode_items(dataset.sequences[i].tolist())
            for i, u in enumerate(dataset.vocab.user_ids)}  # fmt: skip
    assert rows == {"u1": ["a", "b", "c"], "u2": ["c", "a"]}


def test_no_events_build_empty_interactions_that_training_refuses():
    interactions = InteractionsBuilder("events").build()
    assert len(interactions) == 0
    with pytest.raises(DataError, match="there are no interactions"):
        dataset_from_interactions(interactions)


def test_a_time_without_timezone_is_refused():
    with pytest.raises(DataError, match="no timezone"):
        InteractionsBuilder("events").add("u", "i", datetime(2024, 1, 1))
