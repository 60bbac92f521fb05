"""Item side features: the three file formats, the vocabulary mapping and the errors."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from moerec.config import DataConfig
from moerec.data import DataError, DataFormatError, Vocabulary
from moerec.data.dataset import dataset_from_interactions
from moerec.data.features import (
    ML_100K_GENRES,
    detect_feature_format,
    encode_item_features,
    load_item_features,
    read_item_attributes,
)
from moerec.data.interactions import Interactions
from tests.data.conftest import Writer

VOCAB = Vocabulary(item_ids=("1", "2", "3", "10"), user_ids=("u",))


def u_item_line(item: str, genres: set[str], title: str = "A Film (1995)") -> str:
    flags = "|".join("1" if genre in genres else "0" for genre in ML_100K_GENRES)
    return f"{item}|{title}|01-Jan-1995||http://us.imdb.com/M/title-exact?x|{flags}"


# --------------------------------------------------------------------------- formats


def test_item2attributes_json_is_read_with_attribute_ids_as_strings(write: Writer) -> None:
    path = write("Shop_item2attributes.json", json.dumps({"1": [4, 5], "2": [5], "3": []}))
    assert read_item_attributes(path) == {"1": ["4", "5"], "2": ["5"], "3": []}


def test_json_repeated_items_and_attributes_are_merged_not_dropped(write: Writer) -> None:
    # json.loads would keep only the last "1"; both lists must count, each attribute once.
    path = write("attrs.json", '{"1": [4, 5, 4], "2": ["red"], "1": [6, 5]}')
    assert read_item_attributes(path) == {"1": ["4", "5", "6"], "2": ["red"]}


def test_movielens_u_item_genre_flags_become_genre_names(write: Writer) -> None:
    text = "\n".join(
        [
            u_item_line("1", {"Animation", "Children's", "Comedy"}),
            u_item_line("2", {"Action"}, title="A | B"),  # a '|' inside a title
            u_item_line("3", set()),
            "",
        ]
    )
    path = write("u.item", text.encode("latin-1"))
    assert read_item_attributes(path) == {
        "1": ["Animation", "Children's", "Comedy"],
        "2": ["Action"],
        "3": [],
    }


def test_u_item_is_read_as_latin_1(write: Writer) -> None:
    line = u_item_line("1", {"Drama"}, title="Café Society (1995)")
    path = write("u.item", line.encode("latin-1"))  # é is 0xE9, not valid UTF-8
    assert read_item_attributes(path) == {"1": ["Drama"]}


def test_long_csv_with_and_without_header_and_tsv(write: Writer) -> None:
    expected = {"1": ["red", "small"], "10": ["red"]}
    with_header = write("a.csv", "item_id,attribute\n1,red\n1,small\n10,red\n1,red\n")
    assert read_item_attributes(with_header) == expected
    without_header = write("b.csv", "1,red\n1,small\n\n10,red\n")
    assert read_item_attributes(without_header) == expected
    tsv = write("c.tsv", "itemId\tattr\n1\tred\n1\tsmall\n10\tred\n")
    assert read_item_attributes(tsv) == expected


def test_gzip_files_are_read_transparently(write: Writer) -> None:
    path = write("attrs.json.gz", gzip.compress(json.dumps({"1": [4]}).encode()))
    assert read_item_attributes(path) == {"1": ["4"]}


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("attrs.json", "{}", "item2attributes"),
        ("u.item", "", "movielens-genres"),
        ("attrs.csv", "", "csv"),
        ("attrs.txt", '  {"1": [2]}', "item2attributes"),
        ("movies.txt", u_item_line("1", {"War"}), "movielens-genres"),
        ("attrs.txt", "1,red\n", "csv"),
    ],
)
def test_format_detection_by_name_then_content(
    write: Writer, name: str, content: str, expected: str
) -> None:
    assert detect_feature_format(write(name, content)) == expected


# --------------------------------------------------------------------------- vocabulary


def test_raw_ids_map_through_the_item_vocabulary(caplog: pytest.LogCaptureFixture) -> None:
    raw = {"10": ["b", "a"], "1": ["a"], "99": ["zzz"], "3": []}
    with caplog.at_level(logging.WARNING):
        features = encode_item_features(raw, VOCAB, "attrs.json")
    # Attributes of unknown items (zzz) are left out; natural order gives a=1, b=2.
    assert features.attribute_ids == ("a", "b")
    assert features.num_attributes == 2
    assert features.max_attributes == 2
    np.testing.assert_array_equal(
        features.table,
        [[0, 0], [1, 0], [0, 0], [0, 0], [2, 1]],  # padding, item "1", "2", "3", "10"
    )
    assert features.attributes_of(4) == ["b", "a"]
    assert features.unknown_items == 1
    assert features.items_with_attributes == 2
    assert "ignored 1 item id(s)" in caplog.text
    assert "'99'" in caplog.text


def test_numeric_attribute_ids_are_ordered_as_numbers(write: Writer) -> None:
    path = write("attrs.json", json.dumps({"1": [10, 2], "2": [9]}))
    features = load_item_features(path, VOCAB)
    assert features.attribute_ids == ("2", "9", "10")
    np.testing.assert_array_equal(features.table[1], [3, 1])


def test_same_file_and_data_give_the_same_fingerprint(write: Writer) -> None:
    one = load_item_features(write("a.json", json.dumps({"1": [1], "2": [2]})), VOCAB)
    two = load_item_features(write("b.csv", "2,2\n1,1\n"), VOCAB)
    other = load_item_features(write("c.csv", "2,1\n1,2\n"), VOCAB)
    assert one.fingerprint() == two.fingerprint()
    assert one.fingerprint() != other.fingerprint()


def test_dataset_reads_the_features_named_in_the_config(write: Writer) -> None:
    interactions = Interactions(
        users=np.asarray(["u1"] * 3 + ["u2"] * 3),
        items=np.asarray(["1", "2", "3", "2", "3", "4"]),
        timestamps=np.asarray([0, 1, 2, 0, 1, 2], dtype=np.int64),
        ratings=None,
        source="events",
    )
    path = write("attrs.csv", "1,x\n4,y\n4,x\n")
    plain = dataset_from_interactions(interactions, DataConfig())
    featured = dataset_from_interactions(interactions, DataConfig(item_features=path))
    assert plain.item_features is None
    assert featured.item_features is not None
    assert featured.item_features.attributes_of(featured.vocab.item_index("4") or 0) == ["y", "x"]
    assert featured.fingerprint == plain.fingerprint  # the interactions alone


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.json", '{"1": [1, 2', "a.json:1:12: not valid JSON"),
        ("a.json", "[[1, 2]]", "expected one JSON object mapping item ids to attribute lists"),
        ("a.json", '{"1": 3}', "item '1' maps to 3; every item must map to a list"),
        ("a.json", '{"1": {"a": 1}}', "item '1' maps to an object"),
        ("a.json", '{"1": [1.5]}', "item '1' has the attribute 1.5; attribute ids must be"),
        ("a.json", '{"1": [true]}', "item '1' has the attribute true"),
        ("a.json", b'{"1": ["\xff"]}', "a.json:1: byte 0xFF is not valid UTF-8"),
        ("u.item", "1|Film|x|y\n", "u.item:1: expected 24 '|'-separated fields"),
        ("u.item", u_item_line("1", set()).replace("|0|0|0", "|0|2|0", 1), "genre flags (0 or 1)"),
        ("a.csv", "1,red\n2,blue,extra\n", "a.csv:2: expected 2 fields, item_id and attribute"),
        ("a.csv", "1,red\n2,\n", "a.csv:2: expected 2 fields"),
        ("a.csv", " \n\n", "the item-features file is empty"),
        ("attrs.bin", "just some words here\n", "cannot tell the item-features format"),
    ],
)
def test_malformed_files_say_what_to_fix(
    write: Writer, name: str, content: str | bytes, message: str
) -> None:
    with pytest.raises(DataFormatError) as caught:
        read_item_attributes(write(name, content))
    assert message in str(caught.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="file not found"):
        read_item_attributes(tmp_path / "nowhere.json")


def test_a_file_of_another_catalogue_is_refused_not_silently_empty(write: Writer) -> None:
    path = write("attrs.json", json.dumps({"B00X": [1], "B00Y": [2]}))
    with pytest.raises(DataError, match="same item ids as the data") as caught:
        load_item_features(path, VOCAB)
    assert "'B00X'" in str(caught.value)  # what the file holds, beside what the data holds
    assert "'10'" in str(caught.value)


def test_an_unknown_format_name_lists_the_choices(write: Writer) -> None:
    with pytest.raises(DataFormatError, match="item2attributes, movielens-genres, csv"):
        read_item_attributes(write("a.json", "{}"), format="yaml")
