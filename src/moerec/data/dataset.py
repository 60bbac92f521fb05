"""From a file (or interactions) to everything training and evaluation need, in one call."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moerec.config import DataConfig
from moerec.data.errors import DataError
from moerec.data.features import ItemFeatures, load_item_features
from moerec.data.interactions import Interactions
from moerec.data.preprocess import filter_min_rating, k_core
from moerec.data.readers import read_interactions
from moerec.data.sequences import Sequences, build_sequences
from moerec.data.split import LeaveOneOutSplit, leave_one_out
from moerec.data.vocab import Vocabulary

logger = logging.getLogger(__name__)

_FINGERPRINT_VERSION = b"moerec-dataset-v1"


def fingerprint(vocab: Vocabulary, sequences: Sequences) -> str:
    """SHA-256 of the vocabulary and the encoded sequences.

    It identifies the data a model was trained on independently of file names, paths and
    timestamps: the same preprocessed data always gives the same hex string, on any machine
    (fixed little-endian int64 bytes, JSON-encoded id lists).
    """
    digest = hashlib.sha256(_FINGERPRINT_VERSION)
    for ids in (vocab.item_ids, vocab.user_ids):
        digest.update(json.dumps(list(ids), ensure_ascii=False).encode("utf-8"))
    for array in (sequences.offsets, sequences.items):
        digest.update(np.ascontiguousarray(array, dtype="<i8").tobytes())
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class Dataset:
    """A preprocessed data set: vocabulary, full sequences and the leave-one-out split.

    ``item_features`` holds the items' attributes when ``data.item_features`` names a file.
    They are not part of ``fingerprint``, which identifies the interactions alone: a model
    evaluated on the same interactions without the feature file still matches its data.
    """

    vocab: Vocabulary
    sequences: Sequences
    split: LeaveOneOutSplit
    fingerprint: str
    source: str
    item_features: ItemFeatures | None = None

    @property
    def num_items(self) -> int:
        return self.vocab.num_items

    @property
    def num_users(self) -> int:
        return self.vocab.num_users

    @property
    def num_interactions(self) -> int:
        return len(self.sequences.items)

    def stats(self) -> dict[str, float | int]:
        """Size, density and sequence-length summary (what papers report in their tables)."""
        lengths = self.sequences.lengths
        return {
            "users": self.num_users,
            "items": self.num_items,
            "interactions": self.num_interactions,
            "density": self.num_interactions / max(self.num_users * self.num_items, 1),
            "min_length": int(lengths.min()),
            "median_length": float(np.median(lengths)),
            "mean_length": float(lengths.mean()),
            "max_length": int(lengths.max()),
        }


def _filtered(interactions: Interactions, config: DataConfig) -> Interactions:
    kept = filter_min_rating(interactions, config.min_rating)
    kept = k_core(kept, config.min_user_interactions, config.min_item_interactions)
    if len(kept) == 0:
        raise DataError(
            f"{interactions.source}: no interactions left after filtering "
            f"(min_rating={config.min_rating}, min_user_interactions="
            f"{config.min_user_interactions}, min_item_interactions="
            f"{config.min_item_interactions}); lower these thresholds"
        )
    return kept


def dataset_from_interactions(
    interactions: Interactions, config: DataConfig | None = None
) -> Dataset:
    """Filter (rating, k-core) per ``config``, encode, sequence and split ``interactions``;
    read ``config.item_features`` for the items that are left, when it is set."""
    config = config or DataConfig()
    if len(interactions) == 0:
        raise DataError(f"{interactions.source}: there are no interactions")
    kept = _filtered(interactions, config)
    vocab = Vocabulary.build(kept)
    sequences = build_sequences(kept, vocab)
    features = None
    if config.item_features is not None:
        features = load_item_features(config.item_features, vocab)
    dataset = Dataset(
        vocab=vocab,
        sequences=sequences,
        split=leave_one_out(sequences),
        fingerprint=fingerprint(vocab, sequences),
        source=interactions.source,
        item_features=features,
    )
    logger.info("loaded %s: %s", dataset.source, dataset.stats())
    return dataset


def load_dataset(
    path: Path | str, config: DataConfig | None = None, format: str | None = None
) -> Dataset:
    """Read ``path`` (format from ``format``, else ``config.format``) into a :class:`Dataset`."""
    config = config or DataConfig()
    interactions = read_interactions(path, format or config.format, config.chunk_rows)
    return dataset_from_interactions(interactions, config)
