"""Batch export: the top-k of many users, scored in batches, written as it goes.

Histories arrive as an iterable and leave as rows, one batch at a time, so neither the
recommendations nor the output file is ever held in memory whole. The output is written to a
hidden temporary file beside the target and renamed when complete: a reader never sees a
half-written export, and a failed run leaves the previous file in place.

Formats, chosen by the file name:

* ``.csv``: ``user,rank,item,score``, one row per recommended item;
* ``.parquet``: the same columns (string, int32, string, float32), one row group per batch;
* ``.jsonl``: one ``{"user", "items", "scores"}`` object per user.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Protocol

import numpy as np
from tqdm import tqdm

from moerec import MoerecError
from moerec.inference.predictor import Predictor, Query, Recommendation

EXPORT_FORMATS = (".csv", ".parquet", ".jsonl")
BATCH_USERS = 512  # histories per forward pass

Scored = list[tuple[str, Recommendation]]


@dataclass(frozen=True)
class ExportReport:
    users: int  # users with recommendations written
    skipped: int  # users with no item the model knows (nothing to condition on)
    rows: int  # rows written (items for csv/parquet, users for jsonl)


class _Writer(Protocol):
    def write(self, batch: Scored) -> int: ...

    def close(self) -> None: ...


class _CsvWriter:
    def __init__(self, path: Path) -> None:
        self._file: IO[str] = path.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        self._csv.writerow(["user", "rank", "item", "score"])

    def write(self, batch: Scored) -> int:
        rows = [
            (user, rank, item, f"{score:.6f}")
            for user, rec in batch
            for rank, (item, score) in enumerate(zip(rec.items, rec.scores, strict=True), 1)
        ]
        self._csv.writerows(rows)
        return len(rows)

    def close(self) -> None:
        self._file.close()


class _JsonlWriter:
    def __init__(self, path: Path) -> None:
        self._file: IO[str] = path.open("w", encoding="utf-8")

    def write(self, batch: Scored) -> int:
        for user, rec in batch:
            line = {"user": user, "items": rec.items, "scores": [round(s, 6) for s in rec.scores]}
            self._file.write(json.dumps(line, ensure_ascii=False) + "\n")
        return len(batch)

    def close(self) -> None:
        self._file.close()


class _ParquetWriter:
    def __init__(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        self._schema = pa.schema(
            [("user", pa.string()), ("rank", pa.int32()), ("item", pa.string()),
             ("score", pa.float32())]
        )  # fmt: skip
        self._writer = pq.ParquetWriter(str(path), self._schema)

    def write(self, batch: Scored) -> int:
        if not batch:
            return 0
        columns = {
            "user": [user for user, rec in batch for _ in rec.items],
            "rank": [rank for _, rec in batch for rank in range(1, len(rec.items) + 1)],
            "item": [item for _, rec in batch for item in rec.items],
            "score": [score for _, rec in batch for score in rec.scores],
        }
        table = self._pa.Table.from_pydict(columns, schema=self._schema)
        self._writer.write_table(table)
        return table.num_rows

    def close(self) -> None:
        self._writer.close()


def export_format(path: Path) -> str:
    """The output format of ``path`` by its suffix; a clear error for any other."""
    suffix = path.suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise MoerecError(
            f"{path}: cannot tell the output format; name the file "
            f"{', '.join('…' + s for s in EXPORT_FORMATS)}"
        )
    return suffix


def _open(fmt: str, path: Path) -> _Writer:
    if fmt == ".csv":
        return _CsvWriter(path)
    if fmt == ".jsonl":
        return _JsonlWriter(path)
    return _ParquetWriter(path)


# (raw user id, encoded history, each history item's Unix time or None, the request's time or
# None): the times only matter to a model with time context.
HistoryRow = tuple[str, np.ndarray, np.ndarray | None, float | None]


def _batches(pairs: Iterable[HistoryRow], size: int) -> Iterator[list[HistoryRow]]:
    iterator = iter(pairs)
    while batch := list(islice(iterator, size)):
        yield batch


def export_recommendations(
    predictor: Predictor,
    histories: Iterable[HistoryRow],
    output: Path,
    k: int = 10,
    batch_size: int = BATCH_USERS,
    total: int | None = None,
    progress: bool = True,
    exclusions: Mapping[str, np.ndarray] | None = None,
) -> ExportReport:
    """Write the top-``k`` of every ``(raw user id, encoded history, times, request time)`` to
    ``output``.

    Histories are in the predictor's item encoding, oldest first; an empty one (no item the
    model knows) is skipped and counted. The times (see ``Query``) may be None. ``total`` (the
    number of users, if known) sizes the progress bar. ``exclusions`` maps a user to encoded
    items never to recommend them (their dismissals), as the service leaves them out.
    """
    banned = exclusions or {}
    fmt = export_format(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    writer = _open(fmt, partial)
    users = skipped = rows = 0
    try:
        with tqdm(
            total=total, unit="user", desc="recommend", disable=not progress, leave=False
        ) as bar:
            for batch in _batches(histories, batch_size):
                usable = [row for row in batch if len(row[1])]
                recs = predictor.run(
                    [
                        Query(history, k=k, exclude=banned.get(user), times=times, now=now)
                        for user, history, times, now in usable
                    ]
                )
                rows += writer.write([(row[0], rec) for row, rec in zip(usable, recs, strict=True)])
                users += len(usable)
                skipped += len(batch) - len(usable)
                bar.update(len(batch))
        writer.close()
        os.replace(partial, output)
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()
        partial.unlink(missing_ok=True)
        raise
    return ExportReport(users=users, skipped=skipped, rows=rows)
