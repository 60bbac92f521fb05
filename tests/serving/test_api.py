"""Every route through real HTTP, on the embedded default and on PostgreSQL + Redis."""

from __future__ import annotations

import uuid

import pytest


def user_with_history(tiny_dataset, index: int = 0) -> tuple[str, list[str]]:
    user = tiny_dataset.vocab.user_ids[index]
    history = tiny_dataset.vocab.decode_items(tiny_dataset.sequences[index].tolist())
    return str(user), history


def test_a_user_gets_ranked_recommendations_without_seen_items(service, tiny_dataset):
    user, history = user_with_history(tiny_dataset, 0)
    with service.client(user) as http:
        r = http.get(f"/v1/users/{user}/recommendations", params={"k": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == user
    assert len(body["items"]) == 7
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert not {i["item_id"] for i in body["items"]} & set(history)
    assert body["model_version"] == "tiny/v0001"
    assert body["fallback"] is False
    assert body["history_length"] == min(len(history), 20)
    assert [e["layer"] for e in body["experts"]] == [0, 1]
    assert all(len(e["experts"]) == 2 for e in body["experts"])
    assert r.headers["X-Request-ID"]
    assert int(r.headers["X-RateLimit-Remaining"]) >= 0


def test_the_service_answers_what_the_predictor_answers(service, tiny_dataset):
    user, _ = user_with_history(tiny_dataset, 3)
    predictor = service.services.models.current.predictor
    expected = predictor.recommend([tiny_dataset.sequences[3]], k=5)[0]
    with service.client(user) as http:
        body = http.get(f"/v1/users/{user}/recommendations", params={"k": 5}).json()
    assert [i["item_id"] for i in body["items"]] == expected.items


def test_the_second_identical_request_is_a_cache_hit(service, tiny_dataset):
    user, _ = user_with_history(tiny_dataset, 1)
    with service.client(user) as http:
        first = http.get(f"/v1/users/{user}/recommendations", params={"k": 4}).json()
        second = http.get(f"/v1/users/{user}/recommendations", params={"k": 4}).json()
        other_k = http.get(f"/v1/users/{user}/recommendations", params={"k": 5}).json()
    assert first["cached"] is False
    assert second["cached"] is True
    assert second["items"] == first["items"]
    assert other_k["cached"] is False  # parameters are part of the key


def test_an_event_changes_the_next_recommendation_at_once(service, tiny_dataset):
    user, history = user_with_history(tiny_dataset, 2)
    with service.client(user) as http:
        before = http.get(f"/v1/users/{user}/recommendations", params={"k": 10}).json()
        http.get(f"/v1/users/{user}/recommendations", params={"k": 10})  # now cached
        clicked = before["items"][0]["item_id"]
        r = http.post(
            "/v1/events",
            json={"user_id": user, "item_id": clicked, "event_type": "click",
                  "idempotency_key": f"test-{uuid.uuid4().hex}"},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        after = http.get(f"/v1/users/{user}/recommendations", params={"k": 10}).json()
    assert after["cached"] is False  # the event invalidated the cached answer
    assert clicked not in {i["item_id"] for i in after["items"]}  # now part of the history
    assert after["history_length"] == min(len(history) + 1, 20)
    assert after["items"] != before["items"]


def test_events_are_stored_once_per_idempotency_key(service, tiny_dataset):
    user, _ = user_with_history(tiny_dataset, 4)
    key = f"retry-{uuid.uuid4().hex}"
    event = {"user_id": user, "item_id": "7", "event_type": "view", "idempotency_key": key}
    with service.client(user) as http:
        first = http.post("/v1/events", json=event)
        again = http.post("/v1/events", json=event)
        changed = http.post("/v1/events", json={**event, "item_id": "8"})
        by_header = http.post(
            "/v1/events",
            json={k: v for k, v in event.items() if k != "idempotency_key"},
            headers={"Idempotency-Key": key},
        )
        history = http.get(f"/v1/users/{user}/history", params={"limit": 500}).json()
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert again.json()["id"] == first.json()["id"]
    assert changed.status_code == 409
    assert changed.json()["error"]["code"] == "idempotency_key_reused"
    assert by_header.status_code == 200  # same key, same payload: the stored event
    assert [e["idempotency_key"] for e in history["events"]].count(key) == 1


def test_history_is_paginated_newest_first(service, tiny_dataset):
    user, history = user_with_history(tiny_dataset, 5)
    with service.client(user) as http:
        page = http.get(f"/v1/users/{user}/history", params={"limit": 3}).json()
        rest = http.get(
            f"/v1/users/{user}/history", params={"limit": 500, "before": page["next_before"]}
        ).json()
    events = page["events"] + rest["events"]
    assert len(page["events"]) == 3
    assert [e["item_id"] for e in reversed(events)] == history
    assert rest["next_before"] is None


def test_anonymous_history_with_candidates_and_exclusions(service, tiny_dataset):
    _, history = user_with_history(tiny_dataset, 6)
    pool = [str(i) for i in range(1, 60)]
    with service.client("anon-caller") as http:
        full = http.post("/v1/recommendations", json={"history": history, "k": 20}).json()
        banned = [full["items"][0]["item_id"]]
        restricted = http.post(
            "/v1/recommendations",
            json={"history": history, "k": 5, "candidates": pool, "exclude": banned},
        ).json()
    assert full["user_id"] is None
    items = [i["item_id"] for i in restricted["items"]]
    assert set(items) <= set(pool) - set(banned) - set(history)


def test_unknown_history_items_are_reported_not_fatal(service, tiny_dataset):
    _, history = user_with_history(tiny_dataset, 7)
    with service.client("anon-caller") as http:
        r = http.post("/v1/recommendations", json={"history": [*history, "no-such-item"]})
    assert r.status_code == 200
    assert r.json()["unknown_items"] == ["no-such-item"]


def test_a_new_user_gets_the_popularity_fallback(service):
    with service.client("brand-new-user") as http:
        r = http.get("/v1/users/brand-new-user/recommendations", params={"k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["fallback"] is True
    assert len(body["items"]) == 5
    counts = [i["score"] for i in body["items"]]
    assert counts == sorted(counts, reverse=True)


def test_scores_follow_the_asked_order_and_match_the_ranking(service, tiny_dataset):
    user, _ = user_with_history(tiny_dataset, 8)
    with service.client(user) as http:
        ranked = http.get(f"/v1/users/{user}/recommendations", params={"k": 3}).json()
        asked = [i["item_id"] for i in reversed(ranked["items"])] + ["missing-item"]
        r = http.post("/v1/scores", json={"user_id": user, "items": asked})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [s["item_id"] for s in body["scores"]] == asked[:3]
    assert body["unknown_items"] == ["missing-item"]
    by_item = {i["item_id"]: i["score"] for i in ranked["items"]}
    for s in body["scores"]:
        assert s["score"] == pytest.approx(by_item[s["item_id"]], abs=1e-4)


def test_catalogue_item_and_search(service):
    with service.client("u1") as http:
        item = http.get("/v1/items/5")
        missing = http.get("/v1/items/no-such-item")
        found = http.get("/v1/items", params={"q": "5"})
    assert item.status_code == 200
    assert item.json() == {"item_id": "5", "title": None, "known_to_model": True}
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "item_not_found"
    assert found.status_code == 200
    assert "5" in {i["item_id"] for i in found.json()["items"]}


def test_health_readiness_and_metrics_need_no_token(service, tiny_dataset):
    user, _ = user_with_history(tiny_dataset, 9)
    with service.client(user) as http:
        http.get(f"/v1/users/{user}/recommendations")
    with service.client(None) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
        text = http.get("/metrics").text
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"model": "ok", "database": "ok", "cache": "ok"}
    assert 'moerec_model_info{arm="control",experts="4",name="tiny"' in text
    assert 'route="/v1/users/{user_id}/recommendations"' in text
    assert "moerec_expert_activations_total{" in text
    assert "moerec_batch_size_bucket" in text
    assert 'moerec_cache_requests_total{result="miss"}' in text


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("GET", "/v1/users/u1/recommendations?k=0", None, "k"),
        ("GET", "/v1/users/u1/recommendations?k=many", None, "k"),
        ("GET", "/v1/users/bad%20id/recommendations", None, "user_id"),
        ("POST", "/v1/recommendations", {}, "body"),
        ("POST", "/v1/recommendations", {"user_id": "u1", "history": ["1"]}, "body"),
        ("POST", "/v1/recommendations", {"history": []}, "body"),
        ("POST", "/v1/recommendations", {"history": ["1"], "surprise": 1}, "surprise"),
        ("POST", "/v1/scores", {"history": ["1"], "items": []}, "items"),
        ("POST", "/v1/events", {"user_id": "u1", "item_id": "1", "event_type": "eat"}, "event"),
        ("POST", "/v1/events",
         {"user_id": "u1", "item_id": "1", "event_type": "view", "timestamp": "3000-01-01"},
         "timestamp"),
        ("POST", "/v1/events",
         {"user_id": "u1", "item_id": "1", "event_type": "view", "idempotency_key": "short"},
         "idempotency_key"),
    ],
)  # fmt: skip
def test_invalid_input_gets_422_with_a_message(service, method, path, body, field):
    with service.client("u1", "recommend", "events:write") as http:
        r = http.request(method, path, json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request"
    assert field.split(".")[0] in error["message"] or field == "body"


def test_configured_limits_answer_422(service):
    big = service.settings.max_k + 1
    with service.client("u1") as http:
        r = http.post("/v1/recommendations", json={"history": ["1"], "k": big})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "limit_exceeded"


def test_malformed_json_and_unknown_routes_are_json_errors(service):
    with service.client("u1") as http:
        bad = http.post(
            "/v1/recommendations",
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        )
        missing = http.get("/v1/nothing-here")
        wrong_method = http.delete("/v1/recommendations")
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "invalid_request"
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert wrong_method.status_code == 405


def test_an_oversized_body_is_refused_with_413(service):
    with service.client("u1") as http:
        r = http.post(
            "/v1/recommendations",
            content=b'{"history": ["' + b"1" * 2_000_000 + b'"]}',
            headers={"Content-Type": "application/json"},
        )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "body_too_large"
