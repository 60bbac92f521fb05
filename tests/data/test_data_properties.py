"""Property tests: well-formed files round-trip, garbage only ever gives DataFormatError."""

from __future__ import annotations

import gzip
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moerec.data import FORMATS, DataFormatError, read_interactions

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
token = st.text(
    alphabet=string.ascii_letters + string.digits + "-_.:|,;'\"#", min_size=1, max_size=6
)
histories = st.dictionaries(token, st.lists(token, min_size=1, max_size=8), min_size=1, max_size=8)


def per_user(interactions) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    order = sorted(range(len(interactions)), key=lambda row: interactions.timestamps[row])
    for row in order:
        grouped.setdefault(str(interactions.users[row]), []).append(str(interactions.items[row]))
    return grouped


@SETTINGS
@given(histories=histories, gzipped=st.booleans())
def test_pairs_files_round_trip(tmp_path: Path, histories: dict[str, list[str]], gzipped: bool):
    text = "".join(f"{user} {item}\n" for user, items in histories.items() for item in items)
    path = tmp_path / ("pairs.txt.gz" if gzipped else "pairs.txt")
    path.write_bytes(gzip.compress(text.encode()) if gzipped else text.encode())
    data = read_interactions(path, format="pairs")
    assert len(data) == sum(len(items) for items in histories.values())
    assert per_user(data) == histories


@SETTINGS
@given(histories=histories)
def test_sequences_files_round_trip(tmp_path: Path, histories: dict[str, list[str]]):
    path = tmp_path / "seq.txt"
    path.write_text("".join(f"{user} {' '.join(items)}\n" for user, items in histories.items()))
    data = read_interactions(path, format="sequences")
    assert len(data) == sum(len(items) for items in histories.values())
    assert per_user(data) == histories


numeric_histories = st.dictionaries(
    st.integers(1, 10**6).map(str),
    st.lists(st.integers(1, 10**9).map(str), min_size=1, max_size=6),
    min_size=1,
    max_size=6,
)


@SETTINGS
@given(histories=numeric_histories, pairs=st.booleans())
def test_numeric_files_are_detected_and_round_trip(
    tmp_path: Path, histories: dict[str, list[str]], pairs: bool
):
    if pairs:
        text = "".join(f"{user} {item}\n" for user, items in histories.items() for item in items)
    else:
        text = "".join(f"{user} {' '.join(items)}\n" for user, items in histories.items())
    path = tmp_path / "data.txt"
    path.write_text(text)
    assert per_user(read_interactions(path)) == histories


garbage = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.lists(
        st.sampled_from(["1", "::", "\t", " ", ",", "\n", "\r", "user", "item", "x", '"', "\xe9"]),
        max_size=40,
    ).map(lambda parts: "".join(parts).encode("utf-8")),
)


@pytest.mark.parametrize("name", ["data.txt", "ratings.csv", "u.data", "x.parquet", "r.dat.gz"])
@SETTINGS
@given(content=garbage, fmt=st.sampled_from(("auto", *FORMATS)))
def test_garbage_only_raises_data_format_error(tmp_path: Path, name: str, content: bytes, fmt: str):
    path = tmp_path / name
    path.write_bytes(gzip.compress(content) if name.endswith(".gz") else content)
    try:
        data = read_interactions(path, format=fmt)
    except DataFormatError as error:
        message = str(error)
    else:
        assert len(data) > 0
        assert len(data.items) == len(data.users) == len(data.timestamps)
        return
    assert name in message


cells = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(-1e6, 1e6).map(str),
    st.sampled_from(["", " 5", "+5", "1.", ".5", "x", "07", "2020-01-01T10:00:00Z", "2020-01-01"]),
)


@SETTINGS
@given(table=st.lists(st.tuples(token, token, cells, cells), min_size=1, max_size=8))
def test_fast_and_exact_parsers_agree(tmp_path: Path, table: list[tuple[str, str, str, str]]):
    """pyarrow's fast path must accept exactly what the line-by-line parser accepts."""
    from moerec.data._tables import _exact_csv, read_csv
    from moerec.data._text_formats import ML_100K, _exact_columns, build_at_lines, read_layout

    for layout_text, fast, exact in (
        (
            "".join("\t".join(row) + "\n" for row in table),
            lambda raw: read_layout("f", raw, ML_100K),
            lambda text: build_at_lines("f", *_exact_columns("f", text, ML_100K, "")),
        ),
        (
            "user,item,rating,timestamp\n" + "".join(",".join(row) + "\n" for row in table),
            lambda raw: read_csv("f", raw),
            lambda text: build_at_lines(
                "f",
                *_exact_csv(
                    "f",
                    text,
                    ",",
                    ["user", "item", "rating", "timestamp"],
                    {"user": 0, "item": 1, "rating": 2, "timestamp": 3},
                ),
                "any",
            ),
        ),
    ):
        outcomes = []
        for parse, argument in ((fast, layout_text.encode()), (exact, layout_text)):
            try:
                data = parse(argument)
                outcomes.append(
                    (
                        data.users.tolist(),
                        data.items.tolist(),
                        data.timestamps.tolist(),
                        data.ratings.tolist(),
                    )
                )
            except DataFormatError as error:
                outcomes.append(str(error))
        assert outcomes[0] == outcomes[1]
