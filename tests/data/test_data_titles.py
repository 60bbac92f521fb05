"""Item titles from MovieLens metadata beside a ratings file."""

from __future__ import annotations

import gzip
from pathlib import Path

from moerec.data import read_item_titles


def test_u_item_latin1(write) -> None:
    write(
        "ml/u.item",
        "1|Toy Story (1995)|01-Jan-1995||http://x|0\n2|Misérables (1995)|x\n".encode("latin-1"),
    )
    data = write("ml/u.data", "1\t1\t5\t1\n")
    assert read_item_titles(data) == {"1": "Toy Story (1995)", "2": "Misérables (1995)"}
    assert read_item_titles(data.parent) == read_item_titles(data)


def test_movies_dat_and_utf8_mirror(write) -> None:
    write("a/movies.dat", "1::Café (1999)::Drama\n\nbroken line\n".encode("latin-1"))
    write("b/movies.dat", "1::Café (1999)::Drama\n".encode())
    assert read_item_titles(write("a/ratings.dat", "1::1::5::1\n")) == {"1": "Café (1999)"}
    assert read_item_titles(write("b/ratings.dat", "1::1::5::1\n")) == {"1": "Café (1999)"}


def test_movies_csv_with_quoted_commas(write) -> None:
    write("ml/movies.csv", 'movieId,title,genres\n1,"American President, The (1995)",Comedy\n')
    assert read_item_titles(write("ml/ratings.csv", "x")) == {"1": "American President, The (1995)"}


def test_gzipped_metadata(write) -> None:
    write("ml/movies.dat.gz", gzip.compress(b"7::Seven (1995)::Thriller\n"))
    assert read_item_titles(write("ml/ratings.dat", "x")) == {"7": "Seven (1995)"}


def test_prefers_the_metadata_matching_the_ratings_file(write) -> None:
    write("ml/u.item", "1|From u.item|x\n")
    write("ml/movies.dat", "1::From movies.dat::x\n")
    assert read_item_titles(write("ml/ratings.dat", "x"))["1"] == "From movies.dat"
    assert read_item_titles(write("ml/u.data", "x"))["1"] == "From u.item"


def test_no_metadata_gives_empty_dict(tmp_path: Path, write) -> None:
    assert read_item_titles(write("Beauty.txt", "1 2 3\n")) == {}
    assert read_item_titles(tmp_path / "missing" / "ratings.dat") == {}
    assert read_item_titles(write("bad/movies.dat", b"\x00\xff garbage")) == {}
