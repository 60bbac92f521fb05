"""Property tests: any JSON body either validates or fails with a ValidationError, nothing else."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from moerec.serving.schemas import (
    ID_PATTERN,
    EventIn,
    RecommendationRequest,
    ReloadRequest,
    ScoreRequest,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=20,
)
ids = st.from_regex(ID_PATTERN, fullmatch=True)
field_values = st.one_of(json_values, ids, st.lists(ids, max_size=5))


def bodies(fields: list[str]) -> st.SearchStrategy[dict]:
    return st.dictionaries(st.sampled_from([*fields, "unexpected"]), field_values, max_size=6)


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (RecommendationRequest,
         ["user_id", "history", "k", "candidates", "exclude", "exclude_history", "context",
          "assignment_key"]),
        (ScoreRequest, ["user_id", "history", "items", "assignment_key"]),
        (EventIn, ["user_id", "item_id", "event_type", "timestamp", "idempotency_key"]),
        (ReloadRequest, ["path", "arm"]),
    ],
)  # fmt: skip
def test_any_body_validates_or_fails_cleanly(model: type[BaseModel], fields: list[str]):
    @settings(max_examples=300, deadline=None)
    @given(bodies(fields))
    def check(body: dict) -> None:
        try:
            parsed = model.model_validate(body)
        except ValidationError as exc:
            problems = exc.errors(include_url=False, include_context=False)
        else:
            problems = None
            # a valid request survives a JSON round trip unchanged
            assert model.model_validate_json(parsed.model_dump_json()) == parsed
        if problems is not None:  # every failure says which field and why, in JSON
            assert problems
            json.dumps(problems, default=str)

    check()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_ids_are_bounded_printable_and_separator_free(value: str):
    try:
        RecommendationRequest(user_id=value)
    except ValidationError:
        return
    assert 1 <= len(value) <= 128
    assert value.isascii()
    assert not any(ch in value for ch in " /\\?#%\"'\n\t")


@given(ids, ids)
def test_exactly_one_of_user_and_history(user: str, item: str):
    RecommendationRequest(user_id=user)
    RecommendationRequest(history=[item])
    with pytest.raises(ValidationError, match="exactly one"):
        RecommendationRequest(user_id=user, history=[item])
    with pytest.raises(ValidationError, match="exactly one"):
        RecommendationRequest()
