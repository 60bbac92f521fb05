"""A model with time context, served: stored event times and the request time reach it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from moerec.data.time_context import gap_ids
from moerec.serving.service import Subject, time_key
from tests.serving.conftest import BACKENDS, LiveService, live_service


@pytest.fixture(scope="module", params=BACKENDS)
def timed_service(request, tmp_path_factory, rails_timed, rails) -> Iterator[LiveService]:
    tmp = tmp_path_factory.mktemp(f"timed-{request.param}")
    yield from live_service(request.param, tmp, request, rails_timed, rails)


def _post_history(service: LiveService, user: str, last: datetime) -> None:
    """Items 1, 2, 3 (positions 0-2 of the first rail), 20 s apart, the last at ``last``, and
    a dismissal between them, which is no part of the history or of its times."""
    events = [("1", "view", 40), ("2", "view", 20), ("33", "dismiss", 10), ("3", "view", 0)]
    with service.client(user) as http:
        for item, kind, before in events:
            at = last - timedelta(seconds=before)
            r = http.post(
                "/v1/events",
                json={"user_id": user, "item_id": item, "event_type": kind,
                      "timestamp": at.isoformat(), "idempotency_key": uuid.uuid4().hex},
            )  # fmt: skip
            assert r.status_code == 201, r.text


def test_the_gap_since_the_last_stored_event_decides_the_rail(timed_service):
    now = datetime.now(UTC)
    back_soon, back_later = f"soon-{uuid.uuid4().hex[:8]}", f"later-{uuid.uuid4().hex[:8]}"
    _post_history(timed_service, back_soon, now - timedelta(seconds=5))
    _post_history(timed_service, back_later, now - timedelta(days=3))
    answers = {}
    for user in (back_soon, back_later):
        with timed_service.client(user) as http:
            r = http.get(f"/v1/users/{user}/recommendations", params={"k": 1})
        assert r.status_code == 200, r.text
        answers[user] = r.json()["items"][0]["item_id"]
    # The same three items: a user back within seconds stays on the rail, one back after days
    # switches, as in training. Only the stored times and the request time tell them apart.
    assert answers == {back_soon: "4", back_later: "24"}


def test_anonymous_histories_are_answered_without_history_times(timed_service):
    with timed_service.client("anyone", "recommend:any") as http:
        r = http.post("/v1/recommendations", json={"history": ["1", "2", "3"], "k": 3})
    assert r.status_code == 200, r.text
    assert len(r.json()["items"]) == 3


def test_the_cache_key_holds_the_requests_gap_and_hour(timed_service):
    predictor = timed_service.services.models.current.predictor
    last = 1_700_006_400.0  # 2023-11-15 00:00 UTC
    stored = Subject("u", ["1", "2", "unknown"], frozenset(), "3", occurred_at=[
        "2023-11-14 23:58:00.000000", datetime.fromtimestamp(last, UTC),
        "2023-11-15 00:01:00.000000",
    ])  # fmt: skip
    # The gap runs from the last item the model knows (90 s, not 30 s from the unknown one);
    # stored times come as SQLite text or as datetimes.
    assert time_key(predictor, stored, last + 90) == [int(gap_ids(np.asarray([90]))[0]), 1]
    anonymous = Subject(None, ["1", "2"], frozenset(), "digest")
    assert time_key(predictor, anonymous, last + 7200) == [0, 3]  # no gap; 02:00 UTC
