"""The data layer: read interaction logs, filter them, encode ids and split per user.

Typical use::

    dataset = load_dataset("data/ml-1m", config.data)   # read -> filter -> encode -> split
    dataset.split.train, dataset.split.valid, dataset.split.test

Readers cover MovieLens (100K, 1M, latest), S3-Rec sequence files, SASRec pair files, generic
CSV/TSV and Parquet; :mod:`moerec.data.features` reads item attributes (``data.item_features``);
:mod:`moerec.data.synthetic` generates a structured log for demos and tests.
"""

from __future__ import annotations

from moerec.data.dataset import Dataset, dataset_from_interactions, load_dataset
from moerec.data.errors import DataError, DataFormatError, UnknownIdError
from moerec.data.events import InteractionsBuilder
from moerec.data.features import ItemFeatures, load_item_features, read_item_attributes
from moerec.data.interactions import Interactions
from moerec.data.preprocess import filter_min_rating, k_core
from moerec.data.readers import FORMATS, detect_format, read_interactions
from moerec.data.sequences import Sequences, build_sequences
from moerec.data.split import EvalSet, LeaveOneOutSplit, leave_one_out
from moerec.data.synthetic import generate_interactions, synthetic_titles, write_csv
from moerec.data.titles import read_item_titles
from moerec.data.vocab import Vocabulary

__all__ = [
    "FORMATS",
    "DataError",
    "DataFormatError",
    "Dataset",
    "EvalSet",
    "Interactions",
    "InteractionsBuilder",
    "ItemFeatures",
    "LeaveOneOutSplit",
    "Sequences",
    "UnknownIdError",
    "Vocabulary",
    "build_sequences",
    "dataset_from_interactions",
    "detect_format",
    "filter_min_rating",
    "generate_interactions",
    "k_core",
    "leave_one_out",
    "load_dataset",
    "load_item_features",
    "read_interactions",
    "read_item_attributes",
    "read_item_titles",
    "synthetic_titles",
    "write_csv",
]
